/*
 * identity — the ring key a database is placed by (see identity.h).
 *
 * Owns: the "<database>.node" file (read at start-up, written once, by a
 * rename so a crash leaves the old file or the whole new one).
 * Calls: net (parse, format), log, getrandom. Thread rule: start-up only.
 */
#include "identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "log.h"

#define MAGIC "kumofs-node 1 "

int identity_check_name(const char *name, char *err)
{
    size_t n = strlen(name);
    if (n == 0 || n > IDENTITY_NAME_MAX)
        return kumo_err(err, "a node name has 1 to %d characters", IDENTITY_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return kumo_err(err, "a node name has only letters, digits, '.', '_' and '-': '%s'", name);
    }
    return 0;
}

static void set_text(node_identity *id)
{
    char buf[NET_ADDRSTRLEN];
    if (id->kind == IDENTITY_ADDR) {
        snprintf(id->text, sizeof(id->text), "addr %s", net_format(&id->addr, buf, sizeof(buf)));
    } else if (id->kind == IDENTITY_NAME) {
        snprintf(id->text, sizeof(id->text), "name %.*s", (int)id->keylen, (const char *)id->key);
    } else {
        char hex[2 * 16 + 1];
        for (size_t i = 0; i < id->keylen && i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", id->key[i]);
        snprintf(id->text, sizeof(id->text), "id %s", hex);
    }
}

static void set_addr(node_identity *id, const net_addr *a)
{
    id->kind = IDENTITY_ADDR;
    id->addr = *a;
    id->keylen = a->len;
    memcpy(id->key, a->id, a->len);
}

static int set_name(node_identity *id, const char *name, char *err)
{
    if (identity_check_name(name, err) < 0) return -1;
    id->kind = IDENTITY_NAME;
    id->keylen = (uint8_t)strlen(name);
    memcpy(id->key, name, id->keylen);
    return 0;
}

/* The file's one line, into *id; -1 + err if it is not one we wrote. */
static int parse(node_identity *id, char *line, char *err)
{
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (strncmp(line, MAGIC, strlen(MAGIC)) != 0)
        return kumo_err(err, "node identity file '%s': not a kumofs node identity", id->path);
    char *kind = line + strlen(MAGIC), *value = strchr(kind, ' ');
    if (!value) return kumo_err(err, "node identity file '%s': no value", id->path);
    *value++ = 0;
    char why[KUMO_ERRLEN];
    if (strcmp(kind, "addr") == 0) {
        net_addr a;
        if (net_parse(value, 0, &a, why) < 0)
            return kumo_err(err, "node identity file '%s': address '%s': %s", id->path, value, why);
        set_addr(id, &a);
    } else if (strcmp(kind, "name") == 0) {
        if (set_name(id, value, why) < 0) return kumo_err(err, "node identity file '%s': %s", id->path, why);
    } else if (strcmp(kind, "id") == 0) {
        if (strlen(value) != 32) return kumo_err(err, "node identity file '%s': an id has 32 hex digits", id->path);
        for (int i = 0; i < 16; i++) {
            unsigned b;
            if (sscanf(value + 2 * i, "%2x", &b) != 1)
                return kumo_err(err, "node identity file '%s': an id has 32 hex digits", id->path);
            id->key[i] = (uint8_t)b;
        }
        id->kind = IDENTITY_ID;
        id->keylen = 16;
    } else {
        return kumo_err(err, "node identity file '%s': unknown kind '%s'", id->path, kind);
    }
    set_text(id);
    return 0;
}

static int save(const node_identity *id, char *err)
{
    char tmp[sizeof(id->path) + 8], line[sizeof(id->text) + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp", id->path);
    int n = snprintf(line, sizeof(line), MAGIC "%s\n", id->text);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return kumo_err(err, "node identity file '%s': %s", tmp, strerror(errno));
    if (write(fd, line, (size_t)n) != n || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return kumo_err(err, "node identity file '%s': %s", tmp, strerror(e ? e : EIO));
    }
    close(fd);
    if (rename(tmp, id->path) < 0) {
        int e = errno;
        unlink(tmp);
        return kumo_err(err, "node identity file '%s': %s", id->path, strerror(e));
    }
    return 0;
}

int identity_load(const char *db_path, const char *node_name, bool listen_given, const net_addr *self,
                  bool has_records, node_identity *out, char *err)
{
    char buf[NET_ADDRSTRLEN], line[512];
    memset(out, 0, sizeof(*out));
    if ((size_t)snprintf(out->path, sizeof(out->path), "%s.node", db_path) >= sizeof(out->path))
        return kumo_err(err, "node identity file: the database path is too long");
    FILE *f = fopen(out->path, "re");
    if (!f && errno != ENOENT) return kumo_err(err, "node identity file '%s': %s", out->path, strerror(errno));
    if (f) {
        bool got = fgets(line, sizeof(line), f) != NULL;
        fclose(f);
        if (!got) return kumo_err(err, "node identity file '%s': empty", out->path);
        if (parse(out, line, err) < 0) return -1;
        if (node_name && !(out->kind == IDENTITY_NAME && out->keylen == strlen(node_name) &&
                           memcmp(out->key, node_name, out->keylen) == 0))
            return kumo_err(err, "%s: this database is node %s, not --node-name %s (remove the file to make it a new node)",
                            out->path, out->text, node_name);
        if (out->kind == IDENTITY_ADDR && !net_equal(&out->addr, self)) {
            if (listen_given)
                return kumo_err(err, "%s: this database is node %s, not -l %s (a swapped volume?): start it with -l %s",
                                out->path, out->text, net_format(self, buf, sizeof(buf)), out->text + 5);
            log_info("this database is node %s, now at %s: it keeps its place on the ring", out->text,
                     net_format(self, buf, sizeof(buf)));
        }
        return 0;
    }
    if (node_name) {
        if (set_name(out, node_name, err) < 0) return -1;
    } else if (listen_given || has_records) {
        set_addr(out, self); /* 0.4's placement; records written before identities were placed so */
    } else {
        if (getrandom(out->key, 16, 0) != 16)
            return kumo_err(err, "node identity file '%s': getrandom: %s", out->path, strerror(errno));
        out->kind = IDENTITY_ID;
        out->keylen = 16;
    }
    set_text(out);
    if (save(out, err) < 0) return -1;
    log_info("this database is node %s (written to %s)", out->text, out->path);
    return 0;
}

void identity_ring_key(const node_identity *id, const net_addr *self, uint8_t *keylen, uint8_t key[RING_KEY_MAX])
{
    if (id->kind == IDENTITY_ADDR && net_equal(&id->addr, self)) {
        *keylen = 0;
        return;
    }
    *keylen = id->keylen;
    memcpy(key, id->key, id->keylen);
}
