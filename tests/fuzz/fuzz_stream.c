/*
 * fuzz_stream — libFuzzer target for the replace-stream parser
 * (src/server/streamdec.c), the receiving end of a server's -L stream.
 *
 * The first input byte chooses: even, the rest is the inflated stream
 * (msgpack records), deflated here so the parser gets past zlib; odd, the
 * rest is fed as the compressed bytes themselves. The stream is decoded
 * twice, in one feed and in pieces (the cut comes from the first byte), and
 * must give the same verdict and, when it succeeds, the same records: the
 * parser is incremental. (A failing stream may deliver more of its records
 * before the failure when fed in pieces: damage is found per feed.) Each record must satisfy streamdec.h's promise (key longer
 * than 8 bytes, value of 8 or more) and is passed to the record parsers a
 * server would use on it. The sanitizers and libFuzzer's malloc limit catch
 * a header that makes it allocate for billions of elements.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fuzz.h"
#include "record.h"
#include "streamdec.h"

#define LIMIT 16384 /* small, so real records over it are found too */

typedef struct seen {
    uint64_t count, hash;
} seen;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static int on_record(void *arg, const char *k, size_t kl, const char *v, size_t vl, char *err)
{
    seen *s = arg;
    CHECK(kl > RECORD_KEY_HEADER && vl >= RECORD_TOMBSTONE);
    record_value rv;
    if (record_value_parse(v, vl, &rv) == 0) CHECK(rv.payload_len <= vl);
    (void)record_key_hash(k, kl);
    s->count++;
    s->hash = fnv(fnv(s->hash, k, kl), v, vl);
    return 0;
}

/* Decode buf in pieces of at most `piece` bytes; returns 0 / -1 as the stream's verdict. */
static int decode(const uint8_t *buf, size_t len, size_t piece, seen *s)
{
    stream_decoder d;
    char err[KUMO_ERRLEN];
    memset(s, 0, sizeof(*s));
    if (streamdec_init(&d, LIMIT, err) < 0) abort();
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0; off += piece)
        rc = streamdec_feed(&d, buf + off, len - off < piece ? len - off : piece, on_record, s, err);
    if (rc == 0) rc = streamdec_finish(&d, err);
    streamdec_free(&d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t *body = data + 1;
    size_t blen = size - 1;
    uint8_t *z = NULL;
    if (!(data[0] & 1)) {
        uLongf zlen = compressBound(blen);
        z = malloc(zlen ? zlen : 1);
        if (!z || compress2(z, &zlen, body, blen, 1) != Z_OK) abort();
        body = z;
        blen = zlen;
    }
    seen whole, parts;
    int a = decode(body, blen, blen ? blen : 1, &whole);
    int b = decode(body, blen, (size_t)(data[0] >> 1) + 1, &parts);
    CHECK(a == b);
    if (a == 0) CHECK(whole.count == parts.count && whole.hash == parts.hash);
    else CHECK(whole.count <= parts.count);
    free(z);
    return 0;
}
