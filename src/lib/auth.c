/*
 * auth — the cluster key and its challenge-response (see auth.h).
 *
 * Owns: the key pages it maps. Calls: libcrypto. Thread rule: see auth.h.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define AUTH_LABEL "kumofs-auth-v1"

struct auth_key {
    size_t len;
    uint8_t bytes[AUTH_KEY_MAX + 1]; /* +1: a file one byte too long is seen as such */
};

static auth_key *key_alloc(void)
{
    /* A page of its own, so it can be kept out of core dumps. */
    void *p = mmap(NULL, sizeof(auth_key), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, sizeof(auth_key), MADV_DONTDUMP); /* best effort: old kernels lack it */
    return p;
}

void auth_key_free(auth_key *k)
{
    if (!k) return;
    OPENSSL_cleanse(k, sizeof(*k));
    munmap(k, sizeof(*k));
}

/* Read up to cap bytes; returns the count or -1 (errno set). */
static ssize_t read_upto(int fd, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        n += (size_t)r;
    }
    return (ssize_t)n;
}

auth_key *auth_key_load(const char *path, char *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        kumo_err(err, "cluster key file '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        kumo_err(err, "cluster key file '%s': not a regular file", path);
        close(fd);
        return NULL;
    }
    /* Like ssh with its private keys: a secret anyone on the host can read
     * is no secret. Group read stays allowed (root:kumofs 0640). */
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        kumo_err(err, "cluster key file '%s': mode %04o lets other users read or write it (chmod 0640 or 0600)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return NULL;
    }
    auth_key *k = key_alloc();
    if (!k) {
        kumo_err(err, "cluster key file '%s': out of memory", path);
        close(fd);
        return NULL;
    }
    ssize_t n = read_upto(fd, k->bytes, sizeof(k->bytes));
    int saved = errno;
    close(fd);
    if (n < 0) {
        kumo_err(err, "cluster key file '%s': %s", path, strerror(saved));
        auth_key_free(k);
        return NULL;
    }
    k->len = (size_t)n;
    if (k->len > 0 && k->bytes[k->len - 1] == '\n') k->bytes[--k->len] = 0;
    if (k->len < AUTH_KEY_MIN || k->len > AUTH_KEY_MAX) {
        kumo_err(err, "cluster key file '%s': the key must be %d to %d bytes (e.g. head -c 32 /dev/urandom)",
                 path, AUTH_KEY_MIN, AUTH_KEY_MAX);
        auth_key_free(k);
        return NULL;
    }
    return k;
}

int auth_nonce(uint8_t out[AUTH_NONCE_LEN], char *err)
{
    size_t n = 0;
    while (n < AUTH_NONCE_LEN) {
        ssize_t r = getrandom(out + n, AUTH_NONCE_LEN - n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return kumo_err(err, "getrandom: %s", strerror(errno));
        n += (size_t)r;
    }
    return 0;
}

void auth_proof(const auth_key *k, bool sender_connected, uint8_t sender_role,
                const uint8_t receiver_nonce[AUTH_NONCE_LEN], const uint8_t sender_nonce[AUTH_NONCE_LEN],
                uint8_t out[AUTH_PROOF_LEN])
{
    uint8_t msg[sizeof(AUTH_LABEL) - 1 + 2 + 2 * AUTH_NONCE_LEN];
    size_t n = sizeof(AUTH_LABEL) - 1;
    memcpy(msg, AUTH_LABEL, n);
    msg[n++] = sender_connected ? 'C' : 'A';
    msg[n++] = sender_role;
    memcpy(msg + n, receiver_nonce, AUTH_NONCE_LEN);
    n += AUTH_NONCE_LEN;
    memcpy(msg + n, sender_nonce, AUTH_NONCE_LEN);
    n += AUTH_NONCE_LEN;
    unsigned int outlen = AUTH_PROOF_LEN;
    if (!HMAC(EVP_sha256(), k->bytes, (int)k->len, msg, n, out, &outlen))
        memset(out, 0, AUTH_PROOF_LEN); /* cannot happen with SHA-256; a zero proof just fails */
}

bool auth_verify(const auth_key *k, bool sender_connected, uint8_t sender_role,
                 const uint8_t receiver_nonce[AUTH_NONCE_LEN], const uint8_t sender_nonce[AUTH_NONCE_LEN],
                 const void *proof, size_t len)
{
    uint8_t want[AUTH_PROOF_LEN];
    if (len != AUTH_PROOF_LEN) return false;
    auth_proof(k, sender_connected, sender_role, receiver_nonce, sender_nonce, want);
    bool same = CRYPTO_memcmp(want, proof, AUTH_PROOF_LEN) == 0;
    OPENSSL_cleanse(want, sizeof(want));
    return same;
}
