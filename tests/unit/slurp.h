/*
 * slurp — the unit tests' way to read what a socket's peer has now.
 */
#ifndef KUMO_TEST_SLURP_H
#define KUMO_TEST_SLURP_H
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Everything fd can read now (non-blocking), up to cap bytes, into out. */
static inline size_t slurp(int fd, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, out + n, cap - n, MSG_DONTWAIT);
        if (r <= 0) break;
        n += (size_t)r;
        if (n == cap) break;
    }
    return n;
}
#endif
