/*
 * test_store — store.c against real Tokyo Cabinet files in a mkdtemp dir:
 * spec parsing and open errors, put/get, the newer-clocktime-wins update
 * rule with values and tombstones, modify verdicts, remove_if_older, mend,
 * iteration that writes from its callback, backup, two threads racing
 * store_update on the same keys, and the disk reservation under Tokyo
 * Cabinet's map: running ahead of the file, and (as root, in a mount
 * namespace of its own) a full filesystem refusing writes instead of SIGBUS.
 * Damage: walks over random bytes, insane headers and a torn last record;
 * the check at open rebuilding, keeping <db>.damaged and then
 * <db>.damaged.1, and refusing a file that is almost all unreadable.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "record.h"
#include "store.h"
#include "tap.h"

static char dir[] = "/tmp/kumo-test-store-XXXXXX";

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* be64(ct) | be16(0) | data; returns the length. */
static size_t mkval(uint8_t *buf, uint64_t ct, const char *data)
{
    put_be64(buf, ct);
    buf[8] = buf[9] = 0;
    size_t n = strlen(data);
    memcpy(buf + RECORD_VALUE_HEADER, data, n);
    return RECORD_VALUE_HEADER + n;
}

static char *path_in(const char *name)
{
    static char buf[4][512];
    static int slot;
    char *p = buf[slot++ % 4];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

/* The stored clocktime of key (0 if absent); *len gets the stored length. */
static uint64_t stored_ct(store *s, const char *key, size_t *len)
{
    size_t vlen;
    void *v = store_get(s, key, strlen(key), &vlen);
    uint64_t ct = v ? record_clocktime(v, vlen) : 0;
    if (len) *len = v ? vlen : 0;
    free(v);
    return ct;
}

static void rm_rf(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
    if (system(cmd) != 0) diag("could not remove %s", d);
}

static void test_open_errors(void)
{
    char err[KUMO_ERRLEN];
    char spec[600];

    snprintf(spec, sizeof(spec), "%s#xmsiz=600m#rcnum=4k", path_in("tuned.tch"));
    store *s = store_open(spec, err);
    ok(s != NULL, "open with #xmsiz=600m#rcnum=4k");
    if (!s) diag("%s", err);
    if (s) {
        is_str(store_path(s), path_in("tuned.tch"), "store_path drops the options");
        store_close(s);
    }

    snprintf(spec, sizeof(spec), "%s#XMSIZ=1g", path_in("tuned.tch"));
    err[0] = 0;
    s = store_open(spec, err);
    ok(s == NULL && strstr(err, "XMSIZ"), "option names are exact: %s", err);
    store_close(s);

    snprintf(spec, sizeof(spec), "%s#xmsiz=64M#rcnum=1000", path_in("tuned.tch"));
    s = store_open(spec, err);
    ok(s != NULL, "suffixes are case-insensitive, plain numbers accepted");
    store_close(s);

    snprintf(spec, sizeof(spec), "%s#bogus=1", path_in("a.tch"));
    err[0] = 0;
    s = store_open(spec, err);
    ok(s == NULL, "#bogus=1 is rejected");
    ok(strstr(err, "bogus") != NULL, "error names the option: %s", err);
    store_close(s);

    snprintf(spec, sizeof(spec), "%s#xmsiz=12q", path_in("a.tch"));
    err[0] = 0;
    s = store_open(spec, err);
    ok(s == NULL && strstr(err, "xmsiz=12q"), "bad size rejected: %s", err);

    snprintf(spec, sizeof(spec), "%s#rcnum=99999999999", path_in("a.tch"));
    err[0] = 0;
    s = store_open(spec, err);
    ok(s == NULL && strstr(err, "rcnum"), "rcnum beyond int32 rejected: %s", err);

    snprintf(spec, sizeof(spec), "%s#xmsiz", path_in("a.tch"));
    err[0] = 0;
    s = store_open(spec, err);
    ok(s == NULL && strstr(err, "xmsiz"), "option without a value rejected: %s", err);

    err[0] = 0;
    s = store_open("#xmsiz=1m", err);
    ok(s == NULL && err[0], "spec without a file name rejected: %s", err);

    const char *missing = path_in("no-such-dir/db.tch");
    err[0] = 0;
    s = store_open(missing, err);
    ok(s == NULL, "missing directory fails");
    ok(strstr(err, missing) != NULL, "error names the file: %s", err);

    const char *bad = path_in("corrupt.tch");
    FILE *f = fopen(bad, "w");
    for (int i = 0; i < 4096; i++) fputc((i * 131 + 7) & 0xff, f);
    fclose(f);
    err[0] = 0;
    s = store_open(bad, err);
    ok(s == NULL, "corrupt file fails");
    ok(strstr(err, bad) != NULL, "error names the file: %s", err);
    store_close(s);
}

/* Open `path` from a fresh process (this binary, re-executed: a fork()ed
 * child would share TC's in-process table of open files). Returns the
 * child's exit status: 0 = the open failed; msg gets its error. */
static int open_elsewhere(const char *path, char *msg, size_t cap)
{
    int p[2];
    if (pipe(p) < 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        close(p[0]), close(p[1]);
        execl("/proc/self/exe", "test_store", "--try-open", path, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(p[0], msg + n, cap - 1 - n)) > 0) n += (size_t)r;
    msg[n] = 0;
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int try_open_main(const char *path)
{
    char err[KUMO_ERRLEN];
    store *s = store_open(path, err);
    if (s) {
        store_close(s);
        return 1;
    }
    printf("%s", err);
    return 0;
}

static void test_lock(void)
{
    char err[KUMO_ERRLEN], msg[KUMO_ERRLEN * 2];
    const char *path = path_in("locked.tch");
    store *s = store_open(path, err);
    ok(s != NULL, "open for the lock test");
    if (!s) return;
    is_int(open_elsewhere(path, msg, sizeof(msg)), 0, "another process cannot open a database in use");
    ok(strstr(msg, path) && strstr(msg, "lock"), "its error names the file and the lock: %s", msg);
    is_int(store_backup(s, path_in("locked-backup.tch"), err), 0, "backup while locked");
    is_int(open_elsewhere(path, msg, sizeof(msg)), 0, "the database is still locked after a backup");
    store_close(s);
    is_int(open_elsewhere(path, msg, sizeof(msg)), 1, "after store_close another process can open it");
}

static void test_put_get(store *s)
{
    char err[KUMO_ERRLEN];
    uint8_t v[64];
    size_t n = mkval(v, 100, "hello");
    is_int(store_put(s, "k1", 2, v, n, err), 0, "put");
    size_t vlen = 0;
    void *got = store_get(s, "k1", 2, &vlen);
    ok(got && vlen == n && memcmp(got, v, n) == 0, "get returns the bytes put");
    free(got);
    vlen = 99;
    got = store_get(s, "nope", 4, &vlen);
    ok(got == NULL && vlen == 0, "get of a missing key: NULL, length 0");

    is_int(store_put(s, "empty", 5, "", 0, err), 0, "put of a zero-length value");
    got = store_get(s, "empty", 5, &vlen);
    ok(got != NULL && vlen == 0, "a zero-length record is present, not absent");
    free(got);
}

static void test_update(store *s)
{
    char err[KUMO_ERRLEN];
    uint8_t v[64];
    size_t n;

    n = mkval(v, 1000, "first");
    is_int(store_update(s, "u", 1, v, n, err), 1, "update of a missing key writes");
    n = mkval(v, 2000, "newer");
    is_int(store_update(s, "u", 1, v, n, err), 1, "newer clocktime is written");
    is_int(stored_ct(s, "u", NULL), 2000, "stored clocktime is the newer");
    n = mkval(v, 1500, "older");
    is_int(store_update(s, "u", 1, v, n, err), 0, "older clocktime is ignored");
    n = mkval(v, 2000, "equal");
    is_int(store_update(s, "u", 1, v, n, err), 0, "equal clocktime is ignored");
    size_t vlen;
    uint8_t *got = store_get(s, "u", 1, &vlen);
    ok(got && vlen == RECORD_VALUE_HEADER + 5 && memcmp(got + RECORD_VALUE_HEADER, "newer", 5) == 0,
       "the newer value is intact");
    free(got);

    uint8_t tomb[RECORD_TOMBSTONE];
    record_tombstone(tomb, 3000);
    is_int(store_update(s, "u", 1, tomb, sizeof(tomb), err), 1, "a newer tombstone beats a value");
    size_t len;
    is_int(stored_ct(s, "u", &len), 3000, "tombstone clocktime stored");
    is_int(len, RECORD_TOMBSTONE, "stored record is the 8-byte tombstone");
    n = mkval(v, 2500, "zombie");
    is_int(store_update(s, "u", 1, v, n, err), 0, "an older value does not resurrect a deleted key");
    stored_ct(s, "u", &len);
    is_int(len, RECORD_TOMBSTONE, "still a tombstone");
    n = mkval(v, 3001, "reborn");
    is_int(store_update(s, "u", 1, v, n, err), 1, "a value newer than the tombstone is written");

    record_tombstone(tomb, 10);
    is_int(store_update(s, "t", 1, tomb, sizeof(tomb), err), 1, "tombstone for a missing key is stored");
    err[0] = 0;
    is_int(store_update(s, "t", 1, "abc", 3, err), -1, "update with fewer than 8 bytes is an error");
    ok(err[0] != 0, "with a message: %s", err);
}

typedef struct modify_case {
    store_verdict verdict;
    const char *write;
    int calls;
    size_t seen_len;
    bool seen_null;
} modify_case;

static store_verdict modify_fn(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    modify_case *m = arg;
    m->calls++;
    m->seen_null = old == NULL;
    m->seen_len = oldlen;
    if (m->verdict == STORE_WRITE) {
        *out = m->write;
        *outlen = strlen(m->write);
    }
    return m->verdict;
}

static void test_modify(store *s)
{
    char err[KUMO_ERRLEN];
    modify_case m = {STORE_WRITE, "0123456789abc", 0, 0, false};
    is_int(store_modify(s, "m", 1, modify_fn, &m, err), STORE_WRITE, "modify WRITE on a missing key");
    ok(m.calls == 1 && m.seen_null && m.seen_len == 0, "fn saw NULL, 0 for a missing key");
    size_t vlen;
    void *got = store_get(s, "m", 1, &vlen);
    ok(got && vlen == 13 && memcmp(got, "0123456789abc", 13) == 0, "WRITE stored fn's bytes");
    free(got);

    m = (modify_case){STORE_KEEP, NULL, 0, 0, false};
    is_int(store_modify(s, "m", 1, modify_fn, &m, err), STORE_KEEP, "modify KEEP");
    ok(!m.seen_null && m.seen_len == 13, "fn saw the current bytes");
    got = store_get(s, "m", 1, &vlen);
    ok(got && vlen == 13, "KEEP left the record");
    free(got);

    m = (modify_case){STORE_REMOVE, NULL, 0, 0, false};
    is_int(store_modify(s, "m", 1, modify_fn, &m, err), STORE_REMOVE, "modify REMOVE");
    got = store_get(s, "m", 1, &vlen);
    ok(got == NULL, "REMOVE removed the record");
    m = (modify_case){STORE_REMOVE, NULL, 0, 0, false};
    is_int(store_modify(s, "m", 1, modify_fn, &m, err), STORE_REMOVE, "REMOVE of a missing key is fine");

    /* A present key goes through one tchdbputproc: a WRITE over it too. */
    store_put(s, "m", 1, "old", 3, err);
    m = (modify_case){STORE_WRITE, "newer", 0, 0, false};
    is_int(store_modify(s, "m", 1, modify_fn, &m, err), STORE_WRITE, "modify WRITE over a present key");
    got = store_get(s, "m", 1, &vlen);
    ok(m.calls == 1 && m.seen_len == 3 && got && vlen == 5 && memcmp(got, "newer", 5) == 0,
       "fn asked once with the old bytes, its bytes stored");
    free(got);

    /* Blind: fn is asked as if there were nothing, and its verdict applies
     * over what there is. */
    m = (modify_case){STORE_WRITE, "blind", 0, 0, false};
    is_int(store_modify_blind(s, "m", 1, modify_fn, &m, err), STORE_WRITE, "blind WRITE over a present key");
    got = store_get(s, "m", 1, &vlen);
    ok(m.calls == 1 && m.seen_null && got && vlen == 5 && memcmp(got, "blind", 5) == 0,
       "blind: fn saw no record, its bytes replaced the old ones");
    free(got);
    m = (modify_case){STORE_REMOVE, NULL, 0, 0, false};
    is_int(store_modify_blind(s, "m", 1, modify_fn, &m, err), STORE_REMOVE, "blind REMOVE");
    ok(store_get(s, "m", 1, &vlen) == NULL, "blind REMOVE removed the record");
    m = (modify_case){STORE_WRITE, "fresh", 0, 0, false};
    is_int(store_modify_blind(s, "b", 1, modify_fn, &m, err), STORE_WRITE, "blind WRITE of a missing key");
    got = store_get(s, "b", 1, &vlen);
    ok(got && vlen == 5, "blind WRITE stored it");
    free(got);
}

static void test_remove_if_older(store *s)
{
    char err[KUMO_ERRLEN];
    uint8_t tomb[RECORD_TOMBSTONE];
    record_tombstone(tomb, 500);
    store_put(s, "r", 1, tomb, sizeof(tomb), err);
    is_int(store_remove_if_older(s, "r", 1, 499, err), 0, "newer record kept");
    ok(stored_ct(s, "r", NULL) == 500, "still there");
    is_int(store_remove_if_older(s, "r", 1, 500, err), 1, "record with clocktime == ct removed");
    size_t len;
    stored_ct(s, "r", &len);
    is_int(len, 0, "gone");
    is_int(store_remove_if_older(s, "r", 1, 9999, err), 0, "missing key: nothing removed");
    store_put(s, "r", 1, tomb, sizeof(tomb), err);
    is_int(store_remove_if_older(s, "r", 1, 501, err), 1, "older record removed");
}

/* store_mend: newer wins as in store_update, and a record of the same
 * clocktime with other bytes is overwritten too. */
static void test_mend(store *s)
{
    char err[KUMO_ERRLEN];
    uint8_t good[64], bad[64], old[64];
    size_t n = mkval(good, 700, "the right bytes"), vlen;
    mkval(bad, 700, "the wrong bytes");
    mkval(old, 699, "the right bytes");
    store_put(s, "mend", 4, bad, n, err);
    is_int(store_update(s, "mend", 4, good, n, err), 0, "update: the same clocktime with other bytes is kept");
    is_int(store_mend(s, "mend", 4, good, n, err), 1, "mend: ... is overwritten");
    void *got = store_get(s, "mend", 4, &vlen);
    ok(got && vlen == n && memcmp(got, good, n) == 0, "the mended bytes are stored");
    free(got);
    is_int(store_mend(s, "mend", 4, good, n, err), 0, "mend with the same bytes: nothing written");
    is_int(store_mend(s, "mend", 4, old, n, err), 0, "mend with an older record: nothing written");
    is_int(store_mend(s, "mend-new", 8, good, n, err), 1, "mend of a missing key writes it");
}

typedef struct walk {
    store *s;
    int seen, seen_w;
    int tombstones;
    bool put_failed;
} walk;

static int walk_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    walk *w = arg;
    char err[KUMO_ERRLEN];
    (void)val;
    if (klen > 1 && ((const char *)key)[0] == 'w') {
        w->seen_w++;
        /* Write from inside the walk: rewrite this record and add another. */
        uint8_t v[64];
        size_t n = mkval(v, 7, "rewritten-by-walk");
        if (store_put(w->s, key, klen, v, n, err) < 0) w->put_failed = true;
        char nk[32];
        int nl = snprintf(nk, sizeof(nk), "x%.*s", (int)klen, (const char *)key);
        if (store_put(w->s, nk, (size_t)nl, v, n, err) < 0) w->put_failed = true;
        uint8_t tomb[RECORD_TOMBSTONE];
        record_tombstone(tomb, 1);
        if (store_update(w->s, key, klen, tomb, sizeof(tomb), err) < 0) w->put_failed = true;
    }
    if (vlen == RECORD_TOMBSTONE) w->tombstones++;
    w->seen++;
    return 0;
}

static int stop_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen, (void)val, (void)vlen;
    return ++*(int *)arg == 3;
}

static int remove_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)val, (void)vlen;
    store *s = arg;
    char err[KUMO_ERRLEN];
    return store_remove_if_older(s, key, klen, UINT64_MAX, err) < 0;
}

static void test_iterate(void)
{
    char err[KUMO_ERRLEN];
    store *s = store_open(path_in("walk.tch"), err);
    ok(s != NULL, "open walk.tch");
    if (!s) return;
    uint8_t v[64];
    size_t n = mkval(v, 5, "v");
    for (int i = 0; i < 200; i++) {
        char k[16];
        int kl = snprintf(k, sizeof(k), "w%03d", i);
        store_put(s, k, (size_t)kl, v, n, err);
    }
    uint8_t tomb[RECORD_TOMBSTONE];
    record_tombstone(tomb, 9);
    store_put(s, "dead", 4, tomb, sizeof(tomb), err);
    is_int(store_count(s), 201, "count includes the tombstone");
    ok(store_file_size(s) > 0, "file size is known");

    walk w = {s, 0, 0, 0, false};
    is_int(store_iterate(s, walk_fn, &w, err), 0, "iterate with writes from the callback");
    ok(!w.put_failed, "store_put/store_update from inside the callback work");
    ok(w.seen_w >= 200, "every original record seen (%d)", w.seen_w);
    ok(w.tombstones >= 1, "tombstones are visited too");
    is_int(store_count(s), 401, "records added by the callback are there");

    int count = 0;
    is_int(store_iterate(s, stop_fn, &count, err), 0, "iterate stops when fn returns 1");
    is_int(count, 3, "after three records");

    is_int(store_iterate(s, remove_fn, s, err), 0, "iterate removing every record it visits");
    is_int(store_count(s), 0, "removing the visited record does not derail the walk");
    store_close(s);
}

typedef struct compare {
    store *other;
    int records, differ;
} compare;

static int compare_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    compare *c = arg;
    size_t olen;
    void *o = store_get(c->other, key, klen, &olen);
    if (!o || olen != vlen || memcmp(o, val, vlen) != 0) c->differ++;
    free(o);
    c->records++;
    return 0;
}

static void test_backup(store *s)
{
    char err[KUMO_ERRLEN];
    const char *dst = path_in("backup.tch");
    is_int(store_backup(s, dst, err), 0, "backup");
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", dst);
    ok(access(tmp, F_OK) < 0, "no .tmp left behind");
    store *b = store_open(dst, err);
    ok(b != NULL, "backup opens");
    if (!b) return;
    is_int(store_count(b), store_count(s), "backup has as many records");
    compare fwd = {s, 0, 0}, back = {b, 0, 0};
    is_int(store_iterate(b, compare_fn, &fwd, err), 0, "walk the backup");
    is_int(store_iterate(s, compare_fn, &back, err), 0, "walk the original");
    ok(fwd.records > 0 && fwd.records == back.records, "both walks saw %d records", fwd.records);
    is_int(fwd.differ + back.differ, 0, "every record is the same in both");
    store_close(b);

    err[0] = 0;
    is_int(store_backup(s, path_in("no-such-dir/backup.tch"), err), -1, "backup into a missing directory fails");
    ok(strstr(err, "no-such-dir") != NULL, "error names the file: %s", err);
    uint8_t v[64];
    size_t vn = mkval(v, 1, "after");
    is_int(store_put(s, "after-failed-backup", 19, v, vn, err), 0, "the database still works after it");
    uint8_t tomb[RECORD_TOMBSTONE];
    record_tombstone(tomb, 2);
    is_int(store_update(s, "brand-new-key", 13, tomb, sizeof(tomb), err), 1, "and updates of missing keys still work");
}

/* Counts records. */
static int count_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen, (void)val, (void)vlen;
    ++*(int *)arg;
    return 0;
}

#define RACE_KEYS 16
#define RACE_ROUNDS 20000

typedef struct racer {
    store *s;
    unsigned seed;
    uint64_t max[RACE_KEYS];
    int errors;
} racer;

/* One step of a writer: a random key gets a random value or tombstone. */
static void race_step(racer *r)
{
    char err[KUMO_ERRLEN];
    {
        int k = rand_r(&r->seed) % RACE_KEYS;
        uint64_t ct = (uint64_t)rand_r(&r->seed) << 16 | (uint64_t)(rand_r(&r->seed) & 0xffff);
        uint8_t v[64];
        size_t n;
        if (rand_r(&r->seed) % 4 == 0) {
            record_tombstone(v, ct);
            n = RECORD_TOMBSTONE;
        } else {
            n = mkval(v, ct, "race");
        }
        char key[16];
        int kl = snprintf(key, sizeof(key), "race%d", k);
        if (store_update(r->s, key, (size_t)kl, v, n, err) < 0) r->errors++;
        if (ct > r->max[k]) r->max[k] = ct;
    }
}

/* Two writers interleaved at random, as replication and a replace stream
 * interleave on a server's one thread (the store has one owner thread;
 * store.c says why). */
static void test_interleaved(store *s)
{
    unsigned seed = (unsigned)getpid();
    const char *env = getenv("KUMO_TEST_SEED");
    if (env) seed = (unsigned)strtoul(env, NULL, 10);
    diag("interleaving seed %u (set KUMO_TEST_SEED to repeat)", seed);
    racer a = {s, seed, {0}, 0}, b = {s, seed * 2654435761u + 1, {0}, 0};
    unsigned pick = seed;
    for (int i = 0; i < 2 * RACE_ROUNDS; i++) race_step(rand_r(&pick) % 2 ? &a : &b);
    is_int(a.errors + b.errors, 0, "no errors while interleaving");
    int bad = 0;
    for (int k = 0; k < RACE_KEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "race%d", k);
        uint64_t want = a.max[k] > b.max[k] ? a.max[k] : b.max[k];
        if (stored_ct(s, key, NULL) != want) bad++;
    }
    is_int(bad, 0, "every key holds the max clocktime written by either thread");
}

/* ---- the reservation under the map ---- */

static long long blocks_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_blocks * 512 : -1;
}

/* Write 1 KiB records until store_put refuses one or `limit` bytes of file
 * are reached; returns the number written. */
static int fill(store *s, long long limit, char *err)
{
    uint8_t key[32], val[1100];
    char data[1025];
    memset(data, 'x', 1024);
    data[1024] = 0;
    size_t vlen = mkval(val, 1, data);
    int n = 0;
    while ((long long)store_file_size(s) < limit) {
        int klen = snprintf((char *)key, sizeof(key), "fill-%08d", n);
        if (store_put(s, key, (size_t)klen, val, vlen, err) < 0) break;
        n++;
    }
    return n;
}

static void test_reserve_ahead(void)
{
    char err[KUMO_ERRLEN];
    const char *path = path_in("grow.tch");
    store *s = store_open(path, err);
    ok(s != NULL, "open grow.tch");
    if (!s) return;
    long long size0 = (long long)store_file_size(s);
    ok(blocks_of(path) >= size0 + (64LL << 20), "64 MiB past the end reserved at open (%lld bytes of blocks for %lld)",
       blocks_of(path), size0);
    int n = fill(s, size0 + (48LL << 20), err);
    long long size1 = (long long)store_file_size(s);
    ok(size1 >= size0 + (48LL << 20), "%d records written, file at %lld bytes", n, size1);
    ok(blocks_of(path) >= size1 + (32LL << 20), "the reservation ran ahead: %lld bytes of blocks", blocks_of(path));
    store_close(s);
}

/* New records land in pages that were mapped ahead of them (store.c
 * grow_file): the file runs at least 1 MiB past the records, and those pages
 * are in memory before anything is written there. When the database
 * closes, Tokyo Cabinet cuts the file back to its records, and every
 * record reads back. */
static void test_grow_ahead(void)
{
    char err[KUMO_ERRLEN];
    const char *path = path_in("ahead.tch");
    store *s = store_open(path, err);
    ok(s != NULL, "open ahead.tch");
    if (!s) return;
    int n = fill(s, (long long)store_file_size(s) + (3LL << 20), err);
    long long records = (long long)store_file_size(s);
    struct stat st;
    ok(stat(path, &st) == 0 && st.st_size >= records + (1LL << 20),
       "%d records end at %lld bytes, the file runs ahead to %lld", n, records, (long long)st.st_size);
    long pg = sysconf(_SC_PAGESIZE);
    long long from = (records + pg - 1) / pg * pg, len = (long long)st.st_size - from;
    int fd = open(path, O_RDONLY);
    void *map = fd >= 0 && len > 0 ? mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, from) : MAP_FAILED;
    size_t pages = len > 0 ? (size_t)(len / pg) : 0, resident = 0;
    unsigned char *vec = pages ? calloc(pages, 1) : NULL;
    if (map != MAP_FAILED && vec && mincore(map, (size_t)len, vec) == 0)
        for (size_t i = 0; i < pages; i++) resident += vec[i] & 1;
    ok(pages >= 128 && resident == pages, "the %zu pages past the records are in memory already (%zu are)", pages,
       resident);
    free(vec);
    if (map != MAP_FAILED) munmap(map, (size_t)len);
    if (fd >= 0) close(fd);
    store_close(s);
    ok(stat(path, &st) == 0 && st.st_size == records, "closed: the file is cut back to its records (%lld bytes)",
       (long long)st.st_size);
    s = store_open(path, err);
    int back = 0;
    for (int i = 0; s && i < n; i++) {
        char key[32];
        int klen = snprintf(key, sizeof(key), "fill-%08d", i);
        size_t vlen = 0;
        void *v = store_get(s, key, (size_t)klen, &vlen);
        back += v && vlen > 1000;
        free(v);
    }
    is_int(back, n, "every record reads back after a reopen");
    store_close(s);
}

/* In a child: a 96 MiB tmpfs of its own, a database filling it. Exit 0 when
 * the writes were refused with an error and everything written reads back. */
static int full_disk_child(const char *mnt)
{
    char err[KUMO_ERRLEN], path[600];
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("kumo-test", mnt, "tmpfs", 0, "size=96m") < 0)
        return 77;
    snprintf(path, sizeof(path), "%s/full.tch", mnt);
    store *s = store_open(path, err);
    if (!s) return 2;
    int n = fill(s, 1LL << 30, err);
    printf("# %d records written, then: %s\n", n, err);
    if (!strstr(err, "no space left")) return 3;
    store_close(s);
    s = store_open(path, err);
    if (!s) return 4;
    int back = (int)store_count(s);
    store_close(s);
    printf("# %d records after reopening\n", back);
    return back == n && n > 1000 ? 0 : 5;
}

static void test_full_disk(void)
{
    if (geteuid() != 0) {
        skip("a full filesystem: needs root for a tmpfs");
        return;
    }
    const char *mnt = path_in("mnt");
    mkdir(mnt, 0700);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = full_disk_child(mnt);
        fflush(stdout);
        _exit(rc);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        skip("a full filesystem: no mount namespace here");
        return;
    }
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a full filesystem refuses writes, no SIGBUS, the rest reads back (%s %d)",
       WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    rmdir(mnt);
}

/* Walks in steps while records are removed and written between the steps,
 * with sizes that make TC reuse, merge and split free blocks behind the
 * walk's position: none of that is damage. */
static int noop_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen, (void)val, (void)vlen;
    ++*(int *)arg;
    return 0;
}

static void test_walk_races(void)
{
    char err[KUMO_ERRLEN];
    store *s = store_open(path_in("race.tch"), err);
    ok(s != NULL, "open race.tch");
    if (!s) return;
    unsigned seed = 777;
    uint8_t v[2048];
    memset(v, 'r', sizeof(v));
    for (int i = 0; i < 4000; i++) {
        char k[16];
        int kl = snprintf(k, sizeof(k), "r%05d", i);
        put_be64(v, 1);
        store_put(s, k, (size_t)kl, v, 16 + (size_t)(rand_r(&seed) % 600), err);
    }
    int visited = 0, walks = 0, failed = 0;
    for (int w = 0; w < 8; w++) {
        if (store_walk_begin(s, err) != 0) break;
        walks++;
        int rc;
        while ((rc = store_walk_step(s, noop_fn, &visited, 1 + (size_t)(rand_r(&seed) % 7), SIZE_MAX, err)) == 1) {
            for (int j = 0; j < 8; j++) {
                char k[16];
                int kl = snprintf(k, sizeof(k), "r%05d", rand_r(&seed) % 4000);
                if (rand_r(&seed) % 3 == 0) {
                    store_remove_if_older(s, k, (size_t)kl, UINT64_MAX, err);
                } else {
                    put_be64(v, 2);
                    failed += store_put(s, k, (size_t)kl, v, 16 + (size_t)(rand_r(&seed) % 2000), err) < 0;
                }
            }
        }
        failed += rc < 0;
    }
    /* A delete walk's pattern: each visited record removed as it is
     * visited, and larger records written between the steps, which TC may
     * put in the merged free blocks behind the walk, over its position. */
    for (int w = 0; w < 4; w++) {
        if (store_walk_begin(s, err) != 0) break;
        walks++;
        int rc;
        while ((rc = store_walk_step(s, remove_fn, s, 1 + (size_t)(rand_r(&seed) % 5), SIZE_MAX, err)) == 1) {
            for (int j = 0; j < 6; j++) {
                char k[16];
                int kl = snprintf(k, sizeof(k), "n%06d", rand_r(&seed) % 100000);
                put_be64(v, 3);
                failed += store_put(s, k, (size_t)kl, v, 16 + (size_t)(rand_r(&seed) % 2000), err) < 0;
            }
        }
        failed += rc < 0;
    }
    uint64_t spots, bytes;
    store_damage(s, &spots, &bytes);
    ok(walks == 12 && failed == 0, "12 walks in steps, with removes and writes of all sizes between the steps");
    ok(spots == 0, "none of it counted as damage (%llu spots, %llu bytes; %d records visited)",
       (unsigned long long)spots, (unsigned long long)bytes, visited);
    store_close(s);
}

/* ---- walks over a damaged file ---- */

#define DMG_RECORDS 3000

static size_t dmg_value(uint8_t *buf, int i)
{
    char data[64];
    snprintf(data, sizeof(data), "value-of-d%05d-%0*d", i, i % 40, 0);
    return mkval(buf, (uint64_t)i + 1, data);
}

typedef struct tally {
    int records, wrong;
} tally;

/* Every record a walk hands out must be one that was written, intact. */
static int tally_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    tally *t = arg;
    char k[16];
    int i;
    uint8_t want[128];
    t->records++;
    if (klen >= sizeof(k) || (memcpy(k, key, klen), k[klen] = 0, sscanf(k, "d%d", &i) != 1)) {
        t->wrong++;
        return 0;
    }
    size_t n = dmg_value(want, i);
    if (n != vlen || memcmp(want, val, n) != 0) t->wrong++;
    return 0;
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int rc = a && b ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof(buf), a)) > 0)
        if (fwrite(buf, 1, n, b) != n) rc = -1;
    if (a) fclose(a);
    if (b && fclose(b) != 0) rc = -1;
    return rc;
}

/* Offset of the record of key `k` in the file at path: its key bytes are
 * preceded by a 22-byte header (magic, hash, two 64-bit links, padding size
 * and two one-byte lengths), which starts with the record magic 0xc8. */
static long record_offset(const char *path, const char *k)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f), found = -1;
    char *buf = malloc((size_t)size);
    fseek(f, 0, SEEK_SET);
    if (buf && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        size_t kl = strlen(k);
        for (long i = 22; i + (long)kl <= size && found < 0; i++)
            if (memcmp(buf + i, k, kl) == 0 && (uint8_t)buf[i - 22] == 0xc8) found = i - 22;
    }
    free(buf);
    fclose(f);
    return found;
}

static int patch(const char *path, long off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t w = pwrite(fd, bytes, n, off);
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}

typedef struct walk_result {
    int rc, records, wrong;
    uint64_t spots, bytes;
} walk_result;

/* Walk `path` in a child: Tokyo Cabinet's own iterator exits the process
 * on some damage and loops forever on other, and a test must report that,
 * not die of it. Returns the child's wait status; *r filled if it got that
 * far. */
static int walk_in_child(const char *path, walk_result *r)
{
    int fds[2];
    memset(r, 0, sizeof(*r));
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char err[KUMO_ERRLEN];
        close(fds[0]);
        alarm(30);
        store *s = store_open(path, err);
        walk_result w = {-2, 0, 0, 0, 0};
        if (s) {
            tally t = {0, 0};
            w.rc = store_iterate(s, tally_fn, &t, err);
            w.records = t.records;
            w.wrong = t.wrong;
            store_damage(s, &w.spots, &w.bytes);
            store_close(s);
        }
        _exit(write(fds[1], &w, sizeof(w)) == sizeof(w) ? 0 : 3);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], r, sizeof(*r));
    close(fds[0]);
    int status = -1;
    waitpid(pid, &status, 0);
    if (got != sizeof(*r)) r->rc = -3;
    return status;
}

static void check_walk(const char *what, const char *path, int min_records, int max_records, uint64_t min_bytes)
{
    walk_result r;
    int status = walk_in_child(path, &r);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the walk ends (%s %d)", what,
       WIFSIGNALED(status) ? "killed by signal" : "exit", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    is_int(r.rc, 0, "%s: the walk succeeds", what);
    ok(r.records >= min_records && r.records <= max_records, "%s: %d records visited (%d..%d)", what, r.records,
       min_records, max_records);
    is_int(r.wrong, 0, "%s: each one intact", what);
    ok(r.spots >= 1 && r.bytes >= min_bytes, "%s: the damage is counted (%llu spots, %llu bytes)", what,
       (unsigned long long)r.spots, (unsigned long long)r.bytes);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* The open-time check refuses to rebuild a file that is almost all
 * unreadable (more likely a file this build cannot read than a disk that
 * lost it all): it answers an error and leaves the file as it was. */
static void test_damage_refused(const char *clean, const uint8_t *noise, size_t nlen)
{
    char err[KUMO_ERRLEN], kept[600], tmp[600];
    const char *p = path_in("dmg-most.tch");
    long from = copy_file(clean, p) == 0 ? record_offset(p, "d00003") + 7 : -1;
    long size = file_size(p), to = size;
    int bad = from <= 0 || to <= from;
    for (long at = from; !bad && at < to; at += (long)nlen)
        bad = patch(p, at, noise, at + (long)nlen <= to ? nlen : (size_t)(to - at)) != 0;
    ok(!bad, "random bytes from record d00003 to the end (%ld..%ld of %ld)", from, to, size);
    uint8_t *before = malloc((size_t)size), *now = malloc((size_t)size);
    FILE *f = fopen(p, "rb");
    int read_ok = before && now && f && fread(before, 1, (size_t)size, f) == (size_t)size;
    if (f) fclose(f);
    store_check check;
    store *s = store_open_checked(p, &check, err);
    ok(s == NULL && strstr(err, "not rebuilding") != NULL, "open_checked refuses it: %s", s ? "(opened)" : err);
    store_close(s);
    snprintf(kept, sizeof(kept), "%s.damaged", p);
    snprintf(tmp, sizeof(tmp), "%s.salvage", p);
    f = fopen(p, "rb");
    read_ok = read_ok && f && file_size(p) == size && fread(now, 1, (size_t)size, f) == (size_t)size;
    if (f) fclose(f);
    ok(read_ok && memcmp(before, now, (size_t)size) == 0 && access(kept, F_OK) != 0 && access(tmp, F_OK) != 0,
       "the file is left as it was: not rebuilt, not moved, no salvage file left");
    free(before);
    free(now);
}

/* A torn last record, as a crash in the middle of an append leaves it: the
 * file ends inside the record, and TC's header still counts the bytes that
 * never reached the disk. The walk and the check at open must not crash
 * (TC maps the file: a read past its end would be SIGBUS) and lose only
 * that record. Run in a child, as the other damage is. */
static void test_damage_torn(const char *clean)
{
    const char *p = path_in("dmg-torn.tch");
    char err[KUMO_ERRLEN];
    store *s = copy_file(clean, p) == 0 ? store_open(p, err) : NULL;
    long end = s ? (long)store_file_size(s) : -1;
    store_close(s);
    ok(end > 0 && truncate(p, end - 20) == 0, "the file cut 20 bytes before its end (%ld), in its last record", end);
    s = store_open(p, err);
    ok(s == NULL && strstr(err, "invalid meta data") != NULL, "Tokyo Cabinet alone refuses it: %s",
       s ? "(opened)" : err);
    store_close(s);
    int status;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        store_check check;
        alarm(30);
        s = store_open_checked(p, &check, err);
        if (!s || check.spots == 0 || !check.kept[0]) {
            fprintf(stderr, "# %s\n", err);
            _exit(2);
        }
        int lost = 0, wrong = 0;
        for (int i = 0; i < DMG_RECORDS; i++) {
            char k[16];
            uint8_t v[128];
            size_t vlen, n;
            int kl = snprintf(k, sizeof(k), "d%05d", i);
            void *got = store_get(s, k, (size_t)kl, &vlen);
            n = dmg_value(v, i);
            lost += !got;
            wrong += got && (vlen != n || memcmp(got, v, n) != 0);
            free(got);
            wrong += store_put(s, k, (size_t)kl, v, n, err) < 0;
        }
        store_close(s);
        if (lost > 1 || wrong) fprintf(stderr, "# %d lost, %d wrong or not written\n", lost, wrong);
        _exit(lost <= 1 && wrong == 0 ? 0 : 3);
    }
    status = -1;
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "opened checked: at most the torn record lost, every key written again (%s %d)",
       WIFSIGNALED(status) ? "signal" : "exit", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

static void test_damage(void)
{
    char err[KUMO_ERRLEN], clean[512];
    snprintf(clean, sizeof(clean), "%s", path_in("dmg.tch")); /* path_in's buffers are reused */
    store *s = store_open(clean, err);
    ok(s != NULL, "open dmg.tch");
    if (!s) return;
    int put_failed = 0;
    for (int i = 0; i < DMG_RECORDS; i++) {
        char k[16];
        uint8_t v[128];
        int kl = snprintf(k, sizeof(k), "d%05d", i);
        size_t n = dmg_value(v, i);
        put_failed += store_put(s, k, (size_t)kl, v, n, err) < 0;
    }
    is_int(put_failed, 0, "%d records written", DMG_RECORDS);
    store_close(s);

    walk_result r;
    int status = walk_in_child(clean, &r);
    ok(WIFEXITED(status) && r.rc == 0 && r.records == DMG_RECORDS && r.spots == 0, "the undamaged file walks whole");

    /* 1. 64 KiB of random bytes in the middle of the records. */
    const char *p = path_in("dmg-random.tch");
    uint8_t noise[65536];
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof(noise); i++) noise[i] = (uint8_t)(rand_r(&seed) >> 7);
    long mid = copy_file(clean, p) == 0 ? record_offset(p, "d01000") + 7 : -1;
    ok(mid > 0 && patch(p, mid, noise, sizeof(noise)) == 0, "64 KiB of random bytes written at %ld (in record d01000)",
       mid);
    check_walk("random bytes", p, DMG_RECORDS - 1000, DMG_RECORDS - 1, sizeof(noise));

    /* 2. A record header whose sizes say 2 GiB each: TC would try to
     *    allocate them, fail, and end the process. */
    p = path_in("dmg-sizes.tch");
    long at = copy_file(clean, p) == 0 ? record_offset(p, "d01500") : -1;
    uint8_t huge[] = {0xc8, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xfe, 0xfe, 0xfe, 0x07, 0xfe, 0xfe, 0xfe, 0xfe, 0x07};
    ok(at > 0 && patch(p, at, huge, sizeof(huge)) == 0, "record d01500 (at %ld) claims 2 GiB key and value", at);
    check_walk("huge sizes", p, DMG_RECORDS - 1, DMG_RECORDS - 1, 1);

    /* 3. A free block of size 0 where a record was: TC would step over it
     *    forever. */
    p = path_in("dmg-free0.tch");
    at = copy_file(clean, p) == 0 ? record_offset(p, "d02500") : -1;
    uint8_t free0[] = {0xb0, 0, 0, 0, 0};
    ok(at > 0 && patch(p, at, free0, sizeof(free0)) == 0, "record d02500 (at %ld) turned into a free block of size 0",
       at);
    check_walk("free block of size 0", p, DMG_RECORDS - 1, DMG_RECORDS - 1, 1);

    /* 4. Opened checked, a damaged file is rebuilt from what can be read:
     *    writes to every key work again (TC's index of the damaged file led
     *    some of them into the damage), and the damaged file is kept. */
    p = path_in("dmg-random.tch");
    store_check check;
    s = store_open_checked(p, &check, err);
    ok(s != NULL, "open_checked of the file with random bytes");
    if (!s) return;
    ok(check.spots >= 1 && check.records < DMG_RECORDS && check.kept_records == check.records,
       "the check counts the damage and rebuilds from the %llu readable records (%llu kept)",
       (unsigned long long)check.records, (unsigned long long)check.kept_records);
    char kept[600];
    snprintf(kept, sizeof(kept), "%s.damaged", p);
    ok(strcmp(check.kept, kept) == 0 && access(kept, F_OK) == 0, "the damaged file is kept as %s", check.kept);
    is_int(store_count(s), check.records, "the rebuilt file holds them");
    int write_failed = 0;
    for (int i = 0; i < DMG_RECORDS; i++) {
        char k[16];
        uint8_t v[128];
        int kl = snprintf(k, sizeof(k), "d%05d", i);
        size_t n = dmg_value(v, i);
        write_failed += store_put(s, k, (size_t)kl, v, n, err) < 0;
    }
    is_int(write_failed, 0, "every key can be written again");
    store_close(s);
    s = store_open_checked(p, &check, err);
    ok(s && check.spots == 0 && check.records == DMG_RECORDS && !check.kept[0],
       "checked again: %llu records, no damage, nothing rebuilt", (unsigned long long)check.records);
    store_close(s);

    /* 5. A second incident on the same file: its damaged file is kept as
     *    <db>.damaged.1, and the first one's <db>.damaged stays as it was. */
    struct stat first, after;
    int had_first = stat(kept, &first);
    at = record_offset(p, "d02000");
    ok(had_first == 0 && at > 0 && patch(p, at + 7, noise, sizeof(noise)) == 0,
       "the rebuilt file damaged again (64 KiB at %ld)", at + 7);
    s = store_open_checked(p, &check, err);
    char kept1[600];
    snprintf(kept1, sizeof(kept1), "%s.damaged.1", p);
    ok(s && check.spots >= 1 && strcmp(check.kept, kept1) == 0 && access(kept1, F_OK) == 0,
       "rebuilt again, the damaged file kept as %s (\"%s\")", kept1, check.kept);
    ok(stat(kept, &after) == 0 && after.st_size == first.st_size && after.st_ino == first.st_ino &&
           after.st_mtime == first.st_mtime,
       "%s of the first incident is not overwritten", kept);
    store_close(s);

    test_damage_refused(clean, noise, sizeof(noise));
    test_damage_torn(clean);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--try-open") == 0) return try_open_main(argv[2]);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char err[KUMO_ERRLEN];

    test_open_errors();
    test_lock();
    test_reserve_ahead();
    test_grow_ahead();
    test_full_disk();

    store *s = store_open(path_in("main.tch"), err);
    ok(s != NULL, "open main.tch");
    if (!s) {
        diag("%s", err);
        rm_rf(dir);
        return done_testing();
    }
    test_put_get(s);
    test_update(s);
    test_modify(s);
    test_remove_if_older(s);
    test_mend(s);
    test_iterate();
    test_walk_races();
    test_damage();
    test_interleaved(s);
    test_backup(s);

    uint64_t before = store_count(s);
    store_close(s);
    s = store_open(path_in("main.tch"), err);
    ok(s != NULL, "reopen after close");
    if (s) {
        is_int(store_count(s), before, "records survive close and reopen");
        int seen = 0;
        store_iterate(s, count_fn, &seen, err);
        is_int(seen, before, "iteration sees every record after reopen");
        store_close(s);
    }
    store_close(NULL);
    ok(1, "store_close(NULL) is a no-op");

    rm_rf(dir);
    return done_testing();
}
