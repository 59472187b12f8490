/*
 * auth — the optional cluster secret (--cluster-key-file): loading it, and
 * the HMAC-SHA256 challenge-response that rpc.c runs on every connection
 * when a key is configured (wire format in docs/protocol.md §1.1).
 *
 * Each side of a connection sends a fresh 32-byte nonce in its hello; each
 * then proves it knows the key with
 *
 *   proof = HMAC-SHA256(key, "kumofs-auth-v1" | dir | role | receiver's nonce | sender's nonce)
 *
 * dir is 'C' when the sender opened the TCP connection and 'A' when it
 * accepted it, role the sender's rpc role byte. The receiver's nonce makes
 * a proof good for one connection only; dir stops a proof from being
 * reflected back to its sender over a second connection (an attacker who
 * hands A's own nonce to A on another connection gets an 'A' proof, and A
 * expects a 'C' proof from whoever dialled it).
 *
 * The key lives in its own page, excluded from core dumps (MADV_DONTDUMP)
 * and wiped when freed; it is never logged.
 *
 * Thread rule: a loaded key is read-only and may be shared by every
 * thread. Calls: libcrypto (HMAC, CRYPTO_memcmp, OPENSSL_cleanse).
 */
#ifndef KUMO_AUTH_H
#define KUMO_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo.h"

#define AUTH_NONCE_LEN 32
#define AUTH_PROOF_LEN 32 /* SHA-256 */
#define AUTH_KEY_MIN 16   /* bytes, after the trailing newline is dropped */
#define AUTH_KEY_MAX 1024
#define AUTH_ENV "KUMO_CLUSTER_KEY_FILE" /* the tools' fallback for --cluster-key-file */

typedef struct auth_key auth_key;

/* Read the key file. Its bytes are the key, except one trailing "\n" (so
 * `echo secret > file` and `head -c 32 /dev/urandom > file` both work).
 * Refused (NULL + err naming the file): a file that cannot be read, is not
 * a regular file, can be read or written by "other" (mode & 006; group
 * read is fine, for root:kumofs 0640), or holds fewer than AUTH_KEY_MIN or
 * more than AUTH_KEY_MAX bytes. The caller owns the key (auth_key_free). */
auth_key *auth_key_load(const char *path, char *err);
/* Wipe and free; NULL is fine. */
void auth_key_free(auth_key *k);

/* A fresh random nonce (getrandom). 0 / -1 + err. */
int auth_nonce(uint8_t out[AUTH_NONCE_LEN], char *err);

/* The proof a sender makes (see the top of this file). */
void auth_proof(const auth_key *k, bool sender_connected, uint8_t sender_role,
                const uint8_t receiver_nonce[AUTH_NONCE_LEN], const uint8_t sender_nonce[AUTH_NONCE_LEN],
                uint8_t out[AUTH_PROOF_LEN]);
/* Check a proof received from a sender, in constant time. len is the
 * proof's length on the wire (anything but AUTH_PROOF_LEN fails). */
bool auth_verify(const auth_key *k, bool sender_connected, uint8_t sender_role,
                 const uint8_t receiver_nonce[AUTH_NONCE_LEN], const uint8_t sender_nonce[AUTH_NONCE_LEN],
                 const void *proof, size_t len);

#endif
