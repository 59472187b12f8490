/*
 * fuzz_rpcframe — node RPC frames as rpc.c reads them: bytes go through the
 * mpguard, then into msgpack-c's unpacker, which must never be asked to
 * allocate for more than the guard's limit and never crash. The input is
 * split at its first byte's value to exercise streaming.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mpguard.h"

#define LIMIT (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t cut = data[0] % size;
    msgpack_unpacker up;
    mpguard g;
    if (!msgpack_unpacker_init(&up, 1024)) return 0;
    mpguard_init(&g, LIMIT);
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    const uint8_t *parts[2] = {data + 1, data + 1 + (cut ? cut - 1 : 0)};
    size_t lens[2] = {cut ? cut - 1 : 0, size - 1 - (cut ? cut - 1 : 0)};
    for (int i = 0; i < 2; i++) {
        if (!msgpack_unpacker_reserve_buffer(&up, lens[i])) break;
        memcpy(msgpack_unpacker_buffer(&up), parts[i], lens[i]);
        if (!mpguard_feed(&g, parts[i], lens[i])) break; /* rpc.c closes here */
        msgpack_unpacker_buffer_consumed(&up, lens[i]);
        msgpack_unpack_return r;
        while ((r = msgpack_unpacker_next(&up, &res)) == MSGPACK_UNPACK_SUCCESS) {
        }
        if (r != MSGPACK_UNPACK_CONTINUE) break;
    }
    msgpack_unpacked_destroy(&res);
    msgpack_unpacker_destroy(&up);
    return 0;
}
