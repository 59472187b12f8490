/*
 * admit — bounds on unauthenticated connections (see admit.h).
 *
 * The entries form one list in accept order, the oldest first, so the
 * victim of the global bound is the head. Counting one address's entries is
 * a walk of the list: it holds at most `max` entries (1,024 by default) and
 * the walk runs once per accepted connection, a few microseconds next to
 * the accept itself, so no hash table.
 *
 * Calls: net (formatting an address for the log), log. Thread rule: admit.h.
 */
#include "admit.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "net.h"

#define KEY_MAX 9 /* family byte + 8 address bytes (IPv4: 4, IPv6: the /64) */

struct admit_entry {
    admit_entry *prev, *next;
    double since; /* CLOCK_MONOTONIC seconds at accept */
    uint8_t key[KEY_MAX];
    admit_evict_fn fn;
    void *arg;
};

struct admit {
    const char *name;
    size_t per_addr, max;
    admit_entry *head, *tail;
    admit_stats st;
    uint64_t refused_logged, evicted_logged; /* st's counts at the last log line */
    double logged;                           /* when it was written; < 0: never */
};

/* What "one address" means: an IPv4 address (also when it comes mapped into
 * IPv6), or the first 64 bits of an IPv6 one. */
static void make_key(const struct sockaddr *sa, uint8_t key[KEY_MAX])
{
    memset(key, 0, KEY_MAX);
    if (!sa) return;
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            key[0] = 4;
            memcpy(key + 1, a6->s6_addr + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a6->s6_addr, 8);
        }
    }
}

admit *admit_new(const char *name, size_t per_addr, size_t max)
{
    admit *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    if (max == 0) {
        struct rlimit rl;
        max = ADMIT_MAX;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 4 < max)
            max = rl.rlim_cur / 4 > 0 ? (size_t)(rl.rlim_cur / 4) : 1;
    }
    if (per_addr == 0) per_addr = ADMIT_PER_ADDR;
    if (per_addr > max / 4) per_addr = max / 4 > 0 ? max / 4 : 1; /* one address never fills the total */
    a->name = name;
    a->max = max;
    a->per_addr = per_addr;
    a->logged = -1;
    return a;
}

void admit_free(admit *a)
{
    if (!a) return;
    while (a->head) {
        admit_entry *e = a->head;
        a->head = e->next;
        free(e);
    }
    free(a);
}

static void unlink_entry(admit *a, admit_entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else a->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else a->tail = e->prev;
    a->st.held--;
}

/* A refusal or an eviction happened: one line per interval at most. */
static void note(admit *a, const struct sockaddr *peer, double now)
{
    if (a->logged >= 0 && now - a->logged < ADMIT_LOG_INTERVAL) return;
    char buf[NET_ADDRSTRLEN] = "?";
    net_addr na;
    if (peer && net_from_sockaddr(&na, peer) == 0) net_format(&na, buf, sizeof(buf));
    log_warn("%s: unauthenticated connections: %llu refused, %llu evicted since %s (at most %zu from one address, "
             "%zu in all; the last from %s)",
             a->name, (unsigned long long)(a->st.refused - a->refused_logged),
             (unsigned long long)(a->st.evicted - a->evicted_logged), a->logged < 0 ? "start" : "the last such line",
             a->per_addr, a->max, buf);
    a->refused_logged = a->st.refused;
    a->evicted_logged = a->st.evicted;
    a->logged = now;
}

admit_entry *admit_enter(admit *a, const struct sockaddr *peer, admit_evict_fn fn, void *arg)
{
    double now = clock_mono();
    uint8_t key[KEY_MAX];
    make_key(peer, key);
    size_t same = 0;
    admit_entry *oldest_same = NULL, *victim = NULL;
    for (admit_entry *e = a->head; e; e = e->next) {
        if (memcmp(e->key, key, KEY_MAX) != 0) continue;
        if (!oldest_same) oldest_same = e;
        same++;
    }
    if (same >= a->per_addr) victim = oldest_same;
    else if (a->st.held >= a->max) victim = a->head;
    admit_entry *n = NULL;
    if ((!victim || now - victim->since >= ADMIT_GRACE) && (n = calloc(1, sizeof(*n)))) {
        n->since = now;
        memcpy(n->key, key, KEY_MAX);
        n->fn = fn;
        n->arg = arg;
    }
    if (!n) {
        a->st.refused++;
        note(a, peer, now);
        return NULL;
    }
    admit_evict_fn vfn = NULL;
    void *varg = NULL;
    if (victim) {
        unlink_entry(a, victim);
        vfn = victim->fn;
        varg = victim->arg;
        free(victim);
        a->st.evicted++;
        note(a, peer, now);
    }
    n->prev = a->tail;
    if (a->tail) a->tail->next = n;
    else a->head = n;
    a->tail = n;
    a->st.held++;
    if (vfn) vfn(varg); /* last: it may call back into this admit */
    return n;
}

void admit_leave(admit *a, admit_entry *e, bool authenticated)
{
    if (!e) return;
    unlink_entry(a, e);
    if (!authenticated) a->st.failed++;
    free(e);
}

void admit_evict_all(admit *a)
{
    while (a && a->head) {
        admit_entry *e = a->head;
        unlink_entry(a, e);
        admit_evict_fn fn = e->fn;
        void *arg = e->arg;
        free(e);
        fn(arg);
    }
}

void admit_get_stats(const admit *a, admit_stats *out) { *out = a->st; }
size_t admit_limit_per_addr(const admit *a) { return a->per_addr; }
size_t admit_limit(const admit *a) { return a->max; }
