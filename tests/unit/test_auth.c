/*
 * test_auth — the cluster key file rules (length, mode, trailing newline)
 * and the proof: a known answer computed independently (Python's hmac),
 * and every input that must change it (key, direction, role, nonces).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "tap.h"

static char dir[] = "/tmp/test_auth.XXXXXX";

/* Write a key file with this content and mode; returns its path (static). */
static const char *keyfile(const char *name, const void *data, size_t len, mode_t mode)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(1);
    }
    chmod(path, mode);
    return path;
}

static const uint8_t n1[AUTH_NONCE_LEN] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                           1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const uint8_t n2[AUTH_NONCE_LEN] = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                           2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};

static void test_load(void)
{
    char err[KUMO_ERRLEN];
    auth_key *k;

    ok((k = auth_key_load(keyfile("ok", "0123456789abcdef", 16, 0600), err)) != NULL, "a 16-byte key, mode 0600, loads");
    auth_key_free(k);
    ok((k = auth_key_load(keyfile("group", "0123456789abcdef\n", 17, 0640), err)) != NULL,
       "group-readable (0640, root:kumofs) loads");
    auth_key_free(k);

    const char *p = keyfile("world", "0123456789abcdef", 16, 0644);
    ok(!auth_key_load(p, err) && strstr(err, p) && strstr(err, "0644"), "world-readable is refused, naming file and mode");
    ok(!auth_key_load(keyfile("short", "0123456789abcde\n", 16, 0600), err) && strstr(err, "16 to"),
       "15 bytes (plus newline) are too short");
    ok(!auth_key_load(keyfile("empty", "", 0, 0600), err), "an empty file is refused");
    char big[AUTH_KEY_MAX + 1];
    memset(big, 'x', sizeof(big));
    ok(!auth_key_load(keyfile("big", big, sizeof(big), 0600), err), "more than AUTH_KEY_MAX bytes is refused");
    ok((k = auth_key_load(keyfile("max", big, AUTH_KEY_MAX, 0600), err)) != NULL, "exactly AUTH_KEY_MAX bytes loads");
    auth_key_free(k);
    snprintf(big, sizeof(big), "%s/missing", dir);
    ok(!auth_key_load(big, err) && strstr(err, big) && strstr(err, "No such file"), "a missing file is named");
    ok(!auth_key_load(dir, err) && strstr(err, "regular"), "a directory is refused");
    auth_key_free(NULL);
}

static void test_proof(void)
{
    char err[KUMO_ERRLEN];
    uint8_t proof[AUTH_PROOF_LEN], other[AUTH_PROOF_LEN];
    auth_key *k = auth_key_load(keyfile("k", "0123456789abcdef\n", 17, 0600), err);
    auth_key *same = auth_key_load(keyfile("k2", "0123456789abcdef", 16, 0600), err);
    auth_key *diff = auth_key_load(keyfile("k3", "0123456789abcdeF", 16, 0600), err);
    if (!k || !same || !diff) {
        printf("Bail out! %s\n", err);
        exit(1);
    }
    /* HMAC-SHA256("0123456789abcdef", "kumofs-auth-v1" 'C' 0x01 n1 n2) */
    static const uint8_t want[AUTH_PROOF_LEN] = {
        0xe5, 0x94, 0x0b, 0xc7, 0x3e, 0x38, 0xce, 0x6f, 0x44, 0x78, 0xad, 0xcd, 0x5e, 0x36, 0x04, 0x33,
        0x16, 0x4a, 0xf0, 0x12, 0xa0, 0x06, 0x9b, 0xac, 0xf1, 0xde, 0x93, 0x07, 0x66, 0xe7, 0xde, 0x86};
    auth_proof(k, true, 1, n1, n2, proof);
    ok(memcmp(proof, want, sizeof(want)) == 0, "known answer (the trailing newline is not part of the key)");
    ok(auth_verify(same, true, 1, n1, n2, proof, sizeof(proof)), "the same key without newline verifies it");
    ok(!auth_verify(diff, true, 1, n1, n2, proof, sizeof(proof)), "another key does not");
    ok(!auth_verify(k, false, 1, n1, n2, proof, sizeof(proof)), "the other direction does not (no reflection)");
    ok(!auth_verify(k, true, 2, n1, n2, proof, sizeof(proof)), "another role does not");
    ok(!auth_verify(k, true, 1, n2, n1, proof, sizeof(proof)), "swapped nonces do not");
    ok(!auth_verify(k, true, 1, n1, n1, proof, sizeof(proof)), "another receiver nonce (connection) does not");
    ok(!auth_verify(k, true, 1, n1, n2, proof, sizeof(proof) - 1), "a short proof does not");
    auth_proof(k, false, 1, n1, n2, other);
    ok(memcmp(proof, other, sizeof(proof)) != 0, "the direction changes the proof");

    uint8_t a[AUTH_NONCE_LEN], b[AUTH_NONCE_LEN];
    ok(auth_nonce(a, err) == 0 && auth_nonce(b, err) == 0 && memcmp(a, b, sizeof(a)) != 0, "nonces differ");
    auth_key_free(k);
    auth_key_free(same);
    auth_key_free(diff);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        printf("Bail out! mkdtemp\n");
        return 1;
    }
    test_load();
    test_proof();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("could not remove %s", dir);
    return done_testing();
}
