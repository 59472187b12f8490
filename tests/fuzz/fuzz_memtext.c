/*
 * fuzz_memtext — libFuzzer target for the memcached text protocol parser.
 *
 * Feeds the input as one connection's byte stream: parse, drop *consumed,
 * repeat until the parser needs more bytes or closes. Besides the
 * sanitizers' checks, it asserts the contract of memtext.h:
 *  - NEED_MORE consumes nothing; every other status consumes 1..len bytes;
 *  - errmsg is set exactly for CLIENT_ERROR and CLOSE; CLOSE and HANGUP
 *    consume everything;
 *  - keys, tokens, arg and data lie inside the consumed bytes, within their
 *    bounds (nkeys <= MEMTEXT_MAX_KEYS, key <= MEMTEXT_MAX_KEY bytes with no
 *    space or control character, ntokens <= MEMTEXT_MAX_TOKENS);
 *  - a storage request's data block ends 2 bytes ("\r\n") before the end of
 *    what it consumed;
 *  - the parser is incremental: given exactly the consumed bytes it answers
 *    the same, and given one byte fewer it asks for more.
 */
#include "fuzz.h"
#include "memtext.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static memtext_request req, req2;

static void check_span(const char *p, size_t n, const char *lo, const char *hi)
{
    CHECK(p != NULL);
    CHECK(p >= lo && p <= hi && n <= (size_t)(hi - p));
}

static void check_request(memtext_status st, const char *buf, size_t used)
{
    const char *end = buf + used;
    CHECK(req.nkeys <= MEMTEXT_MAX_KEYS);
    CHECK(req.ntokens <= MEMTEXT_MAX_TOKENS);
    if (st != MEMTEXT_OK)
        return;
    CHECK(req.cmd >= MEMTEXT_GET && req.cmd <= MEMTEXT_DEBUGTIME);
    if (req.cmd == MEMTEXT_DEBUGTIME) /* no key, no data: one number (or INT64_MIN) */
        CHECK(req.nkeys == 0 && !req.data && !req.noreply);
    for (size_t i = 0; i < req.nkeys; i++) {
        const memtext_token *k = &req.keys[i];
        check_span(k->p, k->len, buf, end);
        CHECK(k->len >= 1 && k->len <= MEMTEXT_MAX_KEY);
        for (size_t j = 0; j < k->len; j++) {
            unsigned char c = (unsigned char)k->p[j];
            CHECK(c != ' ' && c != '\0' && c != '\r' && c != '\n'); /* memtext.h: key bytes */
        }
    }
    for (size_t i = 0; i < req.ntokens; i++) {
        check_span(req.tokens[i].p, req.tokens[i].len, buf, end);
        CHECK(req.tokens[i].len >= 1);
    }
    if (req.arg.p)
        check_span(req.arg.p, req.arg.len, buf, end);
    if (req.data) {
        check_span(req.data, req.data_len, buf, end);
        CHECK(req.data + req.data_len + 2 == end);
        CHECK(end[-2] == '\r' && end[-1] == '\n');
        CHECK(req.data_len <= MEMTEXT_MAX_DATA);
    }
    switch (req.cmd) {
    case MEMTEXT_SET:
    case MEMTEXT_ADD:
    case MEMTEXT_REPLACE:
    case MEMTEXT_APPEND:
    case MEMTEXT_PREPEND:
    case MEMTEXT_CAS:
    case MEMTEXT_MS:
        CHECK(req.data != NULL);
        /* fall through */
    case MEMTEXT_INCR:
    case MEMTEXT_DECR:
    case MEMTEXT_DELETE:
    case MEMTEXT_TOUCH:
    case MEMTEXT_MG:
    case MEMTEXT_MD:
    case MEMTEXT_MA:
    case MEMTEXT_ME:
        CHECK(req.nkeys == 1);
        break;
    case MEMTEXT_GET:
    case MEMTEXT_GETS:
        CHECK(req.nkeys >= 1);
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    size_t off = 0;

    for (;;) {
        size_t len = size - off, used = (size_t)-1, used2 = (size_t)-1;
        const char *err = "unset", *err2 = "unset";
        memtext_status st = memtext_parse(buf + off, len, &req, &used, &err);

        CHECK(st >= MEMTEXT_OK && st <= MEMTEXT_HANGUP);
        if (st == MEMTEXT_NEED_MORE) {
            CHECK(used == 0);
            CHECK(err == NULL);
            CHECK(req.need == 0 || req.need > len);
            break;
        }
        CHECK(used > 0 && used <= len);
        CHECK((err != NULL) == (st == MEMTEXT_CLIENT_ERROR || st == MEMTEXT_CLOSE));
        CHECK(req.swallow == 0 || st == MEMTEXT_CLIENT_ERROR);
        check_request(st, buf + off, used);
        if (st == MEMTEXT_CLOSE || st == MEMTEXT_HANGUP) {
            CHECK(used == len);
            break;
        }

        /* Incremental: the consumed bytes alone give the same answer… */
        memtext_status st2 = memtext_parse(buf + off, used, &req2, &used2, &err2);
        CHECK(st2 == st && used2 == used && err2 == err);
        CHECK(req2.cmd == req.cmd && req2.nkeys == req.nkeys && req2.data == req.data);
        /* …and one byte fewer is not yet a request (or, past memcached's
         * 2048 bytes without a newline, a reason to hang up). */
        st2 = memtext_parse(buf + off, used - 1, &req2, &used2, &err2);
        CHECK((st2 == MEMTEXT_NEED_MORE && used2 == 0) ||
              (st2 == MEMTEXT_HANGUP && used - 1 > MEMTEXT_LONG_LINE));

        off += used;
    }
    return 0;
}
