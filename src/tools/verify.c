/*
 * verify — kumoctl's verify and repair (see verify.h; the procedure and
 * its limits are in docs/anti-entropy.md, the messages in docs/protocol.md).
 *
 *  1. The manager's whs and rhs (CTL_STATUS). While they differ a replace is
 *     moving ranges and their new owners are expected to differ: refused.
 *  2. SRV_DIGEST on every live server of whs, every walk started before any
 *     is waited for. Each answer must name the manager's whs ClockTime.
 *  3. Each vnode range with two or more live owners is *compared*; it is
 *     *divergent* when their [count, digest, vdigest] differ (vdigest,
 *     with the values' hashes, between servers that send it).
 *  4. The divergent ranges, in batches of about BATCH_RECORDS records:
 *     SRV_RANGE_KEYS from each live owner; a key is a candidate when its
 *     live owners do not all list it with one ClockTime and value hash. A batch that a
 *     server cannot list in one answer is halved (a lone range: its hash
 *     interval is) and asked again.
 *  5. Candidates, SRV_FETCH_MAX at a time: SRV_FETCH from each live owner,
 *     and these fresh records decide. A candidate whose copies now agree
 *     was a write in flight; one whose newest copy is newer than the
 *     earliest digest walk began was written during the run: neither is
 *     judged. The rest are the divergent keys.
 *  6. repair: each divergent key's newest record (tombstones included) is
 *     sent with SRV_REPLICATE to every live owner that lacks it or holds
 *     an older one; the server applies it newer-wins. When the copies of
 *     that ClockTime differ in their bytes, the bytes a majority of the
 *     live owners hold go, with WF_MEND, to the owners holding others; with
 *     no majority nothing is sent. One call at a time,
 *     so at most one write is in flight and SRV_FETCH_MAX records are held.
 *     Then steps 4-5 run again over the divergent ranges.
 *
 * Memory: one batch's listed keys, and every divergent key (with its
 * owners' ClockTimes) for the report printed at the end, per server pair.
 */
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "proto.h"
#include "record.h"
#include "tool.h"

#define BATCH_RECORDS 200000 /* records a batch of SRV_RANGE_KEYS should list per server, from the digests */
#define POLL_FIRST 0.01      /* s: the first poll of a walk; the pause doubles up to POLL_MAX */
#define POLL_MAX 0.2
#define PROGRESS_AFTER 2.0 /* s: runs shorter than this print no progress */
#define PROGRESS_EVERY 2.0

enum { ST_MISSING = 0,
       ST_VALUE = 1,
       ST_TOMB = 2 };

typedef struct node { /* a node of whs */
    net_addr addr;
    char name[NET_ADDRSTRLEN];
    bool live; /* active in whs, and so connected */
    tool_conn t;
    bool connected;
    /* the walk of the current step */
    bool asked, done, incomplete;
    uint64_t job, walked, total;
    /* its digests, per vnode; vsum, with the values' hashes, when values
     * (an older server sends none) */
    uint64_t *count, *sum, *vsum;
    bool values;
} node;

typedef struct entry { /* a record listed by SRV_RANGE_KEYS */
    uint8_t *key;
    size_t klen;
    uint32_t node;
    bool tomb, has_vh;
    uint64_t ct, vh; /* vh: the value's hash (digest_value), when has_vh */
} entry;

typedef struct item { /* a divergent range, or a piece of one */
    uint32_t range;
    uint64_t lo, hi; /* (lo, hi], wrapping when lo >= hi */
    uint64_t weight; /* records its fullest owner holds (digest count) */
} item;

typedef struct copy { /* what one live owner holds of a key */
    uint32_t node;
    uint8_t state;
    uint64_t ct;
    uint64_t h;  /* a hash of the fetched bytes (0 until fetched) */
    bool has_vh; /* vh: the value's hash its listing gave */
    uint64_t vh;
} copy;

typedef struct dkey { /* a divergent key */
    uint8_t *key;
    size_t klen;
    size_t n;
    bool conflict; /* copies of its newest ClockTime differ in their bytes */
    copy c[KUMO_REPLICAS];
} dkey;

typedef struct run {
    hashspace *whs;
    node *nodes; /* whs order */
    size_t nnodes;
    bool repair;
    uint64_t start_ct; /* the earliest digest walk's start */
    double t0, shown;
    size_t compared, divergent_ranges, settled, changed, pushed, push_failed;
    dkey *dk;
    size_t ndk, capdk;
    entry *ent; /* the current batch's listings */
    size_t nent, capent;
    msgpack_sbuffer sb; /* the params of the next call, packed with pk */
    msgpack_packer pk;
    char err[KUMO_ERRLEN];
} run;

static void pause_for(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static bool grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return true;
    size_t ncap = *cap ? *cap * 2 : 64;
    while (ncap < need) ncap *= 2;
    void *np = realloc(*p, ncap * size);
    if (!np) return false;
    *p = np;
    *cap = ncap;
    return true;
}

static bool is_uint(const msgpack_object *o) { return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER; }

static bool is_array(const msgpack_object *o, uint32_t n)
{
    return o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == n;
}

static bool is_bytes(const msgpack_object *o) { return o->type == MSGPACK_OBJECT_BIN || o->type == MSGPACK_OBJECT_STR; }

static int bad_answer(run *r, const node *n, const char *what)
{
    return kumo_err(r->err, "%s: unexpected answer to %s", n->name, what);
}

/* ---- printing ---- */

/* The memcached key of a dbkey: printable bytes as they are, others as \xNN. */
static void print_key(FILE *out, const uint8_t *dbkey, size_t klen)
{
    for (size_t i = RECORD_KEY_HEADER; i < klen; i++) {
        uint8_t b = dbkey[i];
        if (b > 0x20 && b < 0x7f && b != '\\') fputc(b, out);
        else fprintf(out, "\\x%02x", b);
    }
}

/* A copy as the report shows it; with `conflict`, a value's bytes are told
 * apart by a short hash of them. */
static const char *copy_text(const copy *c, bool conflict, char *buf, size_t len)
{
    if (c->state == ST_MISSING) return "missing";
    snprintf(buf, len, "%s %u.%u", c->state == ST_TOMB ? "tombstone" : "value", clock_seconds(c->ct),
             clock_counter(c->ct));
    if (conflict) snprintf(buf + strlen(buf), len - strlen(buf), " bytes#%08x", (unsigned)(c->h >> 32));
    return buf;
}

/* FNV-1a 64 of a fetched record, to tell copies apart. */
static uint64_t bytes_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h | 1; /* never 0, "not fetched" */
}

/* On stderr, every PROGRESS_EVERY s of a run longer than PROGRESS_AFTER:
 * records walked of the total, the rate since the walk began (at `since`)
 * and the ETA at that rate. */
static void progress(run *r, const char *what, uint64_t walked, uint64_t total, double since)
{
    double now = clock_mono();
    if (now - r->t0 < PROGRESS_AFTER || now - r->shown < PROGRESS_EVERY) return;
    r->shown = now;
    double rate = now > since ? (double)walked / (now - since) : 0;
    char eta[32] = "ETA unknown";
    if (rate > 0) snprintf(eta, sizeof(eta), "ETA %.0f s", (double)(total > walked ? total - walked : 0) / rate);
    fprintf(stderr, "kumoctl: %s: %llu of %llu records walked (%.0f%%), %.0f records/s, %s, %.0f s\n", what,
            (unsigned long long)walked, (unsigned long long)total,
            total ? 100.0 * (double)walked / (double)total : 100.0, rate, eta, now - r->t0);
}

/* ---- walks on every server at once ---- */

typedef int (*result_fn)(run *r, node *n, const msgpack_object *result);

/* An answer [job, walked, total, result | nil]; result_fn takes a result. */
static int take_job(run *r, node *n, const msgpack_object *o, result_fn fn)
{
    if (!is_array(o, 4) || !is_uint(&o->via.array.ptr[0]) || !is_uint(&o->via.array.ptr[1]) ||
        !is_uint(&o->via.array.ptr[2]))
        return bad_answer(r, n, "a walk");
    n->job = o->via.array.ptr[0].via.u64;
    n->walked = o->via.array.ptr[1].via.u64;
    n->total = o->via.array.ptr[2].via.u64;
    if (o->via.array.ptr[3].type == MSGPACK_OBJECT_NIL) return 0;
    n->done = true;
    return fn(r, n, &o->via.array.ptr[3]);
}

/* Call method on n with the params packed in r->pk. */
static int call(run *r, node *n, uint32_t method, msgpack_unpacked *res)
{
    int rc = tool_call(&n->t, method, &r->sb, res, r->err);
    msgpack_sbuffer_clear(&r->sb);
    return rc;
}

/* Start a walk on n with the params packed in r->pk. */
static int start_walk(run *r, node *n, uint32_t method, result_fn fn)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    n->asked = true;
    n->done = n->incomplete = false;
    n->walked = n->total = 0;
    int rc = call(r, n, method, &res);
    if (rc == 0) rc = take_job(r, n, &res.data, fn);
    msgpack_unpacked_destroy(&res);
    return rc;
}

/* Poll every node asked until each walk is over. */
static int wait_walks(run *r, uint32_t method, const char *what, result_fn fn)
{
    double pause = POLL_FIRST, since = clock_mono();
    for (;;) {
        bool all = true;
        uint64_t walked = 0, total = 0;
        for (size_t i = 0; i < r->nnodes; i++) {
            node *n = &r->nodes[i];
            if (!n->asked || n->done) continue;
            msgpack_unpacked res;
            msgpack_unpacked_init(&res);
            msgpack_pack_array(&r->pk, 2); /* values 1: a digest with the values' (ignored by older servers) */
            msgpack_pack_uint64(&r->pk, n->job);
            msgpack_pack_uint8(&r->pk, 1);
            int rc = call(r, n, method, &res);
            if (rc == 0) rc = take_job(r, n, &res.data, fn);
            msgpack_unpacked_destroy(&res);
            if (rc < 0) return -1;
            all = all && n->done;
        }
        for (size_t i = 0; i < r->nnodes; i++) {
            walked += r->nodes[i].asked ? r->nodes[i].walked : 0;
            total += r->nodes[i].asked ? r->nodes[i].total : 0;
        }
        progress(r, what, walked, total, since);
        if (all) break;
        pause_for(pause);
        pause = pause * 2 < POLL_MAX ? pause * 2 : POLL_MAX;
    }
    for (size_t i = 0; i < r->nnodes; i++) r->nodes[i].asked = false;
    return 0;
}

/* ---- step 2: digests ---- */

static int take_digest(run *r, node *n, const msgpack_object *o)
{
    const ring *rg = &r->whs->ring;
    if (!is_array(o, 4) || !is_uint(&o->via.array.ptr[0]) || !is_uint(&o->via.array.ptr[1]) ||
        !is_uint(&o->via.array.ptr[2]) || o->via.array.ptr[3].type != MSGPACK_OBJECT_ARRAY)
        return bad_answer(r, n, "SRV_DIGEST");
    uint64_t ct = o->via.array.ptr[0].via.u64, start = o->via.array.ptr[1].via.u64;
    if (ct != r->whs->clocktime || o->via.array.ptr[2].via.u64 != rg->nvnodes)
        return kumo_err(r->err,
                        "%s used the hash space of %u.%u, the manager's is of %u.%u: run it again once the servers "
                        "have the manager's",
                        n->name, clock_seconds(ct), clock_counter(ct), clock_seconds(r->whs->clocktime),
                        clock_counter(r->whs->clocktime));
    if (!r->start_ct || start < r->start_ct) r->start_ct = start;
    const msgpack_object_array *a = &o->via.array.ptr[3].via.array;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *e = &a->ptr[i];
        bool values = is_array(e, 4) && is_uint(&e->via.array.ptr[3]);
        if ((!is_array(e, 3) && !values) || !is_uint(&e->via.array.ptr[0]) || !is_uint(&e->via.array.ptr[1]) ||
            !is_uint(&e->via.array.ptr[2]) || e->via.array.ptr[0].via.u64 >= rg->nvnodes)
            return bad_answer(r, n, "SRV_DIGEST");
        n->count[e->via.array.ptr[0].via.u64] = e->via.array.ptr[1].via.u64;
        n->sum[e->via.array.ptr[0].via.u64] = e->via.array.ptr[2].via.u64;
        if (values) n->vsum[e->via.array.ptr[0].via.u64] = e->via.array.ptr[3].via.u64;
        n->values = n->values || values;
    }
    return 0;
}

static int digests(run *r)
{
    int rc = 0;
    for (size_t i = 0; i < r->nnodes && rc == 0; i++) {
        node *n = &r->nodes[i];
        if (!n->live) continue;
        n->count = calloc(r->whs->ring.nvnodes, sizeof(*n->count));
        n->sum = calloc(r->whs->ring.nvnodes, sizeof(*n->sum));
        n->vsum = calloc(r->whs->ring.nvnodes, sizeof(*n->vsum));
        if (!n->count || !n->sum || !n->vsum) {
            rc = kumo_err(r->err, "out of memory");
            break;
        }
        msgpack_pack_array(&r->pk, 2);
        msgpack_pack_uint64(&r->pk, 0);
        msgpack_pack_uint8(&r->pk, 1);
        rc = start_walk(r, n, SRV_DIGEST, take_digest);
    }
    return rc < 0 ? -1 : wait_walks(r, SRV_DIGEST, "digests", take_digest);
}

/* ---- step 3: the ranges whose owners' digests differ ---- */

static int compare_ranges(run *r, item **out, size_t *nout)
{
    const ring *rg = &r->whs->ring;
    size_t cap = 0;
    *out = NULL;
    *nout = 0;
    for (size_t i = 0; i < rg->nvnodes; i++) {
        if (i > 0 && rg->vnodes[i].hash == rg->vnodes[i - 1].hash) continue; /* a tie: an empty range */
        uint32_t own[KUMO_REPLICAS];
        size_t n = hashspace_live_owners(r->whs, rg->vnodes[i].hash, own);
        if (n < 2) continue;
        r->compared++;
        bool same = true;
        uint64_t weight = 0;
        for (size_t k = 0; k < n; k++) {
            const node *a = &r->nodes[own[k]], *b = &r->nodes[own[0]];
            same = same && a->count[i] == b->count[i] && a->sum[i] == b->sum[i] &&
                   (!a->values || !b->values || a->vsum[i] == b->vsum[i]);
            if (a->count[i] > weight) weight = a->count[i];
        }
        if (same) continue;
        r->divergent_ranges++;
        if (!grow((void **)out, &cap, *nout + 1, sizeof(**out))) return kumo_err(r->err, "out of memory");
        (*out)[(*nout)++] = (item){.range = (uint32_t)i,
                                   .lo = rg->vnodes[(i + rg->nvnodes - 1) % rg->nvnodes].hash,
                                   .hi = rg->vnodes[i].hash,
                                   .weight = weight};
    }
    return 0;
}

/* ---- step 5: fetch, judge, repair ---- */

typedef struct cand { /* a candidate key during its fetch */
    uint8_t *key;
    size_t klen;
    size_t n;
    copy c[KUMO_REPLICAS];
    uint8_t *rec[KUMO_REPLICAS]; /* each copy fetched, owned (NULL: missing) */
    size_t rlen[KUMO_REPLICAS];
    const uint8_t *best; /* the record to repair with: one of rec */
    size_t blen;
    bool conflict, majority; /* copies of the newest ClockTime differ; one of them has a majority */
} cand;

static int fetch_from(run *r, node *n, uint32_t ni, cand *cs, size_t ncs)
{
    msgpack_unpacked res;
    size_t idx[SRV_FETCH_MAX], m = 0;
    for (size_t i = 0; i < ncs; i++)
        for (size_t k = 0; k < cs[i].n; k++)
            if (cs[i].c[k].node == ni) idx[m++] = i;
    if (m == 0) return 0;
    msgpack_unpacked_init(&res);
    msgpack_pack_array(&r->pk, 1);
    msgpack_pack_array(&r->pk, (uint32_t)m);
    for (size_t i = 0; i < m; i++) msgpack_pack_bin_with_body(&r->pk, cs[idx[i]].key, cs[idx[i]].klen);
    int rc = call(r, n, SRV_FETCH, &res);
    if (rc == 0 && (res.data.type != MSGPACK_OBJECT_ARRAY || res.data.via.array.size != m))
        rc = bad_answer(r, n, "SRV_FETCH");
    for (size_t i = 0; rc == 0 && i < m; i++) {
        cand *c = &cs[idx[i]];
        const msgpack_object *v = &res.data.via.array.ptr[i];
        copy *cp = NULL;
        for (size_t k = 0; k < c->n; k++)
            if (c->c[k].node == ni) cp = &c->c[k];
        if (v->type == MSGPACK_OBJECT_NIL) {
            cp->state = ST_MISSING;
            continue;
        }
        if (!is_bytes(v) || v->via.bin.size < RECORD_TOMBSTONE) {
            rc = bad_answer(r, n, "SRV_FETCH");
            break;
        }
        cp->state = v->via.bin.size == RECORD_TOMBSTONE ? ST_TOMB : ST_VALUE;
        cp->ct = record_clocktime(v->via.bin.ptr, v->via.bin.size);
        cp->h = bytes_hash((const uint8_t *)v->via.bin.ptr, v->via.bin.size);
        size_t at = (size_t)(cp - c->c);
        if (!(c->rec[at] = malloc(v->via.bin.size))) {
            rc = kumo_err(r->err, "out of memory");
            break;
        }
        memcpy(c->rec[at], v->via.bin.ptr, v->via.bin.size);
        c->rlen[at] = v->via.bin.size;
    }
    msgpack_unpacked_destroy(&res);
    return rc;
}

/* The record to repair c with: the newest copy; when copies of the newest
 * ClockTime differ in their bytes (one write, changed on some disk since),
 * the bytes a majority of the key's live owners hold, or none. */
static void choose_best(cand *c)
{
    uint64_t newest = 0;
    size_t votes = 0, win = 0;
    for (size_t k = 0; k < c->n; k++)
        if (c->rec[k] && c->c[k].ct > newest) newest = c->c[k].ct;
    for (size_t k = 0; k < c->n; k++) {
        size_t same = 0;
        if (!c->rec[k] || c->c[k].ct != newest) continue;
        for (size_t i = 0; i < c->n; i++) {
            same += c->rec[i] && c->c[i].h == c->c[k].h;
            c->conflict = c->conflict || (c->rec[i] && c->c[i].ct == newest && c->c[i].h != c->c[k].h);
        }
        if (same > votes) {
            votes = same;
            win = k;
        }
    }
    c->majority = votes * 2 > c->n;
    if (votes && (!c->conflict || c->majority)) {
        c->best = c->rec[win];
        c->blen = c->rlen[win];
    }
}

/* SRV_REPLICATE [flags, dbkey, record] to every owner of c with less (or,
 * after a conflict, other bytes: WF_MEND). */
static int push(run *r, cand *c)
{
    uint64_t ct = record_clocktime(c->best, c->blen), h = bytes_hash(c->best, c->blen);
    bool any = false;
    for (size_t k = 0; k < c->n; k++) {
        if (c->c[k].state != ST_MISSING && (c->c[k].ct > ct || (c->c[k].ct == ct && (!c->conflict || c->c[k].h == h))))
            continue;
        node *n = &r->nodes[c->c[k].node];
        msgpack_unpacked res;
        msgpack_unpacked_init(&res);
        msgpack_pack_array(&r->pk, 3);
        msgpack_pack_uint8(&r->pk, c->conflict ? WF_MEND : 0);
        msgpack_pack_bin_with_body(&r->pk, c->key, c->klen);
        msgpack_pack_bin_with_body(&r->pk, c->best, c->blen);
        if (call(r, n, SRV_REPLICATE, &res) < 0) {
            r->push_failed++;
            fprintf(stderr, "kumoctl: repair: %s\n", r->err);
        } else {
            r->pushed++;
            if (!any) {
                printf("repaired ");
                print_key(stdout, c->key, c->klen);
                printf(": %s %u.%u%s to", c->blen == RECORD_TOMBSTONE ? "tombstone" : "value", clock_seconds(ct),
                       clock_counter(ct), c->conflict ? " (the bytes of the owners' majority)" : "");
            }
            printf(" %s", n->name);
            any = true;
        }
        msgpack_unpacked_destroy(&res);
    }
    if (any) printf("\n");
    return 0;
}

static int judge(run *r, cand *c)
{
    bool same = true;
    uint64_t newest = 0;
    for (size_t k = 0; k < c->n; k++) {
        same = same && c->c[k].state == c->c[0].state && c->c[k].ct == c->c[0].ct && c->c[k].h == c->c[0].h;
        if (c->c[k].state != ST_MISSING && c->c[k].ct > newest) newest = c->c[k].ct;
    }
    if (same) {
        r->settled++;
        return 0;
    }
    if (newest > r->start_ct) {
        r->changed++;
        return 0;
    }
    if (!grow((void **)&r->dk, &r->capdk, r->ndk + 1, sizeof(*r->dk))) return kumo_err(r->err, "out of memory");
    dkey *d = &r->dk[r->ndk++];
    d->key = malloc(c->klen);
    if (!d->key) return kumo_err(r->err, "out of memory");
    memcpy(d->key, c->key, c->klen);
    d->klen = c->klen;
    d->n = c->n;
    memcpy(d->c, c->c, sizeof(d->c));
    choose_best(c);
    d->conflict = c->conflict;
    if (c->conflict && !c->majority) {
        printf("no majority for ");
        print_key(stdout, c->key, c->klen);
        printf(": its %zu owners hold other bytes for one write; not repaired\n", c->n);
    }
    return r->repair && c->best ? push(r, c) : 0;
}

/* Fetch candidates (at most SRV_FETCH_MAX) from their live owners, judge. */
static int fetch_judge(run *r, cand *cs, size_t ncs)
{
    int rc = 0;
    for (uint32_t i = 0; i < r->nnodes && rc == 0; i++)
        if (r->nodes[i].live) rc = fetch_from(r, &r->nodes[i], i, cs, ncs);
    for (size_t i = 0; i < ncs && rc == 0; i++) rc = judge(r, &cs[i]);
    for (size_t i = 0; i < ncs; i++)
        for (size_t k = 0; k < KUMO_REPLICAS; k++) {
            free(cs[i].rec[k]);
            cs[i].rec[k] = NULL;
        }
    return rc;
}

/* ---- step 4: the keys of divergent ranges ---- */

static int take_keys(run *r, node *n, const msgpack_object *o)
{
    if (!is_array(o, 3) || o->via.array.ptr[0].type != MSGPACK_OBJECT_BOOLEAN ||
        o->via.array.ptr[2].type != MSGPACK_OBJECT_ARRAY)
        return bad_answer(r, n, "SRV_RANGE_KEYS");
    if (!o->via.array.ptr[0].via.boolean) {
        n->incomplete = true;
        return 0;
    }
    const msgpack_object_array *a = &o->via.array.ptr[2].via.array;
    if (!grow((void **)&r->ent, &r->capent, r->nent + a->size, sizeof(*r->ent))) return kumo_err(r->err, "out of memory");
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *e = &a->ptr[i];
        bool vh = is_array(e, 4) && is_uint(&e->via.array.ptr[3]); /* an older server lists no value hash */
        if ((!is_array(e, 3) && !vh) || !is_bytes(&e->via.array.ptr[0]) ||
            e->via.array.ptr[0].via.bin.size <= RECORD_KEY_HEADER || !is_uint(&e->via.array.ptr[1]) ||
            e->via.array.ptr[2].type != MSGPACK_OBJECT_BOOLEAN)
            return bad_answer(r, n, "SRV_RANGE_KEYS");
        entry *x = &r->ent[r->nent];
        x->klen = e->via.array.ptr[0].via.bin.size;
        x->key = malloc(x->klen);
        if (!x->key) return kumo_err(r->err, "out of memory");
        memcpy(x->key, e->via.array.ptr[0].via.bin.ptr, x->klen);
        x->node = (uint32_t)(n - r->nodes);
        x->ct = e->via.array.ptr[1].via.u64;
        x->tomb = e->via.array.ptr[2].via.boolean;
        x->has_vh = vh;
        x->vh = vh ? e->via.array.ptr[3].via.u64 : 0;
        r->nent++;
    }
    return 0;
}

static int entry_cmp(const void *pa, const void *pb)
{
    const entry *a = pa, *b = pb;
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(a->key, b->key, n);
    if (c) return c;
    if (a->klen != b->klen) return a->klen < b->klen ? -1 : 1;
    return a->node < b->node ? -1 : a->node > b->node;
}

static void free_entries(run *r)
{
    for (size_t i = 0; i < r->nent; i++) free(r->ent[i].key);
    r->nent = 0;
}

/* The batch's listings, grouped by key: those whose live owners disagree
 * are fetched and judged, SRV_FETCH_MAX at a time. */
static int judge_entries(run *r)
{
    cand cs[SRV_FETCH_MAX];
    size_t ncs = 0;
    int rc = 0;
    if (r->nent) qsort(r->ent, r->nent, sizeof(*r->ent), entry_cmp);
    for (size_t i = 0; i < r->nent && rc == 0;) {
        size_t j = i + 1;
        while (j < r->nent && r->ent[j].klen == r->ent[i].klen && memcmp(r->ent[j].key, r->ent[i].key, r->ent[i].klen) == 0)
            j++;
        uint32_t own[KUMO_REPLICAS];
        cand c = {.key = r->ent[i].key, .klen = r->ent[i].klen};
        c.n = hashspace_live_owners(r->whs, record_key_hash(c.key, c.klen), own);
        bool agree = true;
        for (size_t k = 0; k < c.n; k++) {
            c.c[k] = (copy){.node = own[k], .state = ST_MISSING};
            for (size_t e = i; e < j; e++) { /* a walk may list a rewritten record twice: the newest counts */
                if (r->ent[e].node != own[k] || (c.c[k].state != ST_MISSING && r->ent[e].ct <= c.c[k].ct)) continue;
                c.c[k].state = r->ent[e].tomb ? ST_TOMB : ST_VALUE;
                c.c[k].ct = r->ent[e].ct;
                c.c[k].has_vh = r->ent[e].has_vh;
                c.c[k].vh = r->ent[e].vh;
            }
            agree = agree && c.c[k].state != ST_MISSING && c.c[k].ct == c.c[0].ct &&
                    (!c.c[k].has_vh || !c.c[0].has_vh || c.c[k].vh == c.c[0].vh);
        }
        i = j;
        if (agree || c.n < 2) continue;
        cs[ncs++] = c;
        if (ncs == SRV_FETCH_MAX) {
            rc = fetch_judge(r, cs, ncs);
            ncs = 0;
        }
    }
    if (rc == 0 && ncs > 0) rc = fetch_judge(r, cs, ncs);
    free_entries(r);
    return rc;
}

/* List a batch of items on their live owners. 0 done, 1 some server could
 * not list its part in one answer, -1 + r->err. */
static int keys_batch(run *r, const item *items, size_t n)
{
    int rc = 0;
    for (uint32_t x = 0; x < r->nnodes && rc == 0; x++) {
        if (!r->nodes[x].live) continue;
        uint32_t mine = 0;
        bool *owns = calloc(n ? n : 1, sizeof(*owns));
        if (!owns) {
            rc = kumo_err(r->err, "out of memory");
            break;
        }
        for (size_t i = 0; i < n; i++) {
            uint32_t own[KUMO_REPLICAS];
            size_t no = hashspace_live_owners(r->whs, r->whs->ring.vnodes[items[i].range].hash, own);
            for (size_t k = 0; k < no; k++) owns[i] = owns[i] || own[k] == x;
            mine += owns[i];
        }
        if (mine > 0) {
            msgpack_pack_array(&r->pk, 3);
            msgpack_pack_uint8(&r->pk, 0);
            msgpack_pack_array(&r->pk, mine);
            for (size_t i = 0; i < n; i++) {
                if (!owns[i]) continue;
                msgpack_pack_array(&r->pk, 2);
                msgpack_pack_uint64(&r->pk, items[i].lo);
                msgpack_pack_uint64(&r->pk, items[i].hi);
            }
            msgpack_pack_uint8(&r->pk, 1); /* values: each entry with its value's hash */
            rc = start_walk(r, &r->nodes[x], SRV_RANGE_KEYS, take_keys);
        }
        free(owns);
    }
    if (rc == 0) rc = wait_walks(r, SRV_RANGE_KEYS, "range keys", take_keys);
    bool incomplete = false;
    for (size_t x = 0; x < r->nnodes; x++) incomplete = incomplete || r->nodes[x].incomplete;
    if (rc < 0 || incomplete) {
        free_entries(r);
        return rc < 0 ? -1 : 1;
    }
    return judge_entries(r);
}

/* Steps 4 and 5 over items, in batches planned from the digest counts. */
static int check_items(run *r, const item *items, size_t n)
{
    typedef struct batch {
        item *it;
        size_t n;
    } batch;
    batch *stack = NULL;
    size_t nstack = 0, cap = 0;
    int rc = 0;
    /* Planned from the end, so the stack runs the ranges in order. */
    for (size_t end = n; end > 0;) {
        size_t start = end - 1;
        uint64_t w = items[start].weight;
        while (start > 0 && end - start < SRV_RANGE_KEYS_MAX_SPANS / 2 && w + items[start - 1].weight <= BATCH_RECORDS)
            w += items[--start].weight;
        if (!grow((void **)&stack, &cap, nstack + 1, sizeof(*stack)) ||
            !(stack[nstack].it = malloc((end - start) * sizeof(item)))) {
            rc = kumo_err(r->err, "out of memory");
            break;
        }
        memcpy(stack[nstack].it, items + start, (end - start) * sizeof(item));
        stack[nstack++].n = end - start;
        end = start;
    }
    while (rc == 0 && nstack > 0) {
        batch b = stack[--nstack];
        rc = keys_batch(r, b.it, b.n);
        if (rc == 1) { /* too much for one answer: halve it */
            batch h[2];
            if (b.n > 1) {
                h[0] = (batch){b.it, b.n / 2};
                h[1] = (batch){NULL, b.n - b.n / 2};
                h[1].it = malloc(h[1].n * sizeof(item));
                if (h[1].it) memcpy(h[1].it, b.it + h[0].n, h[1].n * sizeof(item));
            } else {
                uint64_t width = b.it[0].hi - b.it[0].lo; /* mod 2^64: also for the range that wraps */
                if (width < 2) {
                    rc = kumo_err(r->err, "range %u: too many records with one hash", b.it[0].range);
                    free(b.it);
                    break;
                }
                uint64_t mid = b.it[0].lo + width / 2;
                h[0] = (batch){b.it, 1};
                h[1] = (batch){malloc(sizeof(item)), 1};
                if (h[1].it) *h[1].it = (item){b.it[0].range, mid, b.it[0].hi, b.it[0].weight / 2};
                b.it[0].hi = mid;
                b.it[0].weight /= 2;
            }
            if (!h[1].it || !grow((void **)&stack, &cap, nstack + 2, sizeof(*stack))) {
                free(b.it);
                free(h[1].it);
                rc = kumo_err(r->err, "out of memory");
                break;
            }
            stack[nstack++] = h[1];
            stack[nstack++] = h[0];
            rc = 0;
            continue;
        }
        free(b.it);
    }
    while (nstack > 0) free(stack[--nstack].it);
    free(stack);
    return rc;
}

/* ---- the report ---- */

typedef struct pair_row {
    uint32_t a, b; /* node indexes, a < b */
    size_t k;      /* into r->dk */
} pair_row;

static const run *sort_run; /* qsort has no argument; single-threaded tool */

static int row_cmp(const void *pa, const void *pb)
{
    const pair_row *x = pa, *y = pb;
    if (x->a != y->a) return x->a < y->a ? -1 : 1;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    const dkey *p = &sort_run->dk[x->k], *q = &sort_run->dk[y->k];
    size_t n = p->klen < q->klen ? p->klen : q->klen;
    int c = memcmp(p->key + RECORD_KEY_HEADER, q->key + RECORD_KEY_HEADER, n - RECORD_KEY_HEADER);
    return c ? c : (p->klen > q->klen) - (p->klen < q->klen);
}

/* Per server pair, the keys on which the two differ. */
static int report(run *r)
{
    pair_row *rows = NULL;
    size_t nrows = 0, cap = 0;
    char b1[64], b2[64];
    for (size_t k = 0; k < r->ndk; k++) {
        const dkey *d = &r->dk[k];
        for (size_t i = 0; i < d->n; i++)
            for (size_t j = i + 1; j < d->n; j++) {
                if (d->c[i].state == d->c[j].state && d->c[i].ct == d->c[j].ct && d->c[i].h == d->c[j].h) continue;
                if (!grow((void **)&rows, &cap, nrows + 1, sizeof(*rows))) {
                    free(rows);
                    return kumo_err(r->err, "out of memory");
                }
                bool swap = d->c[i].node > d->c[j].node;
                rows[nrows++] = (pair_row){swap ? d->c[j].node : d->c[i].node, swap ? d->c[i].node : d->c[j].node, k};
            }
    }
    sort_run = r;
    if (nrows) qsort(rows, nrows, sizeof(*rows), row_cmp);
    for (size_t i = 0; i < nrows;) {
        size_t j = i;
        while (j < nrows && rows[j].a == rows[i].a && rows[j].b == rows[i].b) j++;
        printf("%s %s: %zu keys differ\n", r->nodes[rows[i].a].name, r->nodes[rows[i].b].name, j - i);
        for (; i < j; i++) {
            const dkey *d = &r->dk[rows[i].k];
            const copy *ca = NULL, *cb = NULL;
            for (size_t c = 0; c < d->n; c++) {
                if (d->c[c].node == rows[i].a) ca = &d->c[c];
                if (d->c[c].node == rows[i].b) cb = &d->c[c];
            }
            printf("  ");
            print_key(stdout, d->key, d->klen);
            printf("  %s | %s\n", copy_text(ca, d->conflict, b1, sizeof(b1)), copy_text(cb, d->conflict, b2, sizeof(b2)));
        }
    }
    free(rows);
    return 0;
}

static void summary(const run *r, bool again)
{
    if (again) printf("re-verify: %zu ranges listed again, %zu keys divergent", r->divergent_ranges, r->ndk);
    else
        printf("verify: %zu ranges compared, %zu ranges divergent, %zu keys divergent", r->compared,
               r->divergent_ranges, r->ndk);
    if (r->changed) printf(", %zu keys written during the run not judged", r->changed);
    printf("\n");
}

static void forget_keys(run *r)
{
    for (size_t i = 0; i < r->ndk; i++) free(r->dk[i].key);
    r->ndk = 0;
}

/* ---- the run ---- */

static int connect_nodes(run *r, const char *manager)
{
    tool_conn mt;
    hashspace *rhs = NULL;
    if (tool_connect(&mt, manager, KUMO_CONTROL_PORT, TOOL_TIMEOUT, r->err) < 0) return -1;
    r->whs = tool_manager_hs(&mt, false, r->err);
    if (r->whs) rhs = tool_manager_hs(&mt, true, r->err);
    tool_close(&mt);
    if (!r->whs || !rhs) return -1;
    bool moving = rhs->clocktime != r->whs->clocktime;
    hashspace_unref(rhs);
    if (moving) return kumo_err(r->err, "a replace is under way (whs and rhs differ): run it again when it has finished");
    r->nnodes = r->whs->ring.nnodes;
    r->nodes = calloc(r->nnodes ? r->nnodes : 1, sizeof(*r->nodes));
    if (!r->nodes) return kumo_err(r->err, "out of memory");
    for (size_t i = 0; i < r->nnodes; i++) {
        node *n = &r->nodes[i];
        n->addr = r->whs->ring.nodes[i].addr;
        net_format(&n->addr, n->name, sizeof(n->name));
        n->live = r->whs->ring.nodes[i].active;
        if (n->live && tool_connect_addr(&n->t, &n->addr, RPC_ROLE_SERVER, TOOL_TIMEOUT, r->err) < 0) return -1;
        n->connected = n->live;
        if (n->live && r->whs->ring.nodes[i].catchup)
            printf("note: %s is catching up: it may lack records until the manager says it is active\n", n->name);
    }
    return 0;
}

static void run_free(run *r)
{
    for (size_t i = 0; i < r->nnodes; i++) {
        if (r->nodes[i].connected) tool_close(&r->nodes[i].t);
        free(r->nodes[i].count);
        free(r->nodes[i].sum);
        free(r->nodes[i].vsum);
    }
    free(r->nodes);
    forget_keys(r);
    free(r->dk);
    free_entries(r);
    free(r->ent);
    msgpack_sbuffer_destroy(&r->sb);
    hashspace_unref(r->whs);
}

int verify_run(const char *manager, bool repair)
{
    run r;
    item *items = NULL;
    size_t nitems = 0;
    int rc = VERIFY_EX_FAILED;
    memset(&r, 0, sizeof(r));
    r.repair = repair;
    r.t0 = clock_mono();
    msgpack_sbuffer_init(&r.sb);
    msgpack_packer_init(&r.pk, &r.sb, msgpack_sbuffer_write);
    if (connect_nodes(&r, manager) < 0 || digests(&r) < 0 || compare_ranges(&r, &items, &nitems) < 0 ||
        check_items(&r, items, nitems) < 0 || report(&r) < 0)
        goto out;
    summary(&r, false);
    rc = r.ndk ? VERIFY_EX_DIVERGENT : VERIFY_EX_AGREE;
    if (repair && r.ndk) {
        printf("repair: %zu records pushed, %zu failed\n", r.pushed, r.push_failed);
        forget_keys(&r);
        r.repair = false;
        r.changed = r.settled = 0;
        if (check_items(&r, items, nitems) < 0 || report(&r) < 0) {
            rc = VERIFY_EX_FAILED;
            goto out;
        }
        summary(&r, true);
        rc = r.ndk ? VERIFY_EX_DIVERGENT : VERIFY_EX_AGREE;
    }
    if (clock_mono() - r.t0 >= PROGRESS_AFTER)
        fprintf(stderr, "kumoctl: %s took %.1f s\n", repair ? "repair" : "verify", clock_mono() - r.t0);
out:
    if (rc == VERIFY_EX_FAILED) fprintf(stderr, "kumoctl: %s: %s\n", repair ? "repair" : "verify", r.err);
    fflush(stdout);
    free(items);
    run_free(&r);
    return rc;
}
