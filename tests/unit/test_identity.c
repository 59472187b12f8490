/*
 * test_identity — which node a database is (src/server/identity.c): the
 * "<database>.node" file written on first start, read on every start, and
 * the starts it refuses.
 */
#include "identity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"

static char dir[] = "/tmp/kumo-test-identity.XXXXXX";
static char db[256];

static net_addr addr(const char *text)
{
    net_addr a;
    char err[KUMO_ERRLEN];
    if (net_parse(text, 19800, &a, err) < 0) memset(&a, 0, sizeof(a));
    return a;
}

static void file_line(char *out, size_t len)
{
    char path[300];
    snprintf(path, sizeof(path), "%s.node", db);
    FILE *f = fopen(path, "r");
    out[0] = 0;
    if (f) {
        if (!fgets(out, (int)len, f)) out[0] = 0;
        fclose(f);
    }
    out[strcspn(out, "\n")] = 0;
}

static void fresh(const char *name)
{
    char path[300];
    snprintf(db, sizeof(db), "%s/%s.tch", dir, name);
    snprintf(path, sizeof(path), "%s.node", db);
    unlink(path);
}

int main(void)
{
    char err[KUMO_ERRLEN] = "", line[256];
    node_identity id, again;
    uint8_t keylen, key[RING_KEY_MAX];
    if (!mkdtemp(dir)) return 1;
    net_addr a = addr("192.0.2.7:19800"), b = addr("192.0.2.8:19800");

    /* -l: placed by that address, as in 0.4; announced with no key. */
    fresh("l");
    ok(identity_load(db, NULL, true, &a, false, &id, err) == 0 && id.kind == IDENTITY_ADDR, "-l: placed by address (%s)",
       err);
    file_line(line, sizeof(line));
    is_str(line, "kumofs-node 1 addr 192.0.2.7:19800", "  ... written beside the database");
    identity_ring_key(&id, &a, &keylen, key);
    is_int(keylen, 0, "  ... announced without a key of its own: the seed stays 0.4's");
    ok(identity_load(db, NULL, true, &a, true, &again, err) == 0 && again.kind == IDENTITY_ADDR, "  ... a restart reads it back");
    ok(identity_load(db, NULL, true, &b, true, &again, err) < 0 && strstr(err, ".node") && strstr(err, "swapped") && strstr(err, "start it with -l 192.0.2.7:19800"),
       "  ... -l another address is refused, naming the file: %s", err);
    /* without -l the database keeps its place at a new address */
    ok(identity_load(db, NULL, false, &b, true, &again, err) == 0 && again.kind == IDENTITY_ADDR,
       "  ... found at another address without -l: kept");
    identity_ring_key(&again, &b, &keylen, key);
    ok(keylen == NET_ID_V4 && memcmp(key, a.id, NET_ID_V4) == 0, "  ... announced with its old address's bytes as key");

    /* --node-name */
    fresh("n");
    ok(identity_load(db, "cache-a", true, &a, false, &id, err) == 0 && id.kind == IDENTITY_NAME, "--node-name (%s)", err);
    file_line(line, sizeof(line));
    is_str(line, "kumofs-node 1 name cache-a", "  ... written");
    identity_ring_key(&id, &b, &keylen, key);
    ok(keylen == 7 && memcmp(key, "cache-a", 7) == 0, "  ... announced as its key at any address");
    ok(identity_load(db, NULL, true, &b, true, &again, err) == 0 && again.kind == IDENTITY_NAME,
       "  ... a restart without the flag, at another -l, is still that node");
    ok(identity_load(db, "cache-b", true, &a, true, &again, err) < 0 && strstr(err, "cache-b") && strstr(err, ".node"),
       "  ... another --node-name is refused: %s", err);
    ok(identity_check_name("a b", err) < 0 && identity_check_name("", err) < 0 && identity_check_name("ok.name_1-2", err) == 0,
       "names: letters, digits, '.', '_' and '-'");

    /* no -l, a new database: a random id; the same on every start */
    fresh("id");
    ok(identity_load(db, NULL, false, &a, false, &id, err) == 0 && id.kind == IDENTITY_ID && id.keylen == 16, "new database, no -l: an id");
    file_line(line, sizeof(line));
    ok(strncmp(line, "kumofs-node 1 id ", 17) == 0 && strlen(line) == 17 + 32, "  ... written as 32 hex digits: %s", line);
    ok(identity_load(db, NULL, false, &b, true, &again, err) == 0 && again.keylen == 16 && memcmp(again.key, id.key, 16) == 0,
       "  ... read back as the same key at another address");
    fresh("id2");
    ok(identity_load(db, NULL, false, &a, false, &again, err) == 0 && memcmp(again.key, id.key, 16) != 0, "  ... another database, another id");

    /* no -l, records from before identities: placed by its address */
    fresh("old");
    ok(identity_load(db, NULL, false, &a, true, &id, err) == 0 && id.kind == IDENTITY_ADDR, "a database with records and no file: its address");

    /* a file that is not ours */
    fresh("bad");
    char path[300];
    snprintf(path, sizeof(path), "%s.node", db);
    FILE *f = fopen(path, "w");
    fputs("hello\n", f);
    fclose(f);
    ok(identity_load(db, NULL, true, &a, false, &id, err) < 0 && strstr(err, path), "a foreign file is refused, named: %s", err);
    f = fopen(path, "w");
    fputs("kumofs-node 1 id 12zz\n", f);
    fclose(f);
    ok(identity_load(db, NULL, true, &a, false, &id, err) < 0, "a broken id is refused: %s", err);

    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("could not remove %s", dir);
    return done_testing();
}
