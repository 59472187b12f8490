/*
 * mpguard — see mpguard.h. The header sizes follow the msgpack spec:
 * fixed types carry their count in the first byte; the others are followed
 * by 1, 2, 4 or 8 big-endian bytes of value, length or count.
 */
#include "mpguard.h"

#include <msgpack.h>
#include <string.h>

_Static_assert(MPGUARD_ELEM_COST >= sizeof(msgpack_object), "an element costs at least its msgpack_object");

void mpguard_init(mpguard *g, uint64_t limit)
{
    *g = (mpguard){.limit = limit, .expected = 1};
}

/* Bytes after the type byte that a header needs (0 for fixed types). */
static int header_extra(uint8_t b)
{
    if (b <= 0x7f || b >= 0xe0 || (b >= 0x80 && b <= 0xbf) || b == 0xc0 || b == 0xc2 || b == 0xc3) return 0;
    switch (b) {
    case 0xc4:
    case 0xd9:
    case 0xcc:
    case 0xd0: return 1; /* bin8 str8 uint8 int8 */
    case 0xc5:
    case 0xda:
    case 0xdc:
    case 0xde:
    case 0xcd:
    case 0xd1: return 2;
    case 0xc6:
    case 0xdb:
    case 0xdd:
    case 0xdf:
    case 0xce:
    case 0xd2:
    case 0xca: return 4;
    case 0xcf:
    case 0xd3:
    case 0xcb: return 8;
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: return 1; /* fixext: the type byte */
    case 0xc7: return 2; /* ext8: len, type */
    case 0xc8: return 3; /* ext16 */
    case 0xc9: return 5; /* ext32 */
    default: return -1;  /* 0xc1: never used */
    }
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* A whole header is in g->hdr: account for what it declares. -1: over
 * the limit; 1: it ended a top-level object; 0: the object goes on. */
static int header_done(mpguard *g)
{
    uint8_t b = g->hdr[0];
    uint64_t elems = 0, payload = 0;
    if (b >= 0x90 && b <= 0x9f) elems = b & 0x0f;
    else if (b >= 0x80 && b <= 0x8f) elems = 2u * (b & 0x0f);
    else if (b >= 0xa0 && b <= 0xbf) payload = b & 0x1f;
    else switch (b) {
        case 0xdc:
        case 0xdd: elems = be(g->hdr + 1, g->need - 1); break;
        case 0xde:
        case 0xdf: elems = 2 * be(g->hdr + 1, g->need - 1); break;
        case 0xc4:
        case 0xc5:
        case 0xc6:
        case 0xd9:
        case 0xda:
        case 0xdb: payload = be(g->hdr + 1, g->need - 1); break;
        case 0xd4: payload = 1; break; /* fixext: the type byte is in the header, the data follows */
        case 0xd5: payload = 2; break;
        case 0xd6: payload = 4; break;
        case 0xd7: payload = 8; break;
        case 0xd8: payload = 16; break;
        case 0xc7: payload = be(g->hdr + 1, 1); break;
        case 0xc8: payload = be(g->hdr + 1, 2); break;
        case 0xc9: payload = be(g->hdr + 1, 4); break;
        default: break;
        }
    /* An element costs the parser its msgpack_object (a map's pair two),
     * allocated with the header: one byte on the wire is 24 in memory. */
    g->declared += elems * MPGUARD_ELEM_COST + payload;
    if (g->declared > g->limit) return -1;
    g->expected += elems;
    g->skip = payload;
    g->expected--; /* this object's header is read */
    if (g->expected == 0 && g->skip == 0) {
        g->expected = 1; /* the next top-level object */
        g->declared = 0;
        return 1;
    }
    return 0;
}

/* Check bytes; with `one`, stop right after the end of a top-level object.
 * Returns the bytes checked, or -1. */
static ptrdiff_t feed(mpguard *g, const uint8_t *buf, size_t len, bool one)
{
    const uint8_t *p = buf, *end = p + len;
    while (p < end) {
        if (g->skip > 0) {
            uint64_t n = (uint64_t)(end - p) < g->skip ? (uint64_t)(end - p) : g->skip;
            p += n;
            g->skip -= n;
            if (g->skip == 0 && g->expected == 0) {
                g->expected = 1;
                g->declared = 0;
                if (one) break;
            }
            continue;
        }
        if (g->have == 0) {
            uint8_t b = *p;
            if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
                /* fixint, nil, false, true: one byte that declares nothing */
                p++;
                if (--g->expected == 0) {
                    g->expected = 1;
                    g->declared = 0;
                    if (one) break;
                }
                continue;
            }
            int extra = header_extra(b);
            if (extra < 0) return -1;
            g->need = (uint8_t)(1 + extra);
            if ((size_t)(end - p) >= g->need) { /* the whole header is here: no byte-by-byte copy */
                memcpy(g->hdr, p, g->need);
                p += g->need;
                int r = header_done(g);
                if (r < 0) return -1;
                if (r > 0 && one) break;
                continue;
            }
        }
        while (g->have < g->need && p < end) g->hdr[g->have++] = *p++;
        if (g->have < g->need) break;
        g->have = 0;
        int r = header_done(g);
        if (r < 0) return -1;
        if (r > 0 && one) break;
    }
    return p - buf;
}

bool mpguard_feed(mpguard *g, const void *buf, size_t len) { return feed(g, buf, len, false) >= 0; }

ptrdiff_t mpguard_feed_object(mpguard *g, const void *buf, size_t len) { return feed(g, buf, len, true); }

/* Mid-object, either a header is partly read, a payload is being skipped,
 * or a container's elements are awaited, which its header counted into
 * `declared` (at least MPGUARD_ELEM_COST): so `expected` 1 with nothing
 * declared is the state a completed object leaves. */
bool mpguard_between(const mpguard *g) { return g->have == 0 && g->skip == 0 && g->expected == 1 && g->declared == 0; }
