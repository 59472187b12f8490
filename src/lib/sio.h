/*
 * sio — a non-blocking TCP socket with an input and an output buffer, made
 * for request/response traffic where the syscalls, not the bytes, are the
 * cost.
 *
 * What it does differently from a libevent bufferevent, and why:
 *  - Output is written at the end of the event-loop iteration that produced
 *    it (sio_wrote queues the socket's flush on its event_base's turn,
 *    turn.h: run by turn_loop between iterations, or by one event on a
 *    base that some other loop runs). Everything a
 *    batch of ready sockets produced for one peer leaves in one writev, and
 *    no epoll_ctl is made unless the kernel's send buffer is full.
 *  - Reads are one readv into reserved buffer space (no FIONREAD ioctl per
 *    read), level-triggered, so a socket is never read twice to find EAGAIN.
 * A gateway get went from ~5 syscalls per request on each side (readv,
 * ioctl, writev, two epoll_ctl) to two.
 *  - Small pieces of output (sio_append: a packer's every header and
 *    integer) are copied into a flat staging array, as Redis's client
 *    buffer does, and leave in one write when nothing is queued ahead of
 *    them; an evbuffer_add per piece cost more than the piece. The array is
 *    allocated at the first sio_append (1 KiB, doubled up to 16 KiB as a
 *    turn needs, and back to nothing once a burst has left), so sockets
 *    that only use the evbuffer (sio_output) never pay for it and an idle
 *    one keeps at most 1 KiB. Order is kept: sio_output moves what is
 *    staged into the evbuffer before handing it out.
 *
 * Callbacks: on_read runs when new input arrived (or when reading is
 * re-enabled with input still buffered); on_drained when the output became
 * empty after a write; on_close once, when the peer closed (err 0), an I/O
 * error happened (err = errno) or a connect failed. After on_close the
 * socket is shut: sio_free it (callbacks never run again).
 * An owner that sets on_eof keeps a half-closed socket: when the peer shuts
 * its side (a read returns 0), reading stops for good and on_eof runs once;
 * output still leaves, and the owner frees the socket once it has answered
 * (a client that sent requests and then shutdown(SHUT_WR), as `nc -N`
 * does, still gets its answers, as from memcached and twemproxy). A peer
 * that closed altogether shows when a write fails (not always the first),
 * and on_close runs.
 *
 * Thread rule: one sio belongs to the thread of its event_base, and is
 * freed before that base.
 * Calls: net, turn, libevent.
 */
#ifndef KUMO_SIO_H
#define KUMO_SIO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <sys/types.h>

#include "net.h"

typedef struct sio sio;

typedef struct sio_ops {
    void (*on_read)(void *arg, sio *s);
    void (*on_drained)(void *arg, sio *s); /* may be NULL */
    void (*on_connect)(void *arg, sio *s); /* may be NULL */
    void (*on_close)(void *arg, sio *s, int err);
    void (*on_eof)(void *arg, sio *s); /* may be NULL: end of input closes */
} sio_ops;

/* Take over a connected socket (made non-blocking here). NULL: out of
 * memory; the fd is closed. */
sio *sio_new(struct event_base *base, int fd, const sio_ops *ops, void *arg);
/* Connect to peer. Output may be queued at once; it leaves when connected.
 * A failure is reported through on_close, never from inside sio_connect.
 * NULL only if out of memory. */
sio *sio_connect(struct event_base *base, const net_addr *peer, const sio_ops *ops, void *arg);
/* Close the socket and free everything; no callback runs. */
void sio_free(sio *s);

struct evbuffer *sio_input(sio *s);
/* The output evbuffer, with everything staged by sio_append moved into it
 * first. Call sio_wrote after adding to it. */
struct evbuffer *sio_output(sio *s);
/* Queue len bytes of output (copied) and sio_wrote. -1: out of memory. */
int sio_append(sio *s, const void *buf, size_t len);
/* Bytes of output waiting, staged or in the evbuffer. */
size_t sio_output_length(const sio *s);
int sio_fd(const sio *s);
/* Output was added: it leaves at the end of this loop iteration. */
void sio_wrote(sio *s);
/* Direct reads: on_read is called when the socket is readable (and still
 * for input left in sio_input), and reads with sio_recv into a buffer of
 * its own, so bytes bound for a parser's buffer are not copied through the
 * input evbuffer first. */
void sio_read_direct(sio *s, bool on);
/* One recv into buf: the count (> 0), 0 when nothing is there yet, -1
 * when no input will come any more: the socket is shut (peer closed or
 * error; on_close has run) or at its end of input (on_eof has run). Either
 * callback may have freed s. */
ssize_t sio_recv(sio *s, void *buf, size_t len);
/* Stop or resume reading (backpressure). Resuming with input buffered
 * (for a direct reader: always, as it may buffer its own) runs on_read
 * again, from the loop; after the end of input, that is all it does. */
void sio_read_enable(sio *s, bool on);
/* The peer shut its side (on_eof ran): nothing more will be read. */
bool sio_at_eof(const sio *s);

#endif
