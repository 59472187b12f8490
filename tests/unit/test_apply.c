/*
 * test_apply — what each write does to a stored record (src/server/apply.c),
 * without a database: the old record and the request in, the verdict, the
 * memcached result code and the bytes written out.
 */
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "proto.h"
#include "record.h"
#include "tap.h"

#define NOW 1000000000u
#define CT(sec, n) (((uint64_t)(sec) << 32) | (n))

/* A stored memcached value: ClockTime ct, flags, absolute exptime, payload. */
static uint8_t *rec(uint64_t ct, uint32_t flags, uint32_t exptime, const char *payload, size_t *len)
{
    size_t n = strlen(payload);
    uint8_t *v = malloc(record_mc_size(n));
    record_mc_header(v, ct, flags, exptime);
    memcpy(v + record_mc_size(0), payload, n);
    *len = record_mc_size(n);
    return v;
}

typedef struct result {
    store_verdict verdict;
    write_ctx w;
    record_value out; /* parsed w.out when something was written */
    bool has_out;
} result;

/* Run apply_set with op on old (NULL: missing) and an incoming value. */
static result set(int op, const uint8_t *old, size_t oldlen, uint32_t flags, uint32_t exptime, const char *payload,
                  uint64_t cas, uint32_t wflags, uint64_t delta, uint64_t initial, uint64_t floor)
{
    result r;
    size_t vlen;
    uint8_t *val = rec(CT(NOW, 7), flags, exptime, payload, &vlen);
    memset(&r, 0, sizeof(r));
    r.w = (write_ctx){.op = op, .wflags = wflags, .cas = cas, .delta = delta, .initial = initial, .ct = CT(NOW, 7), .floor = floor, .now = NOW, .exp_now = NOW, .val = val, .vlen = vlen};
    const void *out = NULL;
    size_t outlen = 0;
    r.verdict = apply_set(&r.w, old, oldlen, &out, &outlen);
    if (r.verdict == STORE_WRITE) {
        static uint8_t keep[4096];
        memcpy(keep, out, outlen < sizeof(keep) ? outlen : sizeof(keep));
        r.has_out = record_value_parse(keep, outlen, &r.out) == 0;
    }
    free(r.w.buf);
    r.w.buf = NULL;
    free(val);
    return r;
}

static int payload_is(const record_value *v, const char *want)
{
    return v->payload_len == strlen(want) && memcmp(v->payload, want, v->payload_len) == 0;
}

int main(void)
{
    size_t n;
    uint8_t *live = rec(CT(NOW - 10, 1), 5, 0, "41", &n);
    size_t expn;
    uint8_t *expired = rec(CT(NOW - 10, 1), 5, NOW - 1, "old", &expn);
    uint8_t tomb[RECORD_TOMBSTONE];
    record_tombstone(tomb, CT(NOW - 5, 0));
    result r;

    r = set(OP_SET, NULL, 0, 3, 0, "v", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.code == CODE_STORED && r.has_out && payload_is(&r.out, "v") &&
           r.out.flags == 3,
       "set of a missing key writes the value");
    r = set(OP_ADD, live, n, 0, 0, "x", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_STORED, "add of a live key: NOT_STORED, nothing written");
    /* A blind write (store_modify_blind) must decide the same with any record. */
    {
        const int ops[] = {OP_SET, OP_ADD, OP_REPLACE, OP_APPEND, OP_PREPEND, OP_CAS, OP_INCR, OP_TOUCH};
        const uint8_t *olds[] = {live, expired, tomb};
        const size_t oldlens[] = {n, expn, RECORD_TOMBSTONE};
        int blind = 0, same = 0;
        for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
            for (uint64_t cas = 0; cas <= CT(NOW - 10, 1); cas += CT(NOW - 10, 1)) {
                result none = set(ops[i], NULL, 0, 3, 0, "v", cas, 0, 0, 0, 0);
                if (!apply_blind(&none.w)) continue;
                blind++;
                bool all = true;
                for (size_t k = 0; k < 3; k++) {
                    result with = set(ops[i], olds[k], oldlens[k], 3, 0, "v", cas, 0, 0, 0, 0);
                    all = all && with.verdict == none.verdict && with.w.code == none.w.code &&
                          with.has_out == none.has_out && (!with.has_out || (payload_is(&with.out, "v") && with.out.flags == none.out.flags));
                }
                same += all;
            }
        }
        ok(blind == 1 && same == blind, "only a plain set is blind, and it decides the same over a live, an expired and a deleted record");
    }
    r = set(OP_ADD, expired, expn, 0, 0, "x", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.code == CODE_STORED, "add over an expired record stores");
    r = set(OP_ADD, tomb, sizeof(tomb), 0, 0, "x", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.code == CODE_STORED, "add over a tombstone stores");
    r = set(OP_ADD, live, n, 0, 0, "x", 0, 0, 0, 0, CT(NOW - 5, 0));
    ok(r.verdict == STORE_WRITE, "add over a record older than a flush floor that has passed stores");
    r = set(OP_ADD, live, n, 0, 0, "x", 0, 0, 0, 0, CT(NOW + 60, 0));
    ok(r.verdict == STORE_KEEP, "... but not while the delayed flush is still to come");
    r = set(OP_REPLACE, NULL, 0, 0, 0, "x", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_STORED, "replace of a missing key: NOT_STORED");
    r = set(OP_REPLACE, live, n, 9, 0, "y", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && payload_is(&r.out, "y") && r.out.flags == 9, "replace of a live key stores");

    r = set(OP_APPEND, live, n, 0, 0, "zz", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && payload_is(&r.out, "41zz") && r.out.flags == 5,
       "append concatenates and keeps the old flags");
    r = set(OP_PREPEND, live, n, 0, 0, "zz", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && payload_is(&r.out, "zz41"), "prepend puts the data first");
    r = set(OP_APPEND, NULL, 0, 0, 0, "zz", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_STORED, "append to a missing key: NOT_STORED");

    r = set(OP_CAS, live, n, 0, 0, "c", CT(NOW - 10, 1), 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.code == CODE_STORED, "cas with the stored ClockTime stores");
    r = set(OP_CAS, live, n, 0, 0, "c", CT(NOW - 10, 2), 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_EXISTS, "cas with another ClockTime: EXISTS");
    r = set(OP_CAS, NULL, 0, 0, 0, "c", 5, 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_FOUND, "cas of a missing key: NOT_FOUND");
    r = set(OP_SET, live, n, 0, 0, "c", CT(NOW - 10, 2), 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_EXISTS, "a set with a cas is conditional too");

    r = set(OP_INCR, live, n, 0, 0, "", 0, 0, 1, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.number == 42 && payload_is(&r.out, "42") && r.out.flags == 5,
       "incr 41 by 1: 42, flags kept");
    r = set(OP_DECR, live, n, 0, 0, "", 0, 0, 100, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.number == 0 && payload_is(&r.out, "0 "),
       "decr below zero stops at 0, padded to the old length as memcached does");
    size_t bn;
    uint8_t *big = rec(CT(NOW - 10, 1), 0, 0, "18446744073709551615", &bn);
    r = set(OP_INCR, big, bn, 0, 0, "", 0, 0, 2, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.number == 1, "incr wraps at 2^64, as memcached");
    free(big);
    r = set(OP_INCR, expired, expn, 0, 0, "", 0, 0, 1, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_FOUND, "incr of an expired key: NOT_FOUND");
    size_t tn;
    uint8_t *text = rec(CT(NOW - 10, 1), 0, 0, "abc", &tn);
    r = set(OP_INCR, text, tn, 0, 0, "", 0, 0, 1, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NON_NUMERIC, "incr of a non-number: NON_NUMERIC");
    free(text);
    r = set(OP_INCR, NULL, 0, 0, 77, "", 0, WF_VIVIFY, 1, 9, 0);
    ok(r.verdict == STORE_WRITE && r.w.number == 9 && payload_is(&r.out, "9") && r.out.exptime == 77,
       "incr of a missing key with vivify creates it with the initial value and the request's exptime");

    r = set(OP_TOUCH, live, n, 0, NOW + 50, "", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.out.exptime == NOW + 50 && payload_is(&r.out, "41") && r.out.flags == 5,
       "touch sets the new exptime, keeps the payload and flags");
    r = set(OP_TOUCH, NULL, 0, 0, NOW + 50, "", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_KEEP && r.w.code == CODE_NOT_FOUND, "touch of a missing key: NOT_FOUND");
    r = set(OP_GAT, live, n, 0, NOW + 50, "", 0, 0, 0, 0, 0);
    ok(r.verdict == STORE_WRITE && r.w.code == CODE_STORED, "gat of a live key stores the new exptime");

    /* delete */
    write_ctx w = {.op = OP_DELETE_INTERNAL, .ct = CT(NOW, 9), .now = NOW, .exp_now = NOW};
    const void *out = NULL;
    size_t outlen = 0;
    store_verdict v = apply_delete(&w, live, n, &out, &outlen);
    ok(v == STORE_WRITE && w.code == CODE_STORED && outlen == RECORD_TOMBSTONE &&
           record_clocktime(out, outlen) == CT(NOW, 9),
       "delete of a live key writes a tombstone with its ClockTime");
    w = (write_ctx){.op = OP_DELETE_INTERNAL, .ct = CT(NOW, 9), .now = NOW, .exp_now = NOW};
    v = apply_delete(&w, NULL, 0, &out, &outlen);
    ok(v == STORE_WRITE && w.code == CODE_NOT_FOUND, "delete of a missing key: NOT_FOUND, a tombstone still written");
    w = (write_ctx){.op = OP_DELETE_INTERNAL, .ct = CT(NOW, 9), .now = NOW, .exp_now = NOW};
    v = apply_delete(&w, tomb, sizeof(tomb), &out, &outlen);
    ok(v == STORE_KEEP && w.resend && w.outlen == RECORD_TOMBSTONE && record_clocktime(w.out, w.outlen) == CT(NOW - 5, 0),
       "delete of a deleted key keeps the old tombstone and sends it to the replicas again");
    w = (write_ctx){.op = OP_DELETE_INTERNAL, .ct = CT(NOW, 9), .now = NOW, .exp_now = NOW, .cas = CT(NOW - 10, 2)};
    v = apply_delete(&w, live, n, &out, &outlen);
    ok(v == STORE_KEEP && w.code == CODE_EXISTS, "delete with a cas that does not match: EXISTS");

    record_value rv;
    ok(apply_live(live, n, NOW, NOW, 0, &rv) && !apply_live(expired, expn, NOW, NOW, 0, &rv) &&
           !apply_live(tomb, sizeof(tomb), NOW, NOW, 0, &rv),
       "apply_live: a value yes, an expired one and a tombstone no");

    /* The debug clock moves exp_now only: exptimes follow it, a flush does not. */
    size_t tn2;
    uint8_t *ttl = rec(CT(NOW - 10, 1), 0, NOW + 50, "t", &tn2);
    ok(apply_live(ttl, tn2, NOW, NOW + 49, 0, &rv) && !apply_live(ttl, tn2, NOW, NOW + 50, 0, &rv),
       "apply_live: an exptime is judged by exp_now");
    ok(apply_live(expired, expn, NOW, NOW - 2, 0, &rv), "apply_live: exp_now moved back revives an expired record");
    ok(apply_live(live, n, NOW, NOW + 100, CT(NOW + 10, 0), &rv), "apply_live: a delayed flush waits for now, not exp_now");
    ok(!apply_live(live, n, NOW + 10, NOW, CT(NOW + 10, 0), &rv), "apply_live: and takes effect by now alone");
    free(ttl);

    free(live);
    free(expired);
    return done_testing();
}
