/*
 * fuzz_rpcframe — node RPC frames as rpc.c reads them: bytes go through the
 * mpguard, then into msgpack-c's unpacker, which must never be asked to
 * allocate for more than the guard's limit and never crash. The first
 * object is the hello: it is taken one object at a time under HELLO_LIMIT
 * (and HELLO_LIMIT bytes in all), the rest under LIMIT, as rpc.c does with
 * RPC_MAX_HELLO and RPC_MAX_FRAME. The input's first byte sets the size of
 * the pieces it arrives in, to exercise streaming.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mpguard.h"

#define LIMIT (1u << 20)
#define HELLO_LIMIT 512u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t step = data[0] ? data[0] : size;
    msgpack_unpacker up;
    mpguard g;
    if (!msgpack_unpacker_init(&up, HELLO_LIMIT)) return 0;
    mpguard_init(&g, HELLO_LIMIT);
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    bool hello = true;
    for (size_t at = 1; at < size;) {
        size_t len = size - at < step ? size - at : step;
        if (hello && at - 1 + len > HELLO_LIMIT) len = HELLO_LIMIT - (at - 1);
        if (len == 0) break; /* rpc.c closes: a hello over the limit */
        if (!msgpack_unpacker_reserve_buffer(&up, len)) break;
        ptrdiff_t k = hello ? mpguard_feed_object(&g, data + at, len)
                            : (mpguard_feed(&g, data + at, len) ? (ptrdiff_t)len : -1);
        if (k < 0) break; /* rpc.c closes here */
        memcpy(msgpack_unpacker_buffer(&up), data + at, (size_t)k);
        msgpack_unpacker_buffer_consumed(&up, (size_t)k);
        at += (size_t)k;
        msgpack_unpack_return r;
        while ((r = msgpack_unpacker_next(&up, &res)) == MSGPACK_UNPACK_SUCCESS) {
            if (hello) {
                hello = false;
                g.limit = LIMIT;
            }
        }
        if (r != MSGPACK_UNPACK_CONTINUE) break;
    }
    msgpack_unpacked_destroy(&res);
    msgpack_unpacker_destroy(&up);
    return 0;
}
