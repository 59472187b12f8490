/*
 * fuzz_rpcframe — node RPC as a daemon reads it, through the real code: the
 * input arrives on a socket that src/lib/rpc.c accepted (rpc_accept, sio,
 * the mpguard, the in-place decoder (mpread), the hello and its limits, dispatch to
 * the handlers, which answer every request), the way a stranger's bytes
 * reach a kumo-server's -l port. The input's first byte sets the size of the
 * pieces it arrives in, with the event loop run between them, to exercise
 * streaming; then the writer's side is shut and the loop runs until rpc.c
 * closed the connection or has nothing left to read.
 */
#include <event2/event.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "log.h"
#include "rpc.h"

static struct event_base *base;
static clock_hlc hlc;
static rpc_self self;
static bool closed;

static void on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    (void)arg;
    (void)params;
    if (method & 1) rpc_reply_nil(c, msgid);
    else rpc_reply_error(c, msgid, "fuzz");
}

static void on_hello(void *arg, rpc_conn *c)
{
    (void)arg;
    (void)c;
}

static void on_close(void *arg, rpc_conn *c)
{
    (void)arg;
    (void)c;
    closed = true;
}

static void drain(int fd)
{
    char buf[65536];
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) continue;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base) {
        char err[KUMO_ERRLEN];
        base = event_base_new();
        clock_init(&hlc);
        self.role = RPC_ROLE_SERVER;
        self.clock = &hlc;
        self.incarnation = 1;
        if (net_parse("127.0.0.1:19800", 19800, &self.addr, err) < 0) abort();
        if (log_init("/dev/null", false, err) < 0) abort(); /* the refusals are expected */
    }
    if (size == 0) return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0) return 0;
    rpc_handlers h = {.on_request = on_request, .on_hello = on_hello, .on_close = on_close};
    closed = false;
    rpc_conn *c = rpc_accept(base, sv[0], &h, &self);
    if (!c) {
        close(sv[1]);
        return 0;
    }
    size_t step = data[0] ? data[0] : size;
    for (size_t at = 1; at < size && !closed;) {
        size_t len = size - at < step ? size - at : step;
        ssize_t w = send(sv[1], data + at, len, MSG_NOSIGNAL);
        if (w > 0) at += (size_t)w;
        event_base_loop(base, EVLOOP_NONBLOCK);
        drain(sv[1]);
        if (w <= 0 && !closed) event_base_loop(base, EVLOOP_NONBLOCK);
    }
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 8 && !closed; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        drain(sv[1]);
    }
    if (!closed) rpc_close(c);
    event_base_loop(base, EVLOOP_NONBLOCK); /* frees what the close left for the loop */
    close(sv[1]);
    return 0;
}
