/*
 * xalloc — allocation that does not fail (see xalloc.h).
 */
#include "xalloc.h"

#include <stdlib.h>

#include "log.h"

void *xcheck(void *p)
{
    if (p) return p;
    log_fatal("out of memory");
    abort();
}

void *xmalloc(size_t n) { return xcheck(malloc(n ? n : 1)); }
void *xcalloc(size_t n, size_t size) { return xcheck(calloc(n ? n : 1, size ? size : 1)); }
void *xrealloc(void *p, size_t n) { return xcheck(realloc(p, n ? n : 1)); }
