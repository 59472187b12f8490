/*
 * digest — anti-entropy on kumo-server (see digest.h; wire formats in
 * docs/protocol.md §5.5, the procedure in docs/anti-entropy.md).
 *
 * A job is one walk over the database:
 *   - a digest job adds each record to the [count, digest, vdigest] of the
 *     vnode range of this server's whs its key hash falls in: range i holds
 *     the hashes in (vnode[i-1], vnode[i]], range 0 also those past the
 *     last vnode (ring.c's lower bound, wrapping). The result names the whs
 *     ClockTime it used, so a caller can tell that every server used the
 *     layout it compares with.
 *   - a range-keys job lists (dbkey, ClockTime, tombstone, and asked for,
 *     the value's hash) of the records whose hash is in the intervals asked
 *     for. A caller asks by intervals,
 *     not vnode numbers, so the answer does not depend on this server's
 *     whs, and an interval too large for one answer can be halved.
 *
 * Both run through data_walk, so one at a time with the other walks
 * (replace, backup, flush sweep); a job waits its turn. A record rewritten
 * during the walk may be visited twice, and writes made meanwhile may or may
 * not be seen: a digest taken under load can differ from a co-owner's
 * without any damage, which is why a caller looks at the keys of a
 * divergent range before it calls it divergent.
 *
 * Memory: at most DIGEST_MAX_JOBS jobs; a digest result is 24 bytes per
 * vnode, a range-keys result at most SRV_RANGE_KEYS_MAX_BYTES. A finished
 * job waits DIGEST_KEEP_SECONDS for its caller; a range-keys result is freed
 * as soon as it has been sent, a digest result (which several callers may
 * share) when it expires.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "digest.h"
#include "xalloc.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "record.h"

#define DIGEST_MAX_JOBS 4
#define DIGEST_KEEP_SECONDS 60

enum job_kind { JOB_DIGEST,
                JOB_KEYS };
enum job_state { JOB_WALKING,
                 JOB_DONE,
                 JOB_FAILED };

/* A closed interval [a, b] of key hashes. */
typedef struct span {
    uint64_t a, b;
} span;

typedef struct job {
    struct job *next;
    server *s;
    uint64_t id;
    enum job_kind kind;
    enum job_state state;
    uint64_t walked, total;
    time_t done_at;
    uint64_t start_ct; /* this server's ClockTime when the job was made */
    /* JOB_DIGEST */
    hashspace *whs;
    uint64_t *count, *sum, *vsum; /* per vnode of whs; vsum with the values' hashes */
    /* JOB_KEYS */
    span *spans;
    size_t nspans;
    bool values;         /* each entry also carries the value's hash */
    msgpack_sbuffer out; /* the packed [dbkey, clocktime, tombstone(, vhash)] entries */
    msgpack_packer pk;
    uint64_t matched, listed;
    bool overflow; /* more than one answer may carry: out is dropped */
} job;

typedef struct pass pass;

struct digest {
    job *jobs;
    uint64_t next_id;
    pass *pass; /* the background pass (below) */
    /* its counters, since start (--metrics) */
    uint64_t pass_runs, pass_failures, pass_compared, pass_divergent, pass_pushed, pass_pulled;
    uint64_t pass_mended, pass_unmended;
    time_t last_pass;
};

/* ---- the digest of a record ---- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

uint64_t digest_record(const void *dbkey, size_t klen, uint64_t clocktime)
{
    const uint8_t *p = dbkey;
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, then a finalizer over both */
    for (size_t i = 0; i < klen; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ mix64(clocktime + 0x9e3779b97f4a7c15ULL));
}

uint64_t digest_value(const void *val, size_t vlen)
{
    const uint8_t *p = val;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = RECORD_TOMBSTONE; i < vlen; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ vlen);
}

uint64_t digest_record_value(uint64_t record, uint64_t vhash)
{
    return mix64(record + vhash);
}

/* The range of `hash` in r: the first vnode with hash >= it, wrapping. */
static size_t vnode_of(const ring *r, uint64_t hash)
{
    size_t lo = 0, hi = r->nvnodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->vnodes[mid].hash < hash) lo = mid + 1;
        else hi = mid;
    }
    return lo == r->nvnodes ? 0 : lo;
}

/* ---- jobs ---- */

static void job_free(job *j)
{
    if (!j) return;
    hashspace_unref(j->whs);
    free(j->count);
    free(j->sum);
    free(j->vsum);
    free(j->spans);
    msgpack_sbuffer_destroy(&j->out);
    free(j);
}

static void job_unlink(server *s, job *j)
{
    for (job **p = &s->digest->jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            return;
        }
}

static job *job_find(server *s, uint64_t id, enum job_kind kind)
{
    for (job *j = s->digest->jobs; j; j = j->next)
        if (j->id == id && j->kind == kind) return j;
    return NULL;
}

/* Room for one more job: expired results go, then the oldest finished one
 * if the table is still full. false when every slot is walking. */
static bool make_room(server *s)
{
    time_t now = time(NULL);
    size_t n = 0;
    job *oldest = NULL;
    for (job *j = s->digest->jobs, *next; j; j = next) {
        next = j->next;
        if (j->state != JOB_WALKING && now - j->done_at >= DIGEST_KEEP_SECONDS) {
            job_unlink(s, j);
            job_free(j);
            continue;
        }
        n++;
        if (j->state != JOB_WALKING && (!oldest || j->done_at <= oldest->done_at)) oldest = j;
    }
    if (n < DIGEST_MAX_JOBS) return true;
    if (!oldest) return false;
    job_unlink(s, oldest);
    job_free(oldest);
    return true;
}

static job *job_new(server *s, enum job_kind kind)
{
    job *j = xcalloc(1, sizeof(*j));
    j->s = s;
    j->id = s->digest->next_id++;
    j->kind = kind;
    j->state = JOB_WALKING;
    j->total = store_count(s->db);
    j->start_ct = clock_peek(&s->clock);
    msgpack_sbuffer_init(&j->out);
    msgpack_packer_init(&j->pk, &j->out, msgpack_sbuffer_write);
    return j;
}

static void walked(server *s, void *arg, bool ok)
{
    job *j = arg;
    j->state = ok ? JOB_DONE : JOB_FAILED;
    j->done_at = time(NULL);
    free(j->spans);
    j->spans = NULL;
    if (!ok || j->overflow) {
        msgpack_sbuffer_destroy(&j->out);
        msgpack_sbuffer_init(&j->out);
    }
    log_debug("anti-entropy walk %llu (%s) %s: %llu records", (unsigned long long)j->id,
              j->kind == JOB_DIGEST ? "digest" : "range keys", ok ? "done" : "failed",
              (unsigned long long)j->walked);
}

static int digest_visit(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    job *j = arg;
    j->walked++;
    if (klen <= RECORD_KEY_HEADER || vlen < RECORD_TOMBSTONE) return 0;
    size_t i = vnode_of(&j->whs->ring, record_key_hash(key, klen));
    uint64_t d = digest_record(key, klen, record_clocktime(val, vlen));
    j->count[i]++;
    j->sum[i] += d;
    j->vsum[i] += digest_record_value(d, digest_value(val, vlen));
    return 0;
}

static bool in_spans(const job *j, uint64_t h)
{
    size_t lo = 0, hi = j->nspans; /* the last span with a <= h */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (j->spans[mid].a <= h) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && h <= j->spans[lo - 1].b;
}

static int keys_visit(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    job *j = arg;
    j->walked++;
    if (klen <= RECORD_KEY_HEADER || vlen < RECORD_TOMBSTONE || !in_spans(j, record_key_hash(key, klen))) return 0;
    j->matched++;
    if (j->overflow) return 0;
    if (j->listed >= SRV_RANGE_KEYS_MAX_RECORDS || j->out.size + klen + 25 > SRV_RANGE_KEYS_MAX_BYTES) {
        j->overflow = true;
        return 0;
    }
    msgpack_pack_array(&j->pk, j->values ? 4 : 3);
    rpc_pack_bytes(&j->pk, key, klen);
    msgpack_pack_uint64(&j->pk, record_clocktime(val, vlen));
    if (vlen == RECORD_TOMBSTONE) msgpack_pack_true(&j->pk);
    else msgpack_pack_false(&j->pk);
    if (j->values) msgpack_pack_uint64(&j->pk, digest_value(val, vlen));
    j->listed++;
    return 0;
}

/* ---- requests ---- */

/* [job, walked, total, result | nil]. A range-keys result is sent once and
 * its job freed. A digest result's entries carry the digest with the values
 * (vsum) when the caller asked for it: an older caller reads three. */
static void reply_job(server *s, rpc_conn *c, uint32_t msgid, job *j, bool values)
{
    if (j->state == JOB_FAILED) {
        rpc_reply_error(c, msgid, "the database walk failed");
        return;
    }
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint64(pk, j->id);
    msgpack_pack_uint64(pk, j->walked);
    msgpack_pack_uint64(pk, j->total > j->walked ? j->total : j->walked);
    if (j->state == JOB_WALKING) {
        msgpack_pack_nil(pk);
    } else if (j->kind == JOB_DIGEST) {
        const ring *r = &j->whs->ring;
        uint32_t nonzero = 0;
        for (size_t i = 0; i < r->nvnodes; i++) nonzero += j->count[i] != 0;
        msgpack_pack_array(pk, 4);
        msgpack_pack_uint64(pk, j->whs->clocktime);
        msgpack_pack_uint64(pk, j->start_ct);
        msgpack_pack_uint64(pk, r->nvnodes);
        msgpack_pack_array(pk, nonzero);
        for (size_t i = 0; i < r->nvnodes; i++) {
            if (!j->count[i]) continue;
            msgpack_pack_array(pk, values ? 4 : 3);
            msgpack_pack_uint64(pk, i);
            msgpack_pack_uint64(pk, j->count[i]);
            msgpack_pack_uint64(pk, j->sum[i]);
            if (values) msgpack_pack_uint64(pk, j->vsum[i]);
        }
    } else {
        msgpack_pack_array(pk, 3);
        if (j->overflow) msgpack_pack_false(pk);
        else msgpack_pack_true(pk);
        msgpack_pack_uint64(pk, j->matched);
        msgpack_pack_array(pk, j->overflow ? 0 : (uint32_t)j->listed);
        if (!j->overflow && j->out.size) pk->callback(pk->data, j->out.data, j->out.size);
    }
    rpc_call_end(c);
    if (j->kind == JOB_KEYS && j->state == JOB_DONE) {
        job_unlink(s, j);
        job_free(j);
    }
}

/* Start j's walk and answer with its id. */
static void job_run(server *s, rpc_conn *c, uint32_t msgid, job *j, store_iter_fn fn)
{
    j->next = s->digest->jobs;
    s->digest->jobs = j;
    reply_job(s, c, msgid, j, false); /* before the walk's first step, which may finish it */
    data_walk(s, fn, walked, j);
}

/* A digest walk of this server's whs under way, which a new caller shares. */
static job *walking_digest(server *s)
{
    for (job *j = s->digest->jobs; j; j = j->next)
        if (j->kind == JOB_DIGEST && j->state == JOB_WALKING && j->whs == s->whs) return j;
    return NULL;
}

static void start_digest(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    size_t nv = s->whs->ring.nvnodes;
    if (nv == 0) {
        rpc_reply_error(c, msgid, "no hash space yet");
        return;
    }
    job *j = job_new(s, JOB_DIGEST);
    j->whs = hashspace_ref(s->whs);
    j->count = xcalloc(nv, sizeof(*j->count));
    j->sum = xcalloc(nv, sizeof(*j->sum));
    j->vsum = xcalloc(nv, sizeof(*j->vsum));
    job_run(s, c, msgid, j, digest_visit);
}

static int span_cmp(const void *pa, const void *pb)
{
    const span *a = pa, *b = pb;
    return a->a < b->a ? -1 : a->a > b->a;
}

/* Add the hashes in (lo, hi] to j's spans, or, when lo >= hi, those above lo
 * and those up to hi (the range that wraps past the last vnode). j->spans
 * has room for two spans per pair. */
static void add_span(job *j, uint64_t lo, uint64_t hi)
{
    if (lo < hi) {
        j->spans[j->nspans++] = (span){lo + 1, hi};
        return;
    }
    if (lo < UINT64_MAX) j->spans[j->nspans++] = (span){lo + 1, UINT64_MAX};
    j->spans[j->nspans++] = (span){0, hi};
}

/* Sort and merge j's spans, for in_spans. */
static void finish_spans(job *j)
{
    if (j->nspans) qsort(j->spans, j->nspans, sizeof(*j->spans), span_cmp);
    size_t m = 0;
    for (size_t i = 0; i < j->nspans; i++) {
        if (m > 0 && (j->spans[m - 1].b == UINT64_MAX || j->spans[i].a <= j->spans[m - 1].b + 1)) {
            if (j->spans[i].b > j->spans[m - 1].b) j->spans[m - 1].b = j->spans[i].b;
        } else {
            j->spans[m++] = j->spans[i];
        }
    }
    j->nspans = m;
}

/* [[lo, hi]...] as add_span takes them. */
static bool parse_spans(const msgpack_object *o, job *j)
{
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > SRV_RANGE_KEYS_MAX_SPANS) return false;
    uint32_t n = o->via.array.size;
    j->spans = malloc((2 * (size_t)n + 1) * sizeof(*j->spans));
    if (!j->spans) return false;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        if (!rpc_arg_uint(&o->via.array.ptr[i], 0, &lo) || !rpc_arg_uint(&o->via.array.ptr[i], 1, &hi)) return false;
        add_span(j, lo, hi);
    }
    finish_spans(j);
    return true;
}

/* The optional flag at params[at]: 1 (or true) asks for the values' hashes
 * too. Absent in an older caller's request. */
static bool asks_values(const msgpack_object *params, uint32_t at)
{
    uint64_t v;
    bool b;
    return (rpc_arg_uint(params, at, &v) && v == 1) || (rpc_arg_bool(params, at, &b) && b);
}

static void start_keys(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    job *j = job_new(s, JOB_KEYS);
    if (!parse_spans(rpc_arg(params, 1), j)) {
        job_free(j);
        rpc_reply_error(c, msgid, "bad params: an array of at most %d [lo, hi] pairs", SRV_RANGE_KEYS_MAX_SPANS);
        return;
    }
    j->values = asks_values(params, 2);
    job_run(s, c, msgid, j, keys_visit);
}

/* SRV_DIGEST and SRV_RANGE_KEYS: [0, ...] starts a walk, [job] polls one. */
static void handle_walk(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params, enum job_kind kind)
{
    uint64_t id;
    job *j;
    if (!rpc_arg_uint(params, 0, &id)) {
        rpc_reply_error(c, msgid, "bad params");
    } else if (id != 0) {
        if (!(j = job_find(s, id, kind)))
            rpc_reply_error(c, msgid, "no such walk %llu (expired, or the server restarted)", (unsigned long long)id);
        else reply_job(s, c, msgid, j, asks_values(params, 1));
    } else if (kind == JOB_DIGEST && (j = walking_digest(s))) {
        reply_job(s, c, msgid, j, false);
    } else if (!make_room(s)) {
        rpc_reply_error(c, msgid, "busy: %d anti-entropy walks under way", DIGEST_MAX_JOBS);
    } else if (kind == JOB_DIGEST) {
        start_digest(s, c, msgid, params);
    } else {
        start_keys(s, c, msgid, params);
    }
}

/* Read every record first, so that a bad key is refused before any
 * answer is begun. */
static void handle_fetch(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const msgpack_object *keys = rpc_arg(params, 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    if (!keys || keys->type != MSGPACK_OBJECT_ARRAY || keys->via.array.size > SRV_FETCH_MAX) {
        rpc_reply_error(c, msgid, "bad params: an array of at most %d keys", SRV_FETCH_MAX);
        return;
    }
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint32_t n = keys->via.array.size, i;
    for (i = 0; i < n; i++) {
        const char *key;
        size_t klen, vlen;
        if (!rpc_arg_bytes(keys, i, &key, &klen) || klen <= RECORD_KEY_HEADER) break;
        void *v = store_get(s->db, key, klen, &vlen);
        if (v && vlen >= RECORD_TOMBSTONE) rpc_pack_bytes(&pk, v, vlen);
        else msgpack_pack_nil(&pk);
        free(v);
    }
    if (i < n) {
        rpc_reply_error(c, msgid, "bad key %u", i);
    } else {
        msgpack_packer *out = rpc_reply_begin(c, msgid);
        msgpack_pack_array(out, n);
        if (sb.size) out->callback(out->data, sb.data, sb.size);
        rpc_call_end(c);
    }
    msgpack_sbuffer_destroy(&sb);
}

bool digest_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_DIGEST: handle_walk(s, c, msgid, params, JOB_DIGEST); return true;
    case SRV_RANGE_KEYS: handle_walk(s, c, msgid, params, JOB_KEYS); return true;
    case SRV_FETCH: handle_fetch(s, c, msgid, params); return true;
    default: return false;
    }
}

/* ---- the background pass ----
 *
 * With --verify-interval N (seconds; 0, the default, = never) every N
 * seconds, and at once when digest_pass_now() is called (after a rejoin),
 * this server compares the ranges it *leads* (those it coordinates in whs:
 * hashspace_is_primary) with each of their other live owners, one owner at
 * a time:
 *   1. its own digests (a walk of its database), once per pass;
 *   2. the peer's digests (SRV_DIGEST, polled), which must be of the same
 *      whs, else the peer is left for the next pass;
 *   3. the led ranges the peer co-owns whose digests differ, at most
 *      PASS_BATCH records of them per peer and pass (the rest wait for the
 *      next pass): the peer's listing (SRV_RANGE_KEYS) and its own (a walk);
 *   4. every key the peer lacks or holds older goes to it (SRV_REPLICATE,
 *      PASS_WINDOW at a time); every key this server lacks or holds older
 *      is fetched (SRV_FETCH, SRV_FETCH_MAX at a time) and applied newer-wins
 *      (store_update). Keys written after the pass began are left to their
 *      own replication.
 * No pass runs while whs and rhs differ (a replace moves data), or when
 * this server is not an active member or leads nothing. Every record moves
 * with newer-wins, so a pass racing client writes, a replace or a kumoctl
 * repair undoes nothing.
 */

#define PASS_POLL_USEC 200000 /* between polls of a peer's walk */
#define PASS_TIMEOUT 10.0     /* each call to a peer */
#define PASS_BATCH 200000     /* records of divergent ranges listed per peer and pass */
#define PASS_WINDOW 8         /* SRV_REPLICATE calls in flight */

enum pass_phase { PH_IDLE,
                  PH_OWN_DIGEST,
                  PH_PEER_DIGEST,
                  PH_LISTING,
                  PH_SYNC };

typedef struct pent { /* a record listed by this server or a peer */
    uint8_t *key;
    size_t klen;
    uint64_t ct;
    uint64_t vh; /* digest_value of it, when has_vh (an older peer lists none) */
    bool has_vh;
} pent;

typedef struct pent_list {
    pent *v;
    size_t n, cap;
} pent_list;

struct pass {
    server *s;
    enum pass_phase phase;
    bool again;          /* digest_pass_now() during a pass: another one after it */
    struct event *timer; /* the next pass */
    struct event *poll;  /* the next poll of the peer's walk */
    hashspace *whs;      /* the layout of this pass */
    uint64_t start_ct;
    job *mine, *keys; /* own digest, own listing (not in the job table) */
    net_addr *peers;  /* the co-owners of the led ranges */
    size_t npeers, at;
    uint32_t method; /* the walk polled on the peer */
    uint64_t peer_job;
    bool peer_listed, skip;
    pent_list ours, theirs;
    size_t *push, npush, next_push, inflight;
    size_t *pull, npull, next_pull;
    /* mending: keys of one ClockTime whose bytes differ here and there
     * (indexes into ours), and the one in hand: the copies fetched from its
     * other live owners, and the owners its majority's bytes go to */
    size_t *disp, ndisp, next_disp;
    uint32_t step;
    net_addr others[KUMO_REPLICAS];
    uint8_t *copy[KUMO_REPLICAS];
    size_t copylen[KUMO_REPLICAS], nothers, nsend, win;
    /* this pass, for its log line */
    size_t compared, divergent, pushed, pulled, mended, unmended;
};

static void pass_next_peer(pass *p);
static void pass_sync(pass *p);
static void pass_mend(pass *p);

static void pents_clear(pent_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i].key);
    free(l->v);
    *l = (pent_list){0};
}

static bool pents_add(pent_list *l, const void *key, size_t klen, uint64_t ct, const uint64_t *vh)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 256;
        pent *nv = realloc(l->v, ncap * sizeof(*nv));
        if (!nv) return false;
        l->v = nv;
        l->cap = ncap;
    }
    pent *e = &l->v[l->n];
    if (!(e->key = malloc(klen))) return false;
    memcpy(e->key, key, klen);
    e->klen = klen;
    e->ct = ct;
    e->has_vh = vh != NULL;
    e->vh = vh ? *vh : 0;
    l->n++;
    return true;
}

static int key_cmp(const pent *a, const pent *b)
{
    int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
    return c ? c : (a->klen > b->klen) - (a->klen < b->klen);
}

/* By key, the newest first (a walk may list a rewritten record twice). */
static int pent_cmp(const void *pa, const void *pb)
{
    const pent *a = pa, *b = pb;
    int c = key_cmp(a, b);
    return c ? c : (a->ct < b->ct) - (a->ct > b->ct);
}

static void mend_clear_key(pass *p)
{
    for (size_t i = 0; i < KUMO_REPLICAS; i++) {
        free(p->copy[i]);
        p->copy[i] = NULL;
        p->copylen[i] = 0;
    }
    p->step = 0;
    p->nothers = p->nsend = 0;
}

/* Drop what the peer in hand left behind. */
static void pass_clear_peer(pass *p)
{
    job_free(p->keys);
    p->keys = NULL;
    pents_clear(&p->ours);
    pents_clear(&p->theirs);
    free(p->push);
    free(p->pull);
    free(p->disp);
    mend_clear_key(p);
    p->push = p->pull = NULL;
    p->disp = NULL;
    p->ndisp = p->next_disp = 0;
    p->npush = p->next_push = p->npull = p->next_pull = p->inflight = 0;
    p->peer_listed = p->skip = false;
    if (p->poll) evtimer_del(p->poll);
}

static void pass_arm(pass *p, int seconds)
{
    struct timeval tv = {seconds, 0};
    if (p->timer) evtimer_add(p->timer, &tv);
}

static void pass_end(pass *p, const char *why)
{
    server *s = p->s;
    struct digest *d = s->digest;
    pass_clear_peer(p);
    job_free(p->mine);
    p->mine = NULL;
    free(p->peers);
    p->peers = NULL;
    p->npeers = p->at = 0;
    hashspace_unref(p->whs);
    p->whs = NULL;
    p->phase = PH_IDLE;
    if (s->stopping) return;
    d->pass_runs++;
    d->last_pass = time(NULL);
    if (why) {
        d->pass_failures++;
        log_warn("anti-entropy pass: %s", why);
    } else if (p->divergent) {
        log_info("anti-entropy pass: %zu ranges compared, %zu divergent, %zu records sent, %zu fetched, %zu copies "
                 "mended, %zu keys without a majority",
                 p->compared, p->divergent, p->pushed, p->pulled, p->mended, p->unmended);
    } else {
        log_debug("anti-entropy pass: %zu ranges compared, none divergent", p->compared);
    }
    if (p->again) {
        p->again = false;
        pass_arm(p, 0);
    } else if (s->cfg->verify_interval > 0) {
        pass_arm(p, s->cfg->verify_interval);
    }
}

/* On to the next co-owner. */
static void pass_done_peer(pass *p)
{
    pass_clear_peer(p);
    p->at++;
    pass_next_peer(p);
}

/* The peer in hand failed us: logged; what is left of it is skipped. */
static void pass_peer_failed(pass *p, const char *what, rpc_status st, const msgpack_object *result)
{
    char buf[NET_ADDRSTRLEN], why[KUMO_ERRLEN];
    if (p->skip) return;
    p->s->digest->pass_failures++;
    log_warn("anti-entropy pass: %s: %s: %s", net_format(&p->peers[p->at], buf, sizeof(buf)), what,
             rpc_strerror(st, result, why, sizeof(why)));
    p->skip = true;
}

/* Begin a call to a (pack the params into *pk, then rpc_call_end the
 * connection returned); NULL when stopping. */
static rpc_conn *pass_call_to(pass *p, const net_addr *a, uint32_t method, rpc_reply_fn fn, msgpack_packer **pk)
{
    rpc_conn *c = p->s->stopping ? NULL : cluster_peer(p->s, a);
    if (c) *pk = rpc_call_begin(c, method, PASS_TIMEOUT, fn, p);
    return c;
}

/* The same to the peer in hand. */
static rpc_conn *pass_call(pass *p, uint32_t method, rpc_reply_fn fn, msgpack_packer **pk)
{
    return pass_call_to(p, &p->peers[p->at], method, fn, pk);
}

static void pass_peer_reply(void *arg, rpc_status st, const msgpack_object *result);

/* Start (job 0) or poll the peer's walk of p->method. */
static void pass_ask_walk(pass *p, uint64_t job_id)
{
    msgpack_packer *pk;
    rpc_conn *c = pass_call(p, p->method, pass_peer_reply, &pk);
    if (!c) {
        pass_end(p, "stopped");
        return;
    }
    if (job_id != 0 || p->method == SRV_DIGEST) { /* a digest with the values' (an older peer answers without) */
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint64(pk, job_id);
        msgpack_pack_uint8(pk, 1);
    } else { /* a new listing of p->keys's spans, with the values' hashes; closed [a, b] sent as (a - 1, b] */
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint8(pk, 0);
        msgpack_pack_array(pk, (uint32_t)p->keys->nspans);
        for (size_t i = 0; i < p->keys->nspans; i++) {
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint64(pk, p->keys->spans[i].a - 1);
            msgpack_pack_uint64(pk, p->keys->spans[i].b);
        }
        msgpack_pack_uint8(pk, 1);
    }
    rpc_call_end(c);
}

static void pass_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    pass *p = arg;
    pass_ask_walk(p, p->peer_job);
}

/* Our listing and the peer's are both in: each key one side lacks or holds
 * older goes across, unless it was written after the pass began. */
static void pass_merge(pass *p)
{
    if (p->skip || !p->keys || p->keys->state != JOB_DONE || p->keys->overflow) {
        pass_done_peer(p);
        return;
    }
    msgpack_unpacked u; /* our listing: packed [dbkey, ct, tombstone] entries */
    size_t off = 0;
    msgpack_unpacked_init(&u);
    while (msgpack_unpack_next(&u, p->keys->out.data, p->keys->out.size, &off) == MSGPACK_UNPACK_SUCCESS) {
        const char *k;
        size_t kl;
        uint64_t ct, vh;
        if (rpc_arg_bytes(&u.data, 0, &k, &kl) && rpc_arg_uint(&u.data, 1, &ct) && rpc_arg_uint(&u.data, 3, &vh) &&
            !pents_add(&p->ours, k, kl, ct, &vh))
            p->skip = true;
    }
    msgpack_unpacked_destroy(&u);
    p->push = malloc((p->ours.n + 1) * sizeof(size_t));
    p->pull = malloc((p->theirs.n + 1) * sizeof(size_t));
    p->disp = malloc((p->ours.n + 1) * sizeof(size_t));
    if (p->skip || !p->push || !p->pull || !p->disp) {
        pass_end(p, "out of memory");
        return;
    }
    if (p->ours.n) qsort(p->ours.v, p->ours.n, sizeof(pent), pent_cmp);
    if (p->theirs.n) qsort(p->theirs.v, p->theirs.n, sizeof(pent), pent_cmp);
    const pent *o = p->ours.v, *oe = o + p->ours.n, *t = p->theirs.v, *te = t + p->theirs.n;
    while (o < oe || t < te) {
        int c = o == oe ? 1 : t == te ? -1
                                      : key_cmp(o, t);
        if (c <= 0 && o->ct <= p->start_ct && (c < 0 || o->ct > t->ct)) p->push[p->npush++] = (size_t)(o - p->ours.v);
        if (c >= 0 && t->ct <= p->start_ct && (c > 0 || t->ct > o->ct)) p->pull[p->npull++] = (size_t)(t - p->theirs.v);
        if (c == 0 && o->ct == t->ct && o->ct <= p->start_ct && o->has_vh && t->has_vh && o->vh != t->vh &&
            p->ndisp < SRV_FETCH_MAX) /* one write, other bytes: the majority decides (pass_mend) */
            p->disp[p->ndisp++] = (size_t)(o - p->ours.v);
        const pent *first = c <= 0 ? o : t; /* past every listing of this key, on both sides */
        while (c <= 0 && o + 1 < oe && key_cmp(o + 1, first) == 0) o++;
        while (c >= 0 && t + 1 < te && key_cmp(t + 1, first) == 0) t++;
        if (c <= 0) o++;
        if (c >= 0) t++;
    }
    p->phase = PH_SYNC;
    pass_sync(p);
}

static void pass_pushed(void *arg, rpc_status st, const msgpack_object *result)
{
    pass *p = arg;
    p->inflight--;
    if (st != RPC_OK) {
        pass_peer_failed(p, "SRV_REPLICATE", st, result);
    } else if (result && result->type == MSGPACK_OBJECT_BOOLEAN && result->via.boolean) {
        p->pushed++;
        p->s->digest->pass_pushed++;
    }
    if (!p->s->stopping) pass_sync(p);
}

/* Whether the layout changed since the pass began: another version of the
 * membership, or a replace that moved on (whs and rhs apart, or rhs := whs). */
static bool layout_moved(const server *s, const pass *p)
{
    return s->whs->version != p->whs->version || s->whs->clocktime != p->whs->clocktime ||
           s->rhs->clocktime != p->whs->clocktime;
}

static void pass_fetched(void *arg, rpc_status st, const msgpack_object *result)
{
    pass *p = arg;
    server *s = p->s;
    char err[KUMO_ERRLEN];
    size_t n = p->inflight; /* the batch, which ends at next_pull */
    p->inflight = 0;
    if (st != RPC_OK || !result || result->type != MSGPACK_OBJECT_ARRAY || result->via.array.size != n) {
        pass_peer_failed(p, "SRV_FETCH", st, result);
    } else if (layout_moved(s, p)) {
        p->skip = true; /* these keys may be ours no more (see pass_sync) */
    } else {
        for (size_t k = 0; k < n; k++) {
            const pent *e = &p->theirs.v[p->pull[p->next_pull - n + k]];
            const msgpack_object *v = &result->via.array.ptr[k];
            if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size < RECORD_TOMBSTONE) continue; /* gone meanwhile */
            clock_update(&s->clock, record_clocktime(v->via.bin.ptr, v->via.bin.size));
            int rc = store_update(s->db, e->key, e->klen, v->via.bin.ptr, v->via.bin.size, err);
            if (rc < 0) log_error("anti-entropy pass: %s", err);
            if (rc != 1) continue;
            gc_tombstone(s, e->key, e->klen, v->via.bin.ptr, v->via.bin.size);
            p->pulled++;
            s->digest->pass_pulled++;
        }
    }
    if (!s->stopping) pass_sync(p);
}

/* Send what the peer lacks, PASS_WINDOW at a time; then fetch what we lack,
 * one batch at a time. */
static void pass_sync(pass *p)
{
    server *s = p->s;
    msgpack_packer *pk;
    rpc_conn *c;
    /* The layout changed under the pass: the peer may no longer own these
     * keys (a replace's delete may already have passed them there), so
     * sending them would leave stray copies. The next pass compares again. */
    if (layout_moved(s, p)) p->skip = true;
    while (!p->skip && p->next_push < p->npush && p->inflight < PASS_WINDOW) {
        const pent *e = &p->ours.v[p->push[p->next_push++]];
        size_t vlen;
        void *v = store_get(s->db, e->key, e->klen, &vlen);
        if (v && vlen >= RECORD_TOMBSTONE && (c = pass_call(p, SRV_REPLICATE, pass_pushed, &pk))) {
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint8(pk, 0);
            rpc_pack_bytes(pk, e->key, e->klen);
            rpc_pack_bytes(pk, v, vlen);
            rpc_call_end(c);
            p->inflight++;
        }
        free(v); /* none: gone since the listing (collected, or moved by a replace) */
    }
    if (p->inflight > 0) return;
    size_t n = p->npull - p->next_pull < SRV_FETCH_MAX ? p->npull - p->next_pull : SRV_FETCH_MAX;
    if (!p->skip && n > 0 && (c = pass_call(p, SRV_FETCH, pass_fetched, &pk))) {
        msgpack_pack_array(pk, 1);
        msgpack_pack_array(pk, (uint32_t)n);
        for (size_t k = 0; k < n; k++) {
            const pent *e = &p->theirs.v[p->pull[p->next_pull + k]];
            rpc_pack_bytes(pk, e->key, e->klen);
        }
        rpc_call_end(c);
        p->next_pull += n;
        p->inflight = n;
        return;
    }
    p->next_disp = 0;
    mend_clear_key(p);
    pass_mend(p);
}

/* ---- mending: copies of one ClockTime with other bytes ----
 *
 * A key this server and the peer in hand list with one ClockTime and other
 * value hashes is one write whose bytes changed on some disk since (Tokyo
 * Cabinet keeps no checksum; newer-wins cannot choose between them). Such
 * keys are rare, so they go one at a time: each other live owner's copy is
 * fetched (SRV_FETCH), and the bytes held by a majority of the key's live
 * owners are written over the copies that differ (store_mend here,
 * SRV_REPLICATE with WF_MEND there). Without a majority (two owners that
 * differ, or three copies all different) nothing is changed: logged, and
 * left to kumoctl verify, which reports the key. */

static void mend_fetched(void *arg, rpc_status st, const msgpack_object *result);

static const pent *mend_key(const pass *p)
{
    return &p->ours.v[p->disp[p->next_disp]];
}

static void mend_next_key(pass *p)
{
    mend_clear_key(p);
    p->next_disp++;
    pass_mend(p);
}

static bool same_copy(const pass *p, size_t a, size_t b)
{
    return p->copy[a] && p->copy[b] && p->copylen[a] == p->copylen[b] &&
           memcmp(p->copy[a], p->copy[b], p->copylen[a]) == 0;
}

static void mend_sent(void *arg, rpc_status st, const msgpack_object *result);

/* Send the majority's bytes (copy[win]) to the next other owner whose copy
 * differs and is not newer. */
static void mend_send(pass *p)
{
    const pent *e = mend_key(p);
    while (p->nsend <= p->nothers) {
        size_t i = p->nsend++;
        msgpack_packer *pk;
        rpc_conn *c;
        if (same_copy(p, i, p->win) || (p->copy[i] && record_clocktime(p->copy[i], p->copylen[i]) > e->ct) ||
            !(c = pass_call_to(p, &p->others[i - 1], SRV_REPLICATE, mend_sent, &pk)))
            continue;
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint8(pk, WF_MEND);
        rpc_pack_bytes(pk, e->key, e->klen);
        rpc_pack_bytes(pk, p->copy[p->win], p->copylen[p->win]);
        rpc_call_end(c);
        return;
    }
    mend_next_key(p);
}

static void mend_sent(void *arg, rpc_status st, const msgpack_object *result)
{
    pass *p = arg;
    if (p->s->stopping) return;
    if (st == RPC_OK && result && result->type == MSGPACK_OBJECT_BOOLEAN && result->via.boolean) {
        p->mended++;
        p->s->digest->pass_mended++;
    }
    mend_send(p);
}

/* Every copy of the key in hand is in (copy[0] is ours, read now): the
 * verdict. */
static void mend_judge(pass *p)
{
    server *s = p->s;
    const pent *e = mend_key(p);
    char err[KUMO_ERRLEN];
    size_t n = p->nothers + 1, votes = 0;
    p->copy[0] = store_get(s->db, e->key, e->klen, &p->copylen[0]);
    if (!p->copy[0] || record_clocktime(p->copy[0], p->copylen[0]) != e->ct) { /* written meanwhile */
        mend_next_key(p);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        size_t same = 0;
        if (!p->copy[i] || record_clocktime(p->copy[i], p->copylen[i]) != e->ct) continue;
        for (size_t k = 0; k < n; k++) same += same_copy(p, i, k);
        if (same > votes) {
            votes = same;
            p->win = i;
        }
    }
    if (votes * 2 <= n) {
        p->unmended++;
        s->digest->pass_unmended++;
        log_warn("anti-entropy pass: key hash %016llx: the copies of one write (ClockTime %u.%u) differ, and no "
                 "majority of its %zu live owners holds the same bytes: left as they are",
                 (unsigned long long)record_key_hash(e->key, e->klen), clock_seconds(e->ct), clock_counter(e->ct), n);
        mend_next_key(p);
        return;
    }
    log_warn("anti-entropy pass: key hash %016llx: the copies of one write (ClockTime %u.%u) differ: the bytes %zu of "
             "its %zu live owners hold are written over the others",
             (unsigned long long)record_key_hash(e->key, e->klen), clock_seconds(e->ct), clock_counter(e->ct), votes, n);
    if (!same_copy(p, 0, p->win)) {
        int rc = store_mend(s->db, e->key, e->klen, p->copy[p->win], p->copylen[p->win], err);
        if (rc < 0) log_error("anti-entropy pass: %s", err);
        if (rc == 1) {
            p->mended++;
            s->digest->pass_mended++;
        }
    }
    p->nsend = 1;
    mend_send(p);
}

/* The next disputed key: its other live owners, then their copies, one
 * call at a time (step i fetches from others[i - 1]), then the verdict. */
static void pass_mend(pass *p)
{
    server *s = p->s;
    msgpack_packer *pk;
    rpc_conn *c;
    if (s->whs->clocktime != p->whs->clocktime || s->rhs->clocktime != p->whs->clocktime) p->skip = true;
    if (p->skip || p->next_disp >= p->ndisp) {
        pass_done_peer(p);
        return;
    }
    const pent *e = mend_key(p);
    if (p->step == 0) {
        uint32_t own[KUMO_REPLICAS];
        size_t n = hashspace_live_owners(p->whs, record_key_hash(e->key, e->klen), own);
        for (size_t k = 0; k < n; k++)
            if (!net_equal(&p->whs->ring.nodes[own[k]].addr, &s->self))
                p->others[p->nothers++] = p->whs->ring.nodes[own[k]].addr;
        p->step = 1;
    }
    if (p->step > p->nothers) {
        mend_judge(p);
        return;
    }
    if (!(c = pass_call_to(p, &p->others[p->step - 1], SRV_FETCH, mend_fetched, &pk))) {
        mend_next_key(p);
        return;
    }
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 1);
    rpc_pack_bytes(pk, e->key, e->klen);
    rpc_call_end(c);
}

static void mend_fetched(void *arg, rpc_status st, const msgpack_object *result)
{
    pass *p = arg;
    if (p->s->stopping) return;
    if (st != RPC_OK || !result || result->type != MSGPACK_OBJECT_ARRAY || result->via.array.size != 1) {
        char buf[NET_ADDRSTRLEN], why[KUMO_ERRLEN];
        log_warn("anti-entropy pass: %s: SRV_FETCH: %s", net_format(&p->others[p->step - 1], buf, sizeof(buf)),
                 rpc_strerror(st, result, why, sizeof(why)));
        mend_next_key(p); /* the next pass tries it again */
        return;
    }
    const msgpack_object *v = &result->via.array.ptr[0];
    if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size >= RECORD_TOMBSTONE) {
        p->copy[p->step] = xmalloc(v->via.bin.size);
        memcpy(p->copy[p->step], v->via.bin.ptr, v->via.bin.size);
        p->copylen[p->step] = v->via.bin.size;
    }
    p->step++;
    pass_mend(p);
}

/* Our own listing walk is over. */
static void pass_listed(server *s, void *arg, bool ok)
{
    pass *p = s->digest->pass;
    walked(s, arg, ok); /* arg is p->keys */
    if (!s->stopping && p->peer_listed) pass_merge(p);
}

/* The led ranges the peer co-owns whose digests differ, as the spans of a
 * listing job: at most PASS_BATCH records' worth (a first range larger than
 * that alone). NULL when none differ. */
static job *pass_divergent(pass *p, const msgpack_object *list)
{
    const ring *r = &p->whs->ring;
    uint64_t *pc = calloc(r->nvnodes, sizeof(*pc)), *ps = calloc(r->nvnodes, sizeof(*ps));
    uint64_t *pv = calloc(r->nvnodes, sizeof(*pv));
    bool values = false; /* the peer sent vdigests: an older one does not */
    job *j = NULL;
    if (!pc || !ps || !pv) goto out;
    for (uint32_t i = 0; i < list->via.array.size; i++) {
        uint64_t v, c, d, vd;
        const msgpack_object *e = &list->via.array.ptr[i];
        if (rpc_arg_uint(e, 0, &v) && rpc_arg_uint(e, 1, &c) && rpc_arg_uint(e, 2, &d) && v < r->nvnodes) {
            pc[v] = c;
            ps[v] = d;
            if (rpc_arg_uint(e, 3, &vd)) {
                pv[v] = vd;
                values = true;
            }
        }
    }
    uint64_t budget = PASS_BATCH;
    for (size_t i = 0; i < r->nvnodes; i++) {
        uint64_t h = r->vnodes[i].hash;
        if (i > 0 && h == r->vnodes[i - 1].hash) continue; /* a tie: an empty range */
        if (!hashspace_is_primary(p->whs, h, &p->s->self) || !hashspace_is_owner(p->whs, h, &p->peers[p->at])) continue;
        p->compared++;
        p->s->digest->pass_compared++;
        if (pc[i] == p->mine->count[i] && ps[i] == p->mine->sum[i] && (!values || pv[i] == p->mine->vsum[i])) continue;
        p->divergent++;
        p->s->digest->pass_divergent++;
        uint64_t w = pc[i] > p->mine->count[i] ? pc[i] : p->mine->count[i];
        if (j && (w > budget || j->nspans + 2 > SRV_RANGE_KEYS_MAX_SPANS)) continue; /* the next pass takes it */
        budget = w > budget ? 0 : budget - w;
        if (!j && (!(j = job_new(p->s, JOB_KEYS)) || !(j->spans = malloc(2 * r->nvnodes * sizeof(span))))) {
            job_free(j);
            j = NULL;
            goto out;
        }
        add_span(j, r->vnodes[(i + r->nvnodes - 1) % r->nvnodes].hash, h);
    }
    if (j) {
        finish_spans(j);
        j->values = true;
    }
out:
    free(pc);
    free(ps);
    free(pv);
    return j;
}

/* A walk's result from the peer in hand. */
static void pass_peer_result(pass *p, const msgpack_object *res)
{
    if (p->phase == PH_PEER_DIGEST) {
        uint64_t ct;
        const msgpack_object *list = rpc_arg(res, 3);
        /* Another layout (the next pass compares), or nothing differs. */
        if (!rpc_arg_uint(res, 0, &ct) || ct != p->whs->clocktime || !list || list->type != MSGPACK_OBJECT_ARRAY ||
            !(p->keys = pass_divergent(p, list))) {
            pass_done_peer(p);
            return;
        }
        p->phase = PH_LISTING;
        p->method = SRV_RANGE_KEYS;
        pass_ask_walk(p, 0);
        if (p->phase == PH_LISTING) data_walk(p->s, keys_visit, pass_listed, p->keys);
        return;
    }
    bool complete = false; /* PH_LISTING: [complete, matched, [[dbkey, ct, tombstone]...]] */
    const msgpack_object *list = rpc_arg(res, 2);
    if (!rpc_arg_bool(res, 0, &complete) || !complete || !list || list->type != MSGPACK_OBJECT_ARRAY) p->skip = true;
    for (uint32_t i = 0; !p->skip && i < list->via.array.size; i++) {
        const char *k;
        size_t kl;
        uint64_t ct, vh;
        const msgpack_object *e = &list->via.array.ptr[i];
        if (rpc_arg_bytes(e, 0, &k, &kl) && kl > RECORD_KEY_HEADER && rpc_arg_uint(e, 1, &ct) &&
            !pents_add(&p->theirs, k, kl, ct, rpc_arg_uint(e, 3, &vh) ? &vh : NULL))
            p->skip = true;
    }
    p->peer_listed = true;
    if (p->keys->state != JOB_WALKING) pass_merge(p);
}

/* [job, walked, total, result | nil] from the peer in hand. */
static void pass_peer_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    pass *p = arg;
    uint64_t id;
    const msgpack_object *res = result ? rpc_arg(result, 3) : NULL;
    if (p->s->stopping) return;
    if (st != RPC_OK || !rpc_arg_uint(result, 0, &id) || !res) {
        pass_peer_failed(p, p->method == SRV_DIGEST ? "SRV_DIGEST" : "SRV_RANGE_KEYS", st, result);
        if (p->phase != PH_LISTING) {
            pass_done_peer(p);
        } else { /* our own listing may still walk: pass_merge waits for it */
            p->peer_listed = true;
            if (p->keys->state != JOB_WALKING) pass_merge(p);
        }
        return;
    }
    p->peer_job = id;
    if (res->type == MSGPACK_OBJECT_NIL) {
        struct timeval tv = {0, PASS_POLL_USEC};
        evtimer_add(p->poll, &tv);
        return;
    }
    pass_peer_result(p, res);
}

static void pass_next_peer(pass *p)
{
    if (p->s->stopping) {
        pass_end(p, "stopped");
    } else if (p->at >= p->npeers) {
        pass_end(p, NULL);
    } else {
        p->phase = PH_PEER_DIGEST;
        p->method = SRV_DIGEST;
        pass_ask_walk(p, 0);
    }
}

/* Our own digests are in: list the co-owners of the ranges we lead. */
static void pass_own_digest(server *s, void *arg, bool ok)
{
    pass *p = s->digest->pass;
    walked(s, arg, ok); /* arg is p->mine */
    const ring *r = &p->whs->ring;
    if (!ok || !(p->peers = calloc(r->nnodes, sizeof(*p->peers)))) {
        pass_end(p, ok ? "out of memory" : "the database walk failed");
        return;
    }
    for (size_t i = 0; i < r->nvnodes; i++) {
        uint32_t own[KUMO_REPLICAS];
        if (!hashspace_is_primary(p->whs, r->vnodes[i].hash, &s->self)) continue;
        size_t n = hashspace_live_owners(p->whs, r->vnodes[i].hash, own);
        for (size_t k = 0; k < n; k++) {
            const net_addr *a = &r->nodes[own[k]].addr;
            bool known = net_equal(a, &s->self);
            for (size_t q = 0; q < p->npeers && !known; q++) known = net_equal(a, &p->peers[q]);
            if (!known) p->peers[p->npeers++] = *a;
        }
    }
    pass_next_peer(p);
}

static void pass_start(evutil_socket_t fd, short what, void *arg)
{
    pass *p = arg;
    server *s = p->s;
    int at = hashspace_find(s->whs, &s->self);
    if (p->phase != PH_IDLE || s->stopping) return;
    /* Not a member, catching up or held fault by a peer (it leads nothing),
     * or a replace moving data: not now. */
    if (at < 0 || !s->whs->ring.nodes[at].active || s->catching_up || s->stale_view ||
        s->whs->clocktime != s->rhs->clocktime) {
        if (s->cfg->verify_interval > 0) pass_arm(p, s->cfg->verify_interval);
        return;
    }
    p->whs = hashspace_ref(s->whs);
    p->compared = p->divergent = p->pushed = p->pulled = p->mended = p->unmended = 0;
    size_t nv = p->whs->ring.nvnodes;
    p->mine = job_new(s, JOB_DIGEST);
    if (p->mine) {
        p->mine->whs = hashspace_ref(p->whs);
        p->mine->count = calloc(nv, sizeof(uint64_t));
        p->mine->sum = calloc(nv, sizeof(uint64_t));
        p->mine->vsum = calloc(nv, sizeof(uint64_t));
    }
    if (!p->mine || !p->mine->count || !p->mine->sum || !p->mine->vsum) {
        pass_end(p, "out of memory");
        return;
    }
    p->start_ct = p->mine->start_ct;
    p->phase = PH_OWN_DIGEST;
    data_walk(s, digest_visit, pass_own_digest, p->mine);
}

void digest_pass_now(server *s)
{
    pass *p = s->digest ? s->digest->pass : NULL;
    if (!p || s->stopping) return;
    if (p->phase != PH_IDLE) {
        p->again = true;
        return;
    }
    pass_arm(p, 0);
}

void digest_metrics(server *s, metrics_out *o)
{
    const struct digest *d = s->digest;
    if (!d) return;
    metrics_gauge(o, "kumo_server_verify_running", "1 while a background anti-entropy pass runs (--verify-interval)",
                  d->pass && d->pass->phase != PH_IDLE);
    metrics_counter(o, "kumo_server_verify_passes", "background anti-entropy passes finished", d->pass_runs);
    metrics_gauge(o, "kumo_server_verify_last_pass_time", "unix time the last pass finished (0: none yet)",
                  (double)d->last_pass);
    metrics_counter(o, "kumo_server_verify_ranges_compared", "led ranges compared with a co-owner",
                    d->pass_compared);
    metrics_counter(o, "kumo_server_verify_ranges_divergent", "of those, ranges whose digests differed",
                    d->pass_divergent);
    metrics_counter(o, "kumo_server_verify_records_sent", "records a co-owner lacked, sent to it", d->pass_pushed);
    metrics_counter(o, "kumo_server_verify_records_fetched", "records this server lacked, fetched and written",
                    d->pass_pulled);
    metrics_counter(o, "kumo_server_verify_records_mended",
                    "copies of one ClockTime with other bytes overwritten with the owners' majority's", d->pass_mended);
    metrics_counter(o, "kumo_server_verify_keys_unmended",
                    "keys whose copies of one ClockTime differ with no majority among the owners (see the log)",
                    d->pass_unmended);
    metrics_counter(o, "kumo_server_verify_failures", "passes or peers given up on (see the log)", d->pass_failures);
}

/* ---- start and stop ---- */

int digest_start(server *s, char *err)
{
    s->digest = calloc(1, sizeof(*s->digest));
    if (!s->digest) return kumo_err(err, "out of memory");
    /* Ids differ across restarts, so a caller polling a restarted server
     * is told its walk is gone rather than given another one's. */
    s->digest->next_id = ((uint64_t)time(NULL) << 16) | 1;
    pass *p = s->digest->pass = calloc(1, sizeof(*p));
    if (!p || !(p->timer = evtimer_new(s->base, pass_start, p)) || !(p->poll = evtimer_new(s->base, pass_poll_cb, p)))
        return kumo_err(err, "out of memory");
    p->s = s;
    if (s->cfg->verify_interval > 0) pass_arm(p, s->cfg->verify_interval);
    return 0;
}

void digest_stop(server *s)
{
    if (!s->digest) return;
    pass *p = s->digest->pass;
    if (p) {
        pass_clear_peer(p);
        job_free(p->mine);
        free(p->peers);
        hashspace_unref(p->whs);
        if (p->timer) event_free(p->timer);
        if (p->poll) event_free(p->poll);
        free(p);
    }
    while (s->digest->jobs) {
        job *j = s->digest->jobs;
        s->digest->jobs = j->next;
        job_free(j);
    }
    free(s->digest);
    s->digest = NULL;
}
