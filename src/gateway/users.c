/*
 * users — the -Y file of user:password lines (memcached's authfile.c), and
 * the check both protocols' authentication makes against it: SASL PLAIN in
 * binary.c, the "set" of a user and password in text.c.
 *
 * Owns: the loaded file (gateway_config.users), read-only once loaded.
 * Calls: nothing of the gateway. Thread rule: load and free at start-up and
 * exit; users_check from any worker.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

typedef struct gw_user {
    const char *user, *pass;
    size_t ulen, plen;
} gw_user;

struct gw_users {
    char *data; /* the file; entries point into it */
    size_t n;
    gw_user e[];
};

struct gw_users *users_load(const char *path, char *err)
{
    FILE *f = fopen(path, "r");
    char *data = NULL;
    size_t len = 0, cap = 0, n = 0, lineno = 0;
    if (!f) {
        snprintf(err, KUMO_ERRLEN, "-Y %s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *d = realloc(data, cap = cap * 2 + 4096 + 1);
            if (!d) break;
            data = d;
        }
        size_t got = fread(data + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    bool failed = ferror(f) || !data;
    fclose(f);
    if (failed) {
        snprintf(err, KUMO_ERRLEN, "-Y %s: cannot read it", path);
        free(data);
        return NULL;
    }
    data[len] = '\0';
    for (size_t i = 0; i < len; i++) n += data[i] == '\n';
    struct gw_users *u = calloc(1, sizeof(*u) + (n + 1) * sizeof(gw_user));
    if (!u) {
        snprintf(err, KUMO_ERRLEN, "-Y %s: out of memory", path);
        free(data);
        return NULL;
    }
    u->data = data;
    /* "user:password" a line, the password up to CR or LF, as memcached's
     * authfile_load; a line without ':' is an error, as there */
    for (char *p = data; p < data + len; lineno++) {
        char *nl = memchr(p, '\n', (size_t)(data + len - p)), *end = nl ? nl : data + len;
        char *colon = memchr(p, ':', (size_t)(end - p));
        if (!colon) {
            snprintf(err, KUMO_ERRLEN, "-Y %s: line %zu is not user:password", path, lineno + 1);
            users_free(u);
            return NULL;
        }
        char *pe = memchr(colon + 1, '\r', (size_t)(end - colon - 1));
        u->e[u->n++] = (gw_user){p, colon + 1, (size_t)(colon - p), (size_t)((pe ? pe : end) - colon - 1)};
        p = end + 1;
    }
    return u;
}

void users_free(struct gw_users *u)
{
    if (!u) return;
    free(u->data);
    free(u);
}

static bool same_bytes(const char *a, const char *b, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

bool users_check(const struct gw_users *u, const char *user, size_t ulen, const char *pass, size_t plen)
{
    bool found = false;
    for (size_t i = 0; u && i < u->n; i++) {
        const gw_user *e = &u->e[i];
        if (e->ulen == ulen && e->plen == plen && same_bytes(user, e->user, ulen) & same_bytes(pass, e->pass, plen))
            found = true;
    }
    return found;
}
