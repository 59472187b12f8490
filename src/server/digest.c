/*
 * digest — anti-entropy on kumo-server (see digest.h; wire formats in
 * docs/protocol.md §6, the procedure in docs/anti-entropy.md).
 *
 * A job is one walk over the database:
 *   - a digest job adds each record to the [count, digest] pair of the
 *     vnode range of this server's whs its key hash falls in: range i holds
 *     the hashes in (vnode[i-1], vnode[i]], range 0 also those past the
 *     last vnode (ring.c's lower bound, wrapping). The result names the whs
 *     ClockTime it used, so a caller can tell that every server used the
 *     layout it compares with.
 *   - a range-keys job lists (dbkey, ClockTime, tombstone) of the records
 *     whose hash is in the intervals asked for. A caller asks by intervals,
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
 * Memory: at most DIGEST_MAX_JOBS jobs; a digest result is 16 bytes per
 * vnode, a range-keys result at most SRV_RANGE_KEYS_MAX_BYTES. A finished
 * job waits DIGEST_KEEP_SECONDS for its caller; a range-keys result is freed
 * as soon as it has been sent, a digest result (which several callers may
 * share) when it expires.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "digest.h"
#include "log.h"
#include "proto.h"
#include "record.h"

#define DIGEST_MAX_JOBS 4
#define DIGEST_KEEP_SECONDS 60

enum job_kind { JOB_DIGEST, JOB_KEYS };
enum job_state { JOB_WALKING, JOB_DONE, JOB_FAILED };

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
    uint64_t *count, *sum; /* per vnode of whs */
    /* JOB_KEYS */
    span *spans;
    size_t nspans;
    msgpack_sbuffer out; /* the packed [dbkey, clocktime, tombstone] entries */
    msgpack_packer pk;
    uint64_t matched, listed;
    bool overflow; /* more than one answer may carry: out is dropped */
} job;

struct digest {
    job *jobs;
    uint64_t next_id;
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
    job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
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
    j->count[i]++;
    j->sum[i] += digest_record(key, klen, record_clocktime(val, vlen));
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
    if (j->listed >= SRV_RANGE_KEYS_MAX_RECORDS || j->out.size + klen + 16 > SRV_RANGE_KEYS_MAX_BYTES) {
        j->overflow = true;
        return 0;
    }
    msgpack_pack_array(&j->pk, 3);
    rpc_pack_bytes(&j->pk, key, klen);
    msgpack_pack_uint64(&j->pk, record_clocktime(val, vlen));
    if (vlen == RECORD_TOMBSTONE) msgpack_pack_true(&j->pk);
    else msgpack_pack_false(&j->pk);
    j->listed++;
    return 0;
}

/* ---- requests ---- */

/* [job, walked, total, result | nil]. A range-keys result is sent once and
 * its job freed. */
static void reply_job(server *s, rpc_conn *c, uint32_t msgid, job *j)
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
            msgpack_pack_array(pk, 3);
            msgpack_pack_uint64(pk, i);
            msgpack_pack_uint64(pk, j->count[i]);
            msgpack_pack_uint64(pk, j->sum[i]);
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
    reply_job(s, c, msgid, j); /* before the walk's first step, which may finish it */
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
    if (j) {
        j->whs = hashspace_ref(s->whs);
        j->count = calloc(nv, sizeof(*j->count));
        j->sum = calloc(nv, sizeof(*j->sum));
    }
    if (!j || !j->count || !j->sum) {
        job_free(j);
        rpc_reply_error(c, msgid, "out of memory");
        return;
    }
    job_run(s, c, msgid, j, digest_visit);
}

static int span_cmp(const void *pa, const void *pb)
{
    const span *a = pa, *b = pb;
    return a->a < b->a ? -1 : a->a > b->a;
}

/* [[lo, hi]...] -> sorted, merged closed spans: (lo, hi], or, when lo >= hi,
 * (lo, 2^64) and [0, hi] (the range that wraps past the last vnode). */
static bool parse_spans(const msgpack_object *o, job *j)
{
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > SRV_RANGE_KEYS_MAX_SPANS) return false;
    uint32_t n = o->via.array.size;
    j->spans = malloc((2 * (size_t)n + 1) * sizeof(*j->spans));
    if (!j->spans) return false;
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        if (!rpc_arg_uint(&o->via.array.ptr[i], 0, &lo) || !rpc_arg_uint(&o->via.array.ptr[i], 1, &hi)) return false;
        if (lo < hi) {
            j->spans[k++] = (span){lo + 1, hi};
            continue;
        }
        if (lo < UINT64_MAX) j->spans[k++] = (span){lo + 1, UINT64_MAX};
        j->spans[k++] = (span){0, hi};
    }
    qsort(j->spans, k, sizeof(*j->spans), span_cmp);
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        if (m > 0 && (j->spans[m - 1].b == UINT64_MAX || j->spans[i].a <= j->spans[m - 1].b + 1)) {
            if (j->spans[i].b > j->spans[m - 1].b) j->spans[m - 1].b = j->spans[i].b;
        } else {
            j->spans[m++] = j->spans[i];
        }
    }
    j->nspans = m;
    return true;
}

static void start_keys(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    job *j = job_new(s, JOB_KEYS);
    if (!j) {
        rpc_reply_error(c, msgid, "out of memory");
        return;
    }
    if (!parse_spans(rpc_arg(params, 1), j)) {
        job_free(j);
        rpc_reply_error(c, msgid, "bad params: an array of at most %d [lo, hi] pairs", SRV_RANGE_KEYS_MAX_SPANS);
        return;
    }
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
        else reply_job(s, c, msgid, j);
    } else if (kind == JOB_DIGEST && (j = walking_digest(s))) {
        reply_job(s, c, msgid, j);
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

/* ---- start and stop ---- */

int digest_start(server *s, char *err)
{
    s->digest = calloc(1, sizeof(*s->digest));
    if (!s->digest) return kumo_err(err, "out of memory");
    /* Ids differ across restarts, so a caller polling a restarted server
     * is told its walk is gone rather than given another one's. */
    s->digest->next_id = ((uint64_t)time(NULL) << 16) | 1;
    return 0;
}

void digest_stop(server *s)
{
    if (!s->digest) return;
    while (s->digest->jobs) {
        job *j = s->digest->jobs;
        s->digest->jobs = j->next;
        job_free(j);
    }
    free(s->digest);
    s->digest = NULL;
}
