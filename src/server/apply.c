/*
 * apply — what a write does to a key's stored record (see apply.h).
 */
#include "apply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "proto.h"
#include "xalloc.h"

bool apply_live(const void *old, size_t oldlen, uint32_t now, uint32_t exp_now, uint64_t floor, record_value *v)
{
    if (!old || record_value_parse(old, oldlen, v) < 0 || v->tombstone) return false;
    if (v->clocktime < floor && now >= clock_seconds(floor)) return false;
    return !record_expired(v, exp_now);
}

/* memcached's safe_strtoull: digits, optionally followed by whitespace. */
static bool parse_number(const uint8_t *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    if (n == 0 || p[0] < '0' || p[0] > '9') return false;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    for (; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return false;
    *out = v;
    return true;
}

static store_verdict write_new(write_ctx *w, uint32_t flags, uint32_t exptime, const uint8_t *a, size_t alen,
                               const uint8_t *b, size_t blen, const void **out, size_t *outlen)
{
    w->buf = xmalloc(record_mc_size(alen + blen));
    record_mc_header(w->buf, w->ct, flags, exptime);
    if (alen) memcpy(w->buf + record_mc_size(0), a, alen);
    if (blen) memcpy(w->buf + record_mc_size(alen), b, blen);
    *out = w->out = w->buf;
    *outlen = w->outlen = record_mc_size(alen + blen);
    w->written = true;
    return STORE_WRITE;
}

static store_verdict apply_arith(write_ctx *w, bool exists, const record_value *ov, const record_value *nv,
                                 const void **out, size_t *outlen)
{
    char num[24];
    uint64_t v;
    if (!exists) {
        if (!(w->wflags & WF_VIVIFY)) {
            w->code = CODE_NOT_FOUND;
            return STORE_KEEP;
        }
        w->number = w->initial;
        int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)w->initial);
        return write_new(w, nv->flags, nv->exptime, (const uint8_t *)num, (size_t)n, NULL, 0, out, outlen);
    }
    if (!parse_number(ov->payload, ov->payload_len, &v)) {
        w->code = CODE_NON_NUMERIC;
        return STORE_KEEP;
    }
    if (w->op == OP_INCR) v += w->delta; /* wraps at 2^64, as memcached */
    else v = v > w->delta ? v - w->delta : 0;
    w->number = v;
    size_t n = (size_t)snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    /* memcached rewrites a shorter number in place, padded with spaces. */
    size_t len = n < ov->payload_len ? ov->payload_len : n;
    char padded[64];
    if (len > sizeof(padded)) len = n;
    memcpy(padded, num, n);
    memset(padded + n, ' ', len - n);
    uint32_t exptime = (w->wflags & WF_TOUCH) ? nv->exptime : ov->exptime;
    return write_new(w, ov->flags, exptime, (const uint8_t *)padded, len, NULL, 0, out, outlen);
}

/* OP_MG_WIN and OP_INVALIDATE (proto.h): memcached's stale and win-token
 * item flags, kept in the record's meta bits. */
static store_verdict apply_state(write_ctx *w, bool exists, const record_value *ov, const record_value *nv,
                                 const void **out, size_t *outlen)
{
    store_verdict v;
    if (!exists && w->op == OP_MG_WIN && (w->wflags & WF_VIVIFY)) {
        w->number = 1;
        if ((v = write_new(w, 0, nv->exptime, NULL, 0, NULL, 0, out, outlen)) == STORE_WRITE)
            record_mc_state(w->buf, RECORD_META_WON);
        return v;
    }
    if (!exists) {
        w->code = CODE_NOT_FOUND;
        return STORE_KEEP;
    }
    uint16_t bits = ov->meta;
    if (w->op == OP_INVALIDATE) {
        bits = (uint16_t)((bits | RECORD_META_STALE) & ~RECORD_META_WON);
    } else if (!(bits & RECORD_META_WON) &&
               ((bits & RECORD_META_STALE) || (w->initial && ov->exptime && ov->exptime < w->initial))) {
        bits |= RECORD_META_WON;
    } else {
        /* no token for this reader: it gets the record as it is */
        w->code = CODE_EXISTS;
        w->buf = xmalloc(record_mc_size(ov->payload_len));
        record_mc_header(w->buf, ov->clocktime, ov->flags, ov->exptime);
        record_mc_state(w->buf, bits);
        memcpy(w->buf + record_mc_size(0), ov->payload, ov->payload_len);
        w->out = w->buf;
        w->outlen = record_mc_size(ov->payload_len);
        return STORE_KEEP;
    }
    uint32_t exptime = w->op == OP_INVALIDATE && (w->wflags & WF_TOUCH) ? nv->exptime : ov->exptime;
    if ((v = write_new(w, ov->flags, exptime, ov->payload, ov->payload_len, NULL, 0, out, outlen)) == STORE_WRITE)
        record_mc_state(w->buf, bits);
    return v;
}

store_verdict apply_set(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    write_ctx *w = arg;
    record_value ov, nv;
    bool exists = apply_live(old, oldlen, w->now, w->exp_now, w->floor, &ov);
    record_value_parse(w->val, w->vlen, &nv); /* checked by the caller */
    w->code = CODE_STORED;
    if (w->op == OP_ADD) {
        if (exists) {
            w->code = CODE_NOT_STORED;
            return STORE_KEEP;
        }
    } else if (w->cas != 0 || w->op == OP_CAS) {
        if (!exists) {
            w->code = CODE_NOT_FOUND;
            return STORE_KEEP;
        }
        if (ov.clocktime != w->cas) {
            if ((w->wflags & WF_STALE) && w->cas != 0 && w->cas < ov.clocktime &&
                (w->op == OP_SET || w->op == OP_CAS || w->op == OP_REPLACE)) {
                store_verdict v = write_new(w, nv.flags, ov.exptime, nv.payload, nv.payload_len, NULL, 0, out, outlen);
                if (v == STORE_WRITE) record_mc_state(w->buf, RECORD_META_STALE | (ov.meta & RECORD_META_WON));
                return v;
            }
            w->code = CODE_EXISTS;
            return STORE_KEEP;
        }
    }
    switch (w->op) {
    case OP_SET:
    case OP_CAS:
    case OP_ADD: break;
    case OP_REPLACE:
        if (!exists) {
            w->code = CODE_NOT_STORED;
            return STORE_KEEP;
        }
        break;
    case OP_APPEND:
    case OP_PREPEND:
        if (!exists) {
            w->code = CODE_NOT_STORED;
            return STORE_KEEP;
        }
        if (w->op == OP_APPEND)
            return write_new(w, ov.flags, ov.exptime, ov.payload, ov.payload_len, nv.payload, nv.payload_len, out,
                             outlen);
        return write_new(w, ov.flags, ov.exptime, nv.payload, nv.payload_len, ov.payload, ov.payload_len, out, outlen);
    case OP_INCR:
    case OP_DECR: return apply_arith(w, exists, &ov, &nv, out, outlen);
    case OP_TOUCH:
    case OP_GAT:
        if (!exists) {
            w->code = CODE_NOT_FOUND;
            return STORE_KEEP;
        }
        /* a touch keeps the item's stale and win-token state, as memcached's */
        if (write_new(w, ov.flags, nv.exptime, ov.payload, ov.payload_len, NULL, 0, out, outlen) != STORE_WRITE)
            return STORE_KEEP;
        record_mc_state(w->buf, ov.meta);
        return STORE_WRITE;
    case OP_MG_WIN:
    case OP_INVALIDATE: return apply_state(w, exists, &ov, &nv, out, outlen);
    default: w->code = CODE_NOT_STORED; return STORE_KEEP;
    }
    *out = w->out = w->val;
    *outlen = w->outlen = w->vlen;
    w->written = true;
    return STORE_WRITE;
}

bool apply_blind(const write_ctx *w) { return w->op == OP_SET && w->cas == 0; }

store_verdict apply_delete(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    write_ctx *w = arg;
    record_value ov;
    bool exists = apply_live(old, oldlen, w->now, w->exp_now, w->floor, &ov);
    w->code = exists ? CODE_STORED : CODE_NOT_FOUND;
    if (exists && w->cas != 0 && ov.clocktime != w->cas) {
        w->code = CODE_EXISTS;
        return STORE_KEEP;
    }
    if (old && oldlen == RECORD_TOMBSTONE) {
        /* Already deleted here. A client repeating a delete that failed may
         * be repairing a replica that missed it: send our tombstone again. */
        memcpy(w->tomb, old, RECORD_TOMBSTONE);
        w->out = w->tomb;
        w->outlen = RECORD_TOMBSTONE;
        w->resend = true;
        return STORE_KEEP;
    }
    record_tombstone(w->tomb, w->ct);
    *out = w->out = w->tomb;
    *outlen = w->outlen = RECORD_TOMBSTONE;
    w->written = true;
    return STORE_WRITE;
}
