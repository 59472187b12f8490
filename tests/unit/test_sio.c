/*
 * test_sio — output order and end-of-turn flushing of src/lib/sio.c, on
 * real socket pairs and a real event_base:
 *  - bytes staged by sio_append, added to the evbuffer (sio_output) and
 *    appended large reach the peer in the order they were written, and
 *    only once the loop turns;
 *  - every socket that wrote in a turn is flushed by that turn, also when
 *    another socket of the list is freed while queued, or by a flush;
 *  - a socket whose peer reads nothing keeps its output (staged and
 *    queued) and sends it all once the peer reads;
 *  - the staging array grows past 1 KiB for a burst and the socket still
 *    sends every byte;
 *  - a peer's shutdown(SHUT_WR): with on_eof, the input before it is read,
 *    on_eof runs once, reading stops (re-enabling it only hands out what is
 *    buffered) and output still reaches the peer; without on_eof it is a
 *    close (on_close, err 0); both for buffered and direct readers.
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sio.h"
#include "slurp.h"
#include "tap.h"

#define PIECES 40000 /* 280 KB: more than a socket pair buffers, whatever its limits */

static int closes;

static void on_read(void *arg, sio *s)
{
    (void)arg;
    evbuffer_drain(sio_input(s), evbuffer_get_length(sio_input(s)));
}

static void on_close(void *arg, sio *s, int err)
{
    (void)arg;
    (void)s;
    (void)err;
    closes++;
}

/* A sio that frees another (the victim) when its flush drains it. */
static sio *victim;
static void on_drained_free(void *arg, sio *s)
{
    (void)arg;
    (void)s;
    if (victim) {
        sio_free(victim);
        victim = NULL;
    }
}

static const sio_ops ops = {.on_read = on_read, .on_close = on_close};

/* End of input: what was read, how often each callback ran. */
static char eof_in[64];
static size_t eof_len;
static int eofs, eof_reads, eof_closes, eof_close_err = -1;

static void eof_on_read(void *arg, sio *s)
{
    (void)arg;
    eof_reads++;
    if (sio_at_eof(s)) return;
    struct evbuffer *in = sio_input(s);
    size_t n = evbuffer_get_length(in);
    if (n > sizeof(eof_in) - eof_len) n = sizeof(eof_in) - eof_len;
    eof_len += (size_t)evbuffer_remove(in, eof_in + eof_len, n);
}

static void eof_on_read_direct(void *arg, sio *s)
{
    (void)arg;
    eof_reads++;
    ssize_t n = sio_recv(s, eof_in + eof_len, sizeof(eof_in) - eof_len);
    if (n > 0) eof_len += (size_t)n;
}

static void eof_on_close(void *arg, sio *s, int err)
{
    (void)arg;
    (void)s;
    eof_closes++;
    eof_close_err = err;
}

static void eof_on_eof(void *arg, sio *s)
{
    (void)arg;
    eofs++;
    sio_append(s, "answer", 6); /* output still leaves */
}

static const sio_ops ops_eof = {.on_read = eof_on_read, .on_close = eof_on_close, .on_eof = eof_on_eof};
static const sio_ops ops_eof_direct = {.on_read = eof_on_read_direct, .on_close = eof_on_close, .on_eof = eof_on_eof};
static const sio_ops ops_no_eof = {.on_read = eof_on_read, .on_close = eof_on_close};
static const sio_ops ops_freeing = {.on_read = on_read, .on_close = on_close, .on_drained = on_drained_free};

static sio *pair(struct event_base *base, int *peer, const sio_ops *o)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) abort();
    *peer = sv[1];
    return sio_new(base, sv[0], o, NULL);
}

int main(void)
{
    struct event_base *base = event_base_new();
    static char got[1 << 19];
    int pa, pb, pc;

    /* Order across the staging array, the evbuffer and a large append. */
    sio *a = pair(base, &pa, &ops);
    char big[12000];
    memset(big, 'L', sizeof(big));
    sio_append(a, "one,", 4);
    evbuffer_add(sio_output(a), "two,", 4);
    sio_wrote(a);
    sio_append(a, "three,", 6);
    sio_append(a, big, sizeof(big));
    sio_append(a, ",four", 5);
    ok(sio_output_length(a) == 4 + 4 + 6 + sizeof(big) + 5, "sio_output_length counts staged and queued bytes");
    ok(slurp(pa, got, sizeof(got)) == 0, "nothing leaves before the loop turns");
    event_base_loop(base, EVLOOP_NONBLOCK);
    size_t n = slurp(pa, got, sizeof(got));
    ok(n == 19 + sizeof(big) && memcmp(got, "one,two,three,", 14) == 0 && got[14] == 'L' &&
           got[13 + sizeof(big)] == 'L' && memcmp(got + 14 + sizeof(big), ",four", 5) == 0,
       "staged, queued and large output arrive in the order written (%zu bytes)", n);
    ok(sio_output_length(a) == 0, "and nothing is left behind");

    /* Three sockets write in one turn; one is freed while queued. */
    sio *b = pair(base, &pb, &ops);
    sio *c = pair(base, &pc, &ops);
    sio_append(a, "A", 1);
    sio_append(b, "B", 1);
    sio_append(c, "C", 1);
    sio_free(b);
    close(pb);
    event_base_loop(base, EVLOOP_NONBLOCK);
    ok(slurp(pa, got, sizeof(got)) == 1 && got[0] == 'A' && slurp(pc, got, sizeof(got)) == 1 && got[0] == 'C',
       "one turn flushes every socket that wrote, a freed one left out of the list");

    /* A flush that frees another queued socket: the list goes on. */
    sio_free(a);
    close(pa);
    int pd;
    sio *d = pair(base, &pd, &ops_freeing);
    sio_append(d, "D", 1);
    victim = c;
    sio_append(c, "c", 1); /* queued behind d, freed by d's flush */
    int pe;
    sio *e = pair(base, &pe, &ops);
    sio_append(e, "E", 1);
    event_base_loop(base, EVLOOP_NONBLOCK);
    ok(victim == NULL && slurp(pd, got, sizeof(got)) == 1 && slurp(pe, got, sizeof(got)) == 1 && got[0] == 'E',
       "a socket freed by another's flush leaves the list, and the rest is flushed");
    close(pc);

    /* A peer that does not read: output waits, staged and queued, in order. */
    int sndbuf = 4096;
    setsockopt(sio_fd(e), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    size_t total = 0;
    char piece[100];
    for (int i = 0; i < PIECES; i++) {
        int len = snprintf(piece, sizeof(piece), "%06d;", i);
        sio_append(e, piece, (size_t)len);
        total += (size_t)len;
        if (i % 200 == 199) event_base_loop(base, EVLOOP_NONBLOCK);
    }
    ok(sio_output_length(e) > 0, "a peer that reads nothing leaves output waiting (%zu bytes)", sio_output_length(e));
    size_t have = 0;
    for (int spins = 0; spins < 20000 && have < total; spins++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        have += slurp(pe, got + have, sizeof(got) - have);
    }
    bool inorder = have == total;
    for (int i = 0; i < PIECES && inorder; i++) {
        snprintf(piece, sizeof(piece), "%06d;", i);
        inorder = memcmp(got + 7 * i, piece, 7) == 0;
    }
    ok(inorder, "once it reads, all %zu bytes arrive in order (%zu read)", total, have);
    ok(closes == 0, "no socket was closed on the way");

    sio_free(d);
    sio_free(e);
    close(pd);
    close(pe);

    /* The peer sends, then shuts its side. */
    const sio_ops *eof_kinds[] = {&ops_eof, &ops_eof_direct, &ops_no_eof};
    const char *eof_names[] = {"buffered reader", "direct reader", "without on_eof"};
    for (int k = 0; k < 3; k++) {
        int pf;
        sio *f = pair(base, &pf, eof_kinds[k]);
        sio_read_direct(f, eof_kinds[k] == &ops_eof_direct);
        sio_read_enable(f, true);
        eof_len = 0;
        eofs = eof_reads = eof_closes = 0;
        eof_close_err = -1;
        if (send(pf, "get k\r\n", 7, 0) != 7 || shutdown(pf, SHUT_WR) < 0) abort();
        for (int spins = 0; spins < 50 && !eofs && !eof_closes; spins++) event_base_loop(base, EVLOOP_NONBLOCK);
        bool read_all = eof_len == 7 && memcmp(eof_in, "get k\r\n", 7) == 0;
        if (k < 2) {
            int reads = eof_reads;
            for (int spins = 0; spins < 20; spins++) event_base_loop(base, EVLOOP_NONBLOCK);
            ok(read_all && eofs == 1 && eof_closes == 0 && sio_at_eof(f),
               "%s: the input before shutdown(SHUT_WR) is read, then on_eof runs once, no close", eof_names[k]);
            ok(eof_reads == reads, "%s: then reading stops (%d reads, %d after)", eof_names[k], reads,
               eof_reads - reads);
            sio_read_enable(f, false);
            sio_read_enable(f, true); /* as a paused client resumes */
            for (int spins = 0; spins < 20; spins++) event_base_loop(base, EVLOOP_NONBLOCK);
            ok(eofs == 1 && eof_closes == 0 && eof_reads - reads <= 1,
               "%s: re-enabling reading hands out what is buffered, no second on_eof", eof_names[k]);
            size_t sent = slurp(pf, got, sizeof(got));
            ok(sent == 6 && memcmp(got, "answer", 6) == 0, "%s: output after the end of input reaches the peer",
               eof_names[k]);
        } else {
            ok(read_all && eofs == 0 && eof_closes == 1 && eof_close_err == 0,
               "%s: the input is read, then on_close runs (err 0)", eof_names[k]);
        }
        sio_free(f);
        close(pf);
    }
    event_base_free(base); /* after its sockets: their end-of-turn list went with the last */
    return done_testing();
}
