/*
 * xalloc — allocation that does not fail.
 *
 * Out of memory, a daemon cannot keep its promises: a request would go
 * unanswered, a replica unsent, a reference count wrong. Rather than carry
 * a branch for each allocation that no test reaches, the request paths
 * allocate through these, which log "out of memory" (fatal) and abort, as
 * Redis's zmalloc does; the supervisor (systemd, the container engine)
 * restarts the process, and the cluster treats it as any crashed server.
 * Start-up code may still report a failed allocation as an error.
 *
 * Thread rule: any thread. Calls: log.
 */
#ifndef KUMO_XALLOC_H
#define KUMO_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* p, or the same fatal end when it is NULL: for the result of a
 * constructor that allocates (hashspace_new, ...). */
void *xcheck(void *p);

#endif
