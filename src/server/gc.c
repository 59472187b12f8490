/*
 * gc — collection of delete tombstones on kumo-server (kumo-server(8) -gS -gN -gX;
 * flags -gS KiB, -gN seconds, -gX seconds).
 *
 * A delete writes an 8-byte tombstone carrying the delete's ClockTime, so
 * that a late replication or replace copy of an older value cannot bring
 * the key back. Tombstones cost disk, so they are removed again:
 *
 *   - every tombstone this server writes (as coordinator, or as a replica
 *     receiving one) is remembered in a FIFO of (ClockTime, key), in memory;
 *   - after each push, and on a timer (GC_TIMER), the head of the FIFO is
 *     examined, oldest first:
 *       the FIFO holds more than -gS KiB: the head is dropped; if it is at
 *         least -gN seconds old its tombstone is removed from the database,
 *         otherwise it is only forgotten and stays in the database;
 *       else the head is at least -gX seconds old: removed and dropped;
 *       else: stop (everything behind it is younger).
 *   - "removed" is: if the stored record is still a tombstone no newer than
 *     ours; a record written after it (a newer set) has a newer ClockTime
 *     and stays.
 *
 * Nothing scans the database: each delete costs one push and at most a few
 * pops. The FIFO is lost on restart (as in kumofs 0.4); tombstones written
 * before a restart, and those forgotten under memory pressure, stay in the
 * database (docs/architecture.md §8).
 *
 * Age is measured against max(wall clock, the server's ClockTime), in whole
 * seconds of the ClockTime, so a tombstone stamped by a server whose clock
 * runs ahead is not collected early here.
 *
 * Owns: the FIFO (server.gc). Calls: store, record, clock, log, binlog.
 * Thread rule: main loop (like every server module).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "binlog.h"
#include "log.h"
#include "record.h"
#include "server.h"
#include "xalloc.h"

#define GC_TIMER 1.0 /* seconds between collections when nothing is deleted */

typedef struct gc_entry {
    struct gc_entry *next;
    uint64_t ct;
    size_t klen;
    uint8_t key[];
} gc_entry;

struct gc {
    gc_entry *head, *tail;
    gc_stats st;
    struct event *timer;
};

/* What an entry costs, as -gS counts it: the key and the bookkeeping. */
static size_t entry_size(size_t klen) { return sizeof(gc_entry) + klen; }

static uint32_t now_seconds(server *s)
{
    uint32_t wall = (uint32_t)time(NULL), hlc = clock_seconds(clock_peek(&s->clock));
    return wall > hlc ? wall : hlc;
}

static void pop(struct gc *g)
{
    gc_entry *e = g->head;
    g->head = e->next;
    if (!g->head) g->tail = NULL;
    g->st.entries--;
    g->st.bytes -= entry_size(e->klen);
    free(e);
}

/* Remove the stored record if it is a tombstone no newer than ours: a write
 * after the delete is newer, and a value stored again with an older
 * ClockTime is the one a refused delete was undone to (data.c undo). */
static store_verdict collect_cb(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    const gc_entry *e = arg;
    (void)out;
    (void)outlen;
    return old && oldlen == RECORD_TOMBSTONE && record_clocktime(old, oldlen) <= e->ct ? STORE_REMOVE : STORE_KEEP;
}

static void remove_head(server *s, struct gc *g)
{
    char err[KUMO_ERRLEN];
    gc_entry *e = g->head;
    int rc = store_modify(s->db, e->key, e->klen, collect_cb, e, err);
    if (rc < 0) {
        log_error("tombstone collection: %s", err);
        g->st.errors++;
    } else if (rc == STORE_REMOVE) {
        g->st.collected++;
    }
    pop(g);
}

static void collect(server *s)
{
    struct gc *g = s->gc;
    const server_config *cfg = s->cfg;
    uint64_t limit = (uint64_t)cfg->gc_mem_kib * 1024u;
    uint32_t now = now_seconds(s);
    while (g->head) {
        uint32_t born = clock_seconds(g->head->ct);
        uint32_t age = now > born ? now - born : 0;
        if (g->st.bytes > limit) {
            if (age >= (uint32_t)cfg->gc_min_sec) {
                remove_head(s, g);
            } else {
                g->st.forgotten++;
                pop(g);
            }
            continue;
        }
        if (age >= (uint32_t)cfg->gc_max_sec) {
            remove_head(s, g);
            continue;
        }
        break;
    }
}

void gc_tombstone(server *s, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct gc *g = s->gc;
    if (!g || !val || vlen != RECORD_TOMBSTONE || klen == 0) return;
    gc_entry *e = xmalloc(entry_size(klen));
    e->next = NULL;
    e->ct = record_clocktime(val, vlen);
    e->klen = klen;
    memcpy(e->key, key, klen);
    if (g->tail) g->tail->next = e;
    else g->head = e;
    g->tail = e;
    g->st.entries++;
    g->st.bytes += entry_size(klen);
    g->st.pushed++;
    collect(s);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    collect(arg);
}

int gc_start(server *s, char *err)
{
    struct gc *g = calloc(1, sizeof(*g));
    if (!g) return kumo_err(err, "out of memory");
    g->timer = event_new(s->base, -1, EV_PERSIST, timer_cb, s);
    if (!g->timer) {
        free(g);
        return kumo_err(err, "out of memory");
    }
    struct timeval tv = {(time_t)GC_TIMER, (suseconds_t)((GC_TIMER - (double)(time_t)GC_TIMER) * 1e6)};
    event_add(g->timer, &tv);
    s->gc = g;
    log_info("tombstone collection: -gS %d KiB, -gN %d s, -gX %d s", s->cfg->gc_mem_kib, s->cfg->gc_min_sec,
             s->cfg->gc_max_sec);
    return 0;
}

void gc_stop(server *s)
{
    struct gc *g = s->gc;
    if (!g) return;
    if (g->st.collected || g->st.forgotten)
        binlog_event(LOG_LVL_INFO, "gc_summary", BL_UINT("collected", g->st.collected),
                     BL_UINT("forgotten", g->st.forgotten), BL_UINT("remembered", g->st.entries));
    event_free(g->timer);
    while (g->head) pop(g);
    free(g);
    s->gc = NULL;
}

void gc_get_stats(const server *s, gc_stats *out)
{
    if (s->gc) *out = s->gc->st;
    else memset(out, 0, sizeof(*out));
}
