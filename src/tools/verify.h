/*
 * verify — `kumoctl verify` and `kumoctl repair`: the operator's
 * anti-entropy pass over a whole cluster (docs/anti-entropy.md).
 *
 * Thread rule: single-threaded tool. Calls: tool, hashspace, ring, record.
 */
#ifndef KUMO_TOOLS_VERIFY_H
#define KUMO_TOOLS_VERIFY_H

#include <stdbool.h>

/* Exit statuses of verify_run (kumoctl(1)). */
#define VERIFY_EX_AGREE 0     /* every range's live owners agree (repair: after repairing) */
#define VERIFY_EX_DIVERGENT 1 /* divergent keys found (repair: some are still divergent) */
#define VERIFY_EX_FAILED 2    /* the run could not finish: a node unreachable, layouts differ, a replace runs */

/* Compare every vnode range's live owners in the whs of the manager at
 * `manager` (a kumoctl target, control port by default) and print the keys
 * they disagree on; with `repair`, push the newest record of each to the
 * owners that lack it, then compare those ranges again. Progress goes to
 * stderr, the report to stdout. Returns a VERIFY_EX_* status. */
int verify_run(const char *manager, bool repair);

#endif
