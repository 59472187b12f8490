/*
 * store — the Tokyo Cabinet hash database of a kumo-server (see store.h).
 *
 * Owns: one TCHDB handle opened HDBOWRITER|HDBOCREAT|HDBOLCKNB, and a second
 * descriptor of the file that reserves its blocks and holds the file lock.
 * Calls: record (clocktime of stored bytes), Tokyo Cabinet.
 * Thread rule: one thread (the server's event loop) at a time.
 *
 * Why it looks like this:
 *  - No tchdbsetmutex. With it, TC calls sched_yield(2) after every get and
 *    put (its HDBTHREADYIELD), which on a busy machine hands the CPU away on
 *    each request: measured, more than half of a server's time under a set
 *    load went to context switches. The server runs its store from one
 *    thread, so a read-compare-write (store_modify) is atomic as it is.
 *  - tchdbforeach would forbid writes from its callback. store_iterate
 *    instead steps TC's iterator with tchdbiternext3 into private copies and
 *    calls fn with nothing held. TC has one iterator per handle, so one walk
 *    at a time (`walking`): fn may call any store function except another
 *    walk. The iterator walks file offsets, so removing the
 *    record just visited is safe; a record rewritten during the walk may move
 *    behind the cursor and be seen twice (callers apply update semantics, so
 *    a second visit is harmless).
 *  - TC locks the file with fcntl(2), and POSIX drops a process's fcntl
 *    locks on a file when *any* descriptor of it is closed. tchdbcopy reads
 *    the file through its own descriptor and closes it, so after every
 *    backup the database would be open to a second kumo-server. store_backup
 *    re-takes the same whole-file write lock through `lock_fd`, kept open
 *    until store_close (tested: test_store "still locked after a backup").
 *  - A TC error other than "no record"/"exists" makes TC mark the handle
 *    fatal and freeze its error code. store_backup therefore checks that the
 *    destination can be created before handing it to tchdbcopy, so a typo'd
 *    backup path does not poison the live database handle.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <tchdb.h>

#include "log.h"
#include "record.h"
#include "xalloc.h"

/* Buckets for a database store_open creates (TC rounds up to a prime).
 * A file made beforehand with tchmgr keeps its own tuning (kumo-server(8) -s). */
#define STORE_NEW_BUCKETS 1048576
/* How much of the file Tokyo Cabinet maps when -s gives no #xmsiz. TC's own
 * default (HDBDEFXMSIZ, 64 MiB) is about 300,000 records of 100 B: past it
 * every record is a pread or pwrite, and a server's write rate halved once
 * its database outgrew the map (measured: 64,736 pwrites in 5 s of a set
 * load). Mapping costs address space, not memory: the pages are the page
 * cache a pread would have used. 32-bit builds keep TC's default. */
#define STORE_DEFAULT_XMSIZ ((int64_t)(sizeof(void *) >= 8 ? 1LL << 30 : 64LL << 20))
/* The disk reservation runs this far ahead of the file's end (see
 * "reservation" below); it is extended when less than half of it is left. */
#define STORE_RESERVE_AHEAD (64LL << 20)
/* What a record can add to the file besides its key and value: TC's record
 * header and padding. */
#define STORE_RECORD_SLACK 256
/* The file is grown this far past its records, its new pages mapped in one
 * call (see "growing the file" below); again when less than half is left. */
#define STORE_GROW_AHEAD (2LL << 20)

struct store {
    TCHDB *hdb;
    char *path;         /* the file, without "#name=value" options */
    int lock_fd;        /* see "fcntl" above and "reservation" below; -1 if not open */
    bool walking;       /* a walk holds TC's one iterator */
    uint64_t walk_prev; /* where the walk's last entry began (0: none yet) */
    uint64_t damaged;   /* damaged spots walks have stepped over */
    uint64_t damaged_bytes;
    int64_t map_end;      /* the mapped region: [0, map_end) of the file */
    int64_t reserved;     /* [0, reserved) has its disk blocks (fallocate) */
    time_t reserve_retry; /* after a failed extension, the next try */
    int64_t page;         /* the kernel's page size: madvise wants its start aligned to it */
};

/* ---- Tokyo Cabinet's yields ----
 *
 * Debian's libtokyocabinet is built with TC's test-yield hook: a global
 * counter bumped several times per call, calling sched_yield(2) every 32nd
 * or 256th bump (seen in its disassembly: _tc_dummy_cnt). Under load that
 * is a yield every few requests, and on a busy machine each one hands the
 * CPU to another process: a server spent about half its profile in
 * context switches. This definition in the executable interposes on the
 * library's call (the dynamic linker binds TC's reference to the first
 * definition, ours), and makes it the no-op a single-threaded owner of the
 * handle wants. Nothing of ours yields; glibc's own calls do not go
 * through this symbol. */
int sched_yield(void) { return 0; }

/* ---- spec parsing ---- */

/* Parse "123", "600m", "4K": decimal digits and an optional k/m/g suffix
 * (powers of 1024, as tcatoix). 0 / -1 on garbage or overflow. */
static int parse_size(const char *s, size_t len, int64_t max, int64_t *out)
{
    if (len == 0) return -1;
    int64_t mult = 1;
    switch (s[len - 1]) {
    case 'k':
    case 'K':
        mult = INT64_C(1) << 10;
        len--;
        break;
    case 'm':
    case 'M':
        mult = INT64_C(1) << 20;
        len--;
        break;
    case 'g':
    case 'G':
        mult = INT64_C(1) << 30;
        len--;
        break;
    default: break;
    }
    if (len == 0) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        if (v > (max - (s[i] - '0')) / 10) return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max / mult) return -1;
    *out = v * mult;
    return 0;
}

/* "path.tch#xmsiz=600m#rcnum=4k" → path (malloc'd), xmsiz, rcnum (-1 = not
 * given). The path ends at the first '#'. */
static int parse_spec(const char *spec, char **path, int64_t *xmsiz, int64_t *rcnum, char *err)
{
    const char *hash = strchr(spec, '#');
    size_t plen = hash ? (size_t)(hash - spec) : strlen(spec);
    if (plen == 0) return kumo_err(err, "%s: no database file name", spec);
    *xmsiz = -1;
    *rcnum = -1;
    while (hash) {
        const char *opt = hash + 1;
        const char *next = strchr(opt, '#');
        size_t olen = next ? (size_t)(next - opt) : strlen(opt);
        const char *eq = memchr(opt, '=', olen);
        size_t nlen = eq ? (size_t)(eq - opt) : olen;
        const char *val = eq ? eq + 1 : NULL;
        size_t vlen = eq ? olen - nlen - 1 : 0;
        int64_t *dst = NULL, max = 0;
        if (nlen == 5 && memcmp(opt, "xmsiz", 5) == 0) {
            dst = xmsiz;
            max = INT64_MAX;
        } else if (nlen == 5 && memcmp(opt, "rcnum", 5) == 0) {
            dst = rcnum;
            max = INT32_MAX;
        }
        if (!dst)
            return kumo_err(err, "%s: unknown database option '#%.*s' (expected #xmsiz=SIZE or #rcnum=N)",
                            spec, (int)olen, opt);
        if (!val || parse_size(val, vlen, max, dst) < 0)
            return kumo_err(err, "%s: invalid value in '#%.*s' (a number with an optional k, m or g suffix)",
                            spec, (int)olen, opt);
        hash = next;
    }
    *path = strndup(spec, plen);
    if (!*path) return kumo_err(err, "%s: out of memory", spec);
    return 0;
}

/* ---- helpers ---- */

static int tc_err(store *s, const char *path, char *err)
{
    return kumo_err(err, "%s: %s", path, tchdberrmsg(tchdbecode(s->hdb)));
}

static int check_sizes(store *s, size_t klen, size_t vlen, char *err)
{
    if (klen > INT_MAX || vlen > INT_MAX) return kumo_err(err, "%s: record too large", s->path);
    return 0;
}

static void store_free(store *s)
{
    if (s->hdb) tchdbdel(s->hdb);
    if (s->lock_fd >= 0) close(s->lock_fd); /* after TC has closed and unlocked */
    free(s->path);
    free(s);
}

/* ---- open / close ---- */

/* ---- reservation ----
 *
 * Tokyo Cabinet writes records in the first #xmsiz bytes of the file through
 * its mmap, after growing the file with ftruncate, which succeeds even on a
 * full filesystem: the write then faults and the process dies of SIGBUS.
 * So the blocks under the map are reserved (fallocate, keeping the size)
 * before TC can write there: at open up to STORE_RESERVE_AHEAD past the
 * file's end, and before a write that would come within half of that of
 * the reservation's end, another STORE_RESERVE_AHEAD. A large map therefore
 * costs no disk up front. When the filesystem cannot supply a whole
 * extension, each write reserves just the blocks it needs, and is refused
 * (the client sees SERVER_ERROR) when even those are not there; the whole
 * extension is tried again at most once a second. Past the map TC uses pwrite, which fails with ENOSPC by
 * itself. A filesystem without fallocate gets no reservation (as TC alone).
 * The descriptor stays open in lock_fd: closing it would drop TC's fcntl
 * lock. */
static bool reserve(store *s, int64_t end)
{
    if (end > s->map_end) end = s->map_end;
    if (end <= s->reserved) return true;
    if (s->lock_fd < 0) s->lock_fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (s->lock_fd >= 0 && fallocate(s->lock_fd, FALLOC_FL_KEEP_SIZE, s->reserved, end - s->reserved) == 0) {
        s->reserved = end;
        return true;
    }
    if (s->lock_fd >= 0 && (errno == EOPNOTSUPP || errno == ENOSYS)) {
        s->reserved = s->map_end; /* nothing to reserve with: as before */
        return true;
    }
    return false;
}

/* ---- growing the file ----
 *
 * TC appends a new record at the end of its records, and grows the file by
 * 32 KiB (ftruncate) when a write passes the end it knows (TCHDB.xfsiz). Each
 * new page of the map then faults on its first write: under a load of new
 * keys, one fault per twenty records of 100 B on each server, and on a
 * virtual machine a fault under load costs tens of microseconds. So the file is grown
 * STORE_GROW_AHEAD at a time, only inside the reservation (its blocks are
 * there), and the new pages are mapped writable in one madvise
 * (MADV_POPULATE_WRITE, Linux 5.14; before, it fails and the pages fault as
 * they did). TC is told through xfsiz, a field of its public TCHDB, so it
 * does not truncate the file back to its own step; it truncates the file to
 * its records when it closes. Measured: docs/scale.md, "Writes, and the
 * kernel writing them back". */
static void grow_file(store *s, int64_t end)
{
    TCHDB *hdb = s->hdb;
    int64_t have = (int64_t)hdb->xfsiz; /* 0 after open: TC has not grown it yet */
    if (have >= end + STORE_GROW_AHEAD / 2) return;
    int64_t page = s->page;
    int64_t to = (end + STORE_GROW_AHEAD + page - 1) & ~(page - 1);
    if (to > s->reserved) to = s->reserved; /* never pages without blocks: a full disk would kill us (SIGBUS) */
    if (to > s->map_end) to = s->map_end;
    int64_t from = ((int64_t)hdb->fsiz > have ? (int64_t)hdb->fsiz : have) & ~(page - 1);
    if (to <= have || to <= from || ftruncate(hdb->fd, to) < 0) return;
    hdb->xfsiz = (uint64_t)to;
#ifdef MADV_POPULATE_WRITE
    (void)madvise(hdb->map + from, (size_t)(to - from), MADV_POPULATE_WRITE);
#endif
}

/* Before TC writes `len` bytes of key and value: false (+ err) when they
 * could land in mapped space without disk blocks under it. */
static bool have_blocks(store *s, int64_t end)
{
    if (s->reserved >= s->map_end || end + STORE_RESERVE_AHEAD / 2 <= s->reserved) return true;
    time_t now = time(NULL);
    if (now >= s->reserve_retry) {
        if (reserve(s, end + STORE_RESERVE_AHEAD)) return true;
        s->reserve_retry = now + 1;
    }
    /* No room for a whole step: the blocks this write needs, if they fit. */
    return end <= s->reserved || reserve(s, end);
}

static int make_room(store *s, size_t len, char *err)
{
    int64_t end = (int64_t)tchdbfsiz(s->hdb) + (int64_t)len + STORE_RECORD_SLACK;
    if (!have_blocks(s, end)) return kumo_err(err, "%s: no space left on the device for the database to grow", s->path);
    grow_file(s, end);
    return 0;
}

static store *open_mode(const char *spec, bool readonly, char *err)
{
    char *path;
    int64_t xmsiz, rcnum;
    if (parse_spec(spec, &path, &xmsiz, &rcnum, err) < 0) return NULL;

    store *s = calloc(1, sizeof(*s));
    if (!s) {
        free(path);
        kumo_err(err, "%s: out of memory", spec);
        return NULL;
    }
    s->path = path;
    s->lock_fd = -1;
    long page = sysconf(_SC_PAGESIZE);
    s->page = page > 0 ? page : 4096;

    s->hdb = tchdbnew();
    if (!s->hdb) {
        kumo_err(err, "%s: cannot set up Tokyo Cabinet", path);
        store_free(s);
        return NULL;
    }
    s->map_end = xmsiz >= 0 ? xmsiz : STORE_DEFAULT_XMSIZ;
    tchdbsetxmsiz(s->hdb, s->map_end);
    if (rcnum >= 0) tchdbsetcache(s->hdb, (int32_t)rcnum);
    struct stat st;
    if (!readonly && stat(path, &st) < 0 && errno == ENOENT)
        tchdbtune(s->hdb, STORE_NEW_BUCKETS, -1, -1, HDBTLARGE);

    int mode = readonly ? HDBOREADER | HDBOLCKNB : HDBOWRITER | HDBOCREAT | HDBOLCKNB;
    if (!tchdbopen(s->hdb, path, mode)) {
        int ec = tchdbecode(s->hdb);
        kumo_err(err, "%s: %s%s", path, tchdberrmsg(ec),
                 ec == TCELOCK ? " (is another process using it?)" : "");
        store_free(s);
        return NULL;
    }
    if (!readonly) reserve(s, (int64_t)tchdbfsiz(s->hdb) + STORE_RESERVE_AHEAD); /* best effort */
    return s;
}

store *store_open(const char *spec, char *err) { return open_mode(spec, false, err); }

store *store_open_readonly(const char *path, char *err) { return open_mode(path, true, err); }

void store_close(store *s)
{
    if (!s) return;
    tchdbclose(s->hdb); /* syncs; on failure there is nobody left to tell */
    store_free(s);
}

const char *store_path(const store *s)
{
    return s->path;
}

/* ---- single records ---- */

void *store_get(store *s, const void *key, size_t klen, size_t *vlen)
{
    int sz = 0;
    *vlen = 0;
    if (klen > INT_MAX) return NULL;
    void *v = tchdbget(s->hdb, key, (int)klen, &sz);
    if (v) *vlen = (size_t)sz;
    return v;
}

int store_put(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err)
{
    if (check_sizes(s, klen, vlen, err) < 0 || make_room(s, klen + vlen, err) < 0) return -1;
    return tchdbput(s->hdb, key, (int)klen, val, (int)vlen) ? 0 : tc_err(s, s->path, err);
}

/* A present key is decided and written in one lookup: tchdbputproc hands
 * its record to modify_proc, which applies the verdict. An absent one
 * (putproc stores nothing without a value of its own, TCENOREC) is decided
 * after, and put with a second lookup. */
typedef struct modify_op {
    store *s;
    size_t klen;
    store_modify_fn fn;
    void *arg;
    store_verdict v;
    int rc; /* -1: refused in the callback, err set */
    char *err;
    bool called;
} modify_op;

static void *modify_proc(const void *old, int oldsz, int *sp, void *op)
{
    modify_op *m = op;
    const void *out = NULL;
    size_t outlen = 0;
    m->called = true;
    m->v = m->fn(m->arg, old, (size_t)oldsz, &out, &outlen);
    switch (m->v) {
    case STORE_KEEP: return NULL;
    case STORE_REMOVE: return (void *)-1;
    case STORE_WRITE: break;
    default:
        m->rc = kumo_err(m->err, "%s: bad verdict %d from a modify callback", m->s->path, (int)m->v);
        return NULL;
    }
    if (check_sizes(m->s, 0, outlen, m->err) < 0 || make_room(m->s, m->klen + outlen, m->err) < 0) {
        m->rc = -1;
        return NULL;
    }
    void *copy = malloc(outlen ? outlen : 1); /* TC frees it */
    if (!copy) {
        m->rc = kumo_err(m->err, "%s: out of memory", m->s->path);
        return NULL;
    }
    memcpy(copy, out, outlen);
    *sp = (int)outlen;
    return copy;
}

int store_modify(store *s, const void *key, size_t klen, store_modify_fn fn, void *arg, char *err)
{
    if (check_sizes(s, klen, 0, err) < 0) return -1;
    modify_op m = {s, klen, fn, arg, STORE_KEEP, 0, err, false};
    if (tchdbputproc(s->hdb, key, (int)klen, NULL, 0, modify_proc, &m)) return (int)m.v;
    if (m.called) {
        if (m.rc < 0) return -1;
        if (tchdbecode(s->hdb) == TCEKEEP && m.v != STORE_REMOVE) return (int)m.v;
        return tc_err(s, s->path, err);
    }
    if (tchdbecode(s->hdb) != TCENOREC) return tc_err(s, s->path, err);
    return store_modify_blind(s, key, klen, fn, arg, err);
}

int store_modify_blind(store *s, const void *key, size_t klen, store_modify_fn fn, void *arg, char *err)
{
    if (check_sizes(s, klen, 0, err) < 0) return -1;
    const void *out = NULL;
    size_t outlen = 0;
    store_verdict v = fn(arg, NULL, 0, &out, &outlen);
    switch (v) {
    case STORE_KEEP: return (int)v;
    case STORE_REMOVE:
        if (!tchdbout(s->hdb, key, (int)klen) && tchdbecode(s->hdb) != TCENOREC) return tc_err(s, s->path, err);
        return (int)v;
    case STORE_WRITE:
        if (check_sizes(s, 0, outlen, err) < 0 || make_room(s, klen + outlen, err) < 0) return -1;
        if (!tchdbput(s->hdb, key, (int)klen, out, (int)outlen)) return tc_err(s, s->path, err);
        return (int)v;
    default: return kumo_err(err, "%s: bad verdict %d from a modify callback", s->path, (int)v);
    }
}

typedef struct update_arg {
    const void *val;
    size_t vlen;
    uint64_t ct;
} update_arg;

static store_verdict update_fn(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    update_arg *u = arg;
    if (old && record_clocktime(old, oldlen) >= u->ct) return STORE_KEEP;
    *out = u->val;
    *outlen = u->vlen;
    return STORE_WRITE;
}

/* store_update and store_mend either write val or keep the record, and
 * write val where there is none, so they need one lookup, not store_modify's
 * get and put (each hashed the key and walked its bucket's chain, about a
 * thousand instructions per replicated write): tchdbputproc stores val when
 * the key is absent and asks modify_proc otherwise. The room for val is
 * made first, so a write that would be kept is refused too when the disk
 * cannot take it. 1 written, 0 kept, -1 + err. */
static int update_by(store *s, const void *key, size_t klen, const void *val, size_t vlen, store_modify_fn fn,
                     char *err)
{
    if (vlen < RECORD_TOMBSTONE)
        return kumo_err(err, "%s: update with a %zu-byte value (need a clocktime)", s->path, vlen);
    if (check_sizes(s, klen, vlen, err) < 0 || make_room(s, klen + vlen, err) < 0) return -1;
    update_arg u = {val, vlen, record_clocktime(val, vlen)};
    modify_op m = {s, klen, fn, &u, STORE_WRITE, 0, err, false};
    if (tchdbputproc(s->hdb, key, (int)klen, val, (int)vlen, modify_proc, &m)) return 1;
    if (m.called && m.rc < 0) return -1;
    return tchdbecode(s->hdb) == TCEKEEP ? 0 : tc_err(s, s->path, err);
}

int store_update(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err)
{
    return update_by(s, key, klen, val, vlen, update_fn, err);
}

static store_verdict mend_fn(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    update_arg *u = arg;
    uint64_t ct = old ? record_clocktime(old, oldlen) : 0;
    if (old && (ct > u->ct || (ct == u->ct && oldlen == u->vlen && memcmp(old, u->val, oldlen) == 0)))
        return STORE_KEEP;
    *out = u->val;
    *outlen = u->vlen;
    return STORE_WRITE;
}

int store_mend(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err)
{
    return update_by(s, key, klen, val, vlen, mend_fn, err);
}

static store_verdict remove_older_fn(void *arg, const void *old, size_t oldlen, const void **out,
                                     size_t *outlen)
{
    (void)out;
    (void)outlen;
    uint64_t ct = *(const uint64_t *)arg;
    if (old && record_clocktime(old, oldlen) <= ct) return STORE_REMOVE;
    return STORE_KEEP;
}

int store_remove_if_older(store *s, const void *key, size_t klen, uint64_t ct, char *err)
{
    int rc = store_modify(s, key, klen, remove_older_fn, &ct, err);
    return rc < 0 ? -1 : rc == STORE_REMOVE;
}

/* ---- whole database ---- */

/* ---- walking past damage ----
 *
 * Tokyo Cabinet's iterator trusts the file. At a damaged spot it stops for
 * good with "invalid record header"; worse, garbage that starts with a
 * record's magic byte has its sizes believed (an allocation of gigabytes ends
 * the process in TC's "out of memory"), and a free block of size 0 is
 * stepped over forever. So a walk reads each header itself first (rec_at),
 * steps over free blocks itself, and hands TC's iterator only an offset
 * where a sane record starts. At damage it looks ahead, one alignment unit
 * at a time, for the next offset where RESYNC_CHAIN entries in a row parse
 * (random bytes do that about never), and goes on from there. The records
 * in between are lost to this copy: counted (store_damage), logged with the
 * file and offsets, and left to the caller to repair from other copies.
 * The layout read here is TC 1.4's (tchdb.c: tchdbreadrec). */

#define TC_REC_MAGIC 0xc8       /* a record */
#define TC_FREE_MAGIC 0xb0      /* a free block: magic, 32-bit size */
#define TC_HEAD_MAX 32          /* TC's largest record header */
#define TC_KEY_MAX 65536        /* no kumofs key comes near it: a larger one is damage */
#define TC_VALUE_MAX (1u << 30) /* nor a value: TC would try to allocate what garbage claims */
#define RESYNC_CHAIN 4
#define RESYNC_CHUNK 65536

typedef struct rec_head {
    uint64_t size; /* the whole entry, header to padding */
    bool record;   /* else a free block */
} rec_head;

/* TC keeps its numbers big-endian in the file. */
static uint64_t get_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* TC's variable-length number (tcreadvnumbuf32): a byte < 0 (as signed)
 * carries 7 more bits. Returns its length, or 0 if it does not end within
 * n bytes or exceeds 32 bits. */
static size_t read_vnum(const uint8_t *p, size_t n, uint32_t *out)
{
    uint64_t num = 0, base = 1;
    for (size_t i = 0; i < n && i < 5; i++, base <<= 7) {
        int b = (int8_t)p[i];
        if (b >= 0) {
            num += (uint64_t)b * base;
            if (num > UINT32_MAX) return 0;
            *out = (uint32_t)num;
            return i + 1;
        }
        num += base * (uint64_t)(-b - 1);
    }
    return 0;
}

/* Whether a sane entry starts at `off`: its header parses and everything it
 * claims lies inside the file. */
static bool rec_at(store *s, uint64_t off, rec_head *h)
{
    TCHDB *hdb = s->hdb;
    uint64_t fsiz = hdb->fsiz;
    uint8_t b[TC_HEAD_MAX];
    if (off < hdb->frec || off >= fsiz || fsiz - off < 5) return false;
    size_t want = fsiz - off < sizeof(b) ? (size_t)(fsiz - off) : sizeof(b);
    /* Within TC's map, the bytes are there to read without a system call
     * (a walk reads one header per record). */
    ssize_t got = hdb->map && off + want <= hdb->xmsiz ? (memcpy(b, hdb->map + off, want), (ssize_t)want)
                                                       : pread(hdb->fd, b, want, (off_t)off);
    if (got < 5) return false;
    size_t n = (size_t)got;
    if (b[0] == TC_FREE_MAGIC) {
        h->size = get_be(b + 1, 4);
        h->record = false;
        return h->size >= 5 && h->size <= fsiz - off;
    }
    if (b[0] != TC_REC_MAGIC) return false;
    size_t w = hdb->ba64 ? 8 : 4, at = 2 + 2 * w + 2;
    if (n < at + 2) return false;
    uint64_t left = get_be(b + 2, w) << hdb->apow, right = get_be(b + 2 + w, w) << hdb->apow;
    if ((left && (left < hdb->frec || left >= fsiz)) || (right && (right < hdb->frec || right >= fsiz))) return false;
    uint64_t psiz = get_be(b + 2 + 2 * w, 2);
    uint32_t ksiz, vsiz;
    size_t k = read_vnum(b + at, n - at, &ksiz);
    if (!k) return false;
    at += k;
    size_t v = read_vnum(b + at, n - at, &vsiz);
    if (!v) return false;
    at += v;
    if (ksiz == 0 || ksiz > TC_KEY_MAX || vsiz > TC_VALUE_MAX) return false;
    h->size = at + (uint64_t)ksiz + vsiz + psiz;
    h->record = true;
    return h->size <= fsiz - off;
}

/* Whether a walk may go on at `off`: RESYNC_CHAIN entries in a row parse,
 * or fewer that end exactly at the end of the file. */
static bool chain_at(store *s, uint64_t off)
{
    rec_head h;
    for (int i = 0; i < RESYNC_CHAIN; i++) {
        if (!rec_at(s, off, &h)) return false;
        off += h.size;
        if (off == s->hdb->fsiz) return true;
    }
    return true;
}

/* The first offset after `bad` where a walk may go on; the end of the file
 * if there is none. Entries start at multiples of TC's alignment, and with
 * one of the two magic bytes: only those offsets are tried. */
static uint64_t resync(store *s, uint64_t bad)
{
    TCHDB *hdb = s->hdb;
    uint64_t align = hdb->align ? hdb->align : 1, fsiz = hdb->fsiz;
    uint8_t *buf = xmalloc(RESYNC_CHUNK);
    uint64_t at = (bad / align + 1) * align;
    while (at < fsiz) {
        size_t want = fsiz - at < RESYNC_CHUNK ? (size_t)(fsiz - at) : RESYNC_CHUNK;
        ssize_t got = pread(hdb->fd, buf, want, (off_t)at);
        if (got <= 0) break;
        for (uint64_t i = 0; i < (uint64_t)got; i += align)
            if ((buf[i] == TC_REC_MAGIC || buf[i] == TC_FREE_MAGIC) && chain_at(s, at + i)) {
                free(buf);
                return at + i;
            }
        at += ((uint64_t)got + align - 1) / align * align;
    }
    free(buf);
    return fsiz;
}

/* Whether the walk's position went stale rather than bad: between steps a
 * write may have changed the entries behind it (TC reuses two merged free
 * blocks for one record, or grows a record into the free block after it),
 * so an entry no longer begins where the last one said the next would. If
 * the entries from the last one visited now run past `bad` to a sane one,
 * that is where the walk goes on (*next): what it steps over was written
 * during the walk, which a walk may see or not. Real damage leaves the
 * last entry as it was, pointing at `bad` again. */
static bool moved_under_walk(store *s, uint64_t bad, uint64_t *next)
{
    rec_head h;
    uint64_t o = s->walk_prev;
    if (o == 0 || o >= bad) return false;
    while (o < bad && rec_at(s, o, &h)) o += h.size;
    if (o <= bad || o > s->hdb->fsiz || (o < s->hdb->fsiz && !rec_at(s, o, &h))) return false;
    *next = o;
    return true;
}

/* The last word before calling a spot damage: entries tile the file from
 * its first record to its end, whatever was written meanwhile, so follow
 * them from there (headers only, through the map: about 50 ms per million
 * entries, and only on suspicion). If they pass over `bad` cleanly, a write
 * moved the entries around the walk's position (TC may merge the free
 * blocks a walk left behind it and reuse them for one larger record), and
 * the walk goes on at *next. Real damage breaks the chain at `bad` or
 * before it. */
static bool tiles_past(store *s, uint64_t bad, uint64_t *next)
{
    rec_head h;
    uint64_t o = s->hdb->frec;
    while (o < bad && rec_at(s, o, &h)) o += h.size;
    if (o <= bad || o > s->hdb->fsiz || (o < s->hdb->fsiz && !rec_at(s, o, &h))) return false;
    *next = o;
    return true;
}

/* Moves TC's iterator to the next record that is safe to hand to TC, over
 * free blocks and damage. Its size in *size; false at the end of the file. */
static bool seek_record(store *s, uint64_t *size)
{
    TCHDB *hdb = s->hdb;
    rec_head h;
    uint64_t next;
    while (hdb->iter < hdb->fsiz) {
        if (rec_at(s, hdb->iter, &h)) {
            s->walk_prev = hdb->iter;
            if (h.record) {
                *size = h.size;
                return true;
            }
            hdb->iter += h.size;
            continue;
        }
        if (moved_under_walk(s, hdb->iter, &next) || tiles_past(s, hdb->iter, &next)) {
            hdb->iter = next;
            continue;
        }
        uint64_t bad = hdb->iter;
        next = resync(s, bad);
        s->damaged++;
        s->damaged_bytes += next - bad;
        log_error("%s: damaged at offset %llu: %llu bytes stepped over (the records there are lost to this copy)",
                  s->path, (unsigned long long)bad, (unsigned long long)(next - bad));
        hdb->iter = next;
    }
    return false;
}

int store_walk_begin(store *s, char *err)
{
    if (s->walking) return 1;
    if (!tchdbiterinit(s->hdb)) return tc_err(s, s->path, err);
    s->walking = true;
    s->walk_prev = 0;
    return 0;
}

int store_walk_step(store *s, store_iter_fn fn, void *arg, size_t max, size_t max_bytes, char *err)
{
    TCXSTR *k = tcxstrnew(), *v = tcxstrnew();
    int rc = 1;
    size_t bytes = 0;
    for (size_t n = 0; n < max && bytes < max_bytes; n++) {
        uint64_t size;
        if (!seek_record(s, &size)) {
            rc = 0;
            break;
        }
        uint64_t at = s->hdb->iter;
        tcxstrclear(k);
        tcxstrclear(v);
        if (!tchdbiternext3(s->hdb, k, v)) {
            if (tchdbecode(s->hdb) == TCENOREC) {
                rc = 0;
                break;
            }
            /* A header that parsed over a body TC could not read. */
            s->damaged++;
            s->damaged_bytes += size;
            log_error("%s: record at offset %llu unreadable (%s): stepped over", s->path, (unsigned long long)at,
                      tchdberrmsg(tchdbecode(s->hdb)));
            s->hdb->iter = at + size;
            continue;
        }
        bytes += (size_t)tcxstrsize(k) + (size_t)tcxstrsize(v);
        if (fn(arg, tcxstrptr(k), (size_t)tcxstrsize(k), tcxstrptr(v), (size_t)tcxstrsize(v)) != 0) {
            rc = 0;
            break;
        }
    }
    if (rc <= 0) s->walking = false;
    tcxstrdel(k);
    tcxstrdel(v);
    return rc;
}

int store_iterate(store *s, store_iter_fn fn, void *arg, char *err)
{
    int rc = store_walk_begin(s, err);
    if (rc == 1) return kumo_err(err, "%s: another walk is in progress", s->path);
    while (rc == 0 && (rc = store_walk_step(s, fn, arg, SIZE_MAX, SIZE_MAX, err)) == 1) {
    }
    return rc;
}

void store_damage(const store *s, uint64_t *spots, uint64_t *bytes)
{
    *spots = s->damaged;
    *bytes = s->damaged_bytes;
}

/* ---- the check at open ---- */

static int count_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)klen, (void)val, (void)vlen;
    ((store_check *)arg)->records++;
    return 0;
}

typedef struct salvage {
    store *to;
    char *err;
    int failed;
} salvage;

static int salvage_fn(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    salvage *x = arg;
    /* Newer wins: a resync may land on an older copy of a key that TC
     * left in a block it reused. */
    int rc = vlen >= RECORD_TOMBSTONE ? store_update(x->to, key, klen, val, vlen, x->err)
                                      : store_put(x->to, key, klen, val, vlen, x->err);
    if (rc < 0) {
        x->failed = 1;
        return 1;
    }
    return 0;
}

/* Copies every readable record of s into a new file beside it, then puts
 * that file in its place and keeps the damaged one as <path>.damaged.
 * TC's index of a damaged file leads into the damage, so writes to it fail
 * ("invalid record header") for every key whose bucket passes there: a
 * file rebuilt from its readable records has a whole index again. */
static int rebuild(store *s, store_check *out, char *err)
{
    char *tmp = NULL, *kept = NULL;
    int rc = -1, fd;
    if (asprintf(&tmp, "%s.salvage", s->path) < 0) {
        kumo_err(err, "out of memory");
        goto out;
    }
    /* An earlier incident's file is not overwritten. */
    for (int i = 0; i < 1000 && !kept; i++) {
        if ((i == 0 ? asprintf(&kept, "%s.damaged", s->path) : asprintf(&kept, "%s.damaged.%d", s->path, i)) < 0) {
            kumo_err(err, "out of memory");
            goto out;
        }
        if (access(kept, F_OK) == 0) {
            free(kept);
            kept = NULL;
        }
    }
    if (!kept) {
        kumo_err(err, "%s.damaged: 1000 of them already", s->path);
        goto out;
    }
    unlink(tmp);
    salvage x = {.err = err};
    if (!(x.to = store_open(tmp, err))) goto out;
    if (store_iterate(s, salvage_fn, &x, err) < 0 || x.failed) {
        store_close(x.to);
        unlink(tmp);
        goto out;
    }
    out->kept_records = store_count(x.to);
    store_close(x.to);
    if ((fd = open(tmp, O_RDONLY | O_CLOEXEC)) < 0 || fsync(fd) < 0) {
        kumo_err(err, "%s: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(s->path, kept) < 0) {
        kumo_err(err, "%s: rename to %s: %s", s->path, kept, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, s->path) < 0) {
        kumo_err(err, "%s: rename: %s", tmp, strerror(errno));
        if (rename(kept, s->path) < 0) /* put the damaged file back rather than leave none */
            kumo_err(err, "%s: rename: %s, and the damaged file stays at %s", tmp, strerror(errno), kept);
        unlink(tmp);
        goto out;
    }
    kumo_sync_dir(s->path);
    snprintf(out->kept, sizeof(out->kept), "%s", kept);
    rc = 0;
out:
    free(tmp);
    free(kept);
    return rc;
}

/* TC's header (tchdb.c): the magic, then at these offsets the file size
 * and the first record's offset, big-endian like the rest of the file. */
#define TC_MAGIC "ToKyO CaBiNeT"
#define TC_FSIZ_OFF 56
#define TC_FREC_OFF 64

/* A file that ends before the size its header records (a crash tore the
 * last record: the header reached the disk, the record's end did not) is
 * refused whole by TC ("invalid meta data"). Its header is made to record
 * the size there is, so TC opens it and the torn record, now running past
 * the end, is damage the walk steps over and the rebuild leaves out. true
 * when the file was such a file and was changed. */
static bool mend_short_file(const char *spec)
{
    char *path, err[KUMO_ERRLEN];
    int64_t xmsiz, rcnum;
    uint8_t h[TC_FREC_OFF + 8], be[8];
    struct stat st;
    bool mended = false;
    if (parse_spec(spec, &path, &xmsiz, &rcnum, err) < 0) return false;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 && fstat(fd, &st) == 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
        memcmp(h, TC_MAGIC, strlen(TC_MAGIC)) == 0) {
        uint64_t fsiz = get_be(h + TC_FSIZ_OFF, 8), frec = get_be(h + TC_FREC_OFF, 8), size = (uint64_t)st.st_size;
        if (size < fsiz && size >= frec) {
            for (int i = 0; i < 8; i++) be[i] = (uint8_t)(size >> (8 * (7 - i)));
            mended = pwrite(fd, be, sizeof(be), TC_FSIZ_OFF) == (ssize_t)sizeof(be) && fsync(fd) == 0;
            log_error("%s: the file ends at %llu, its header says %llu: torn at the end (a crash?); %s", path,
                      (unsigned long long)size, (unsigned long long)fsiz,
                      mended ? "its header now says so, and the check reads what is there" : strerror(errno));
        }
    }
    if (fd >= 0) close(fd);
    free(path);
    return mended;
}

store *store_open_checked(const char *spec, store_check *out, char *err)
{
    memset(out, 0, sizeof(*out));
    store *s = store_open(spec, err);
    if (!s && mend_short_file(spec)) s = store_open(spec, err);
    if (!s) return NULL;
    if (store_iterate(s, count_fn, out, err) < 0) {
        store_close(s);
        return NULL;
    }
    store_damage(s, &out->spots, &out->bytes);
    if (out->spots == 0) return s;
    char why[KUMO_ERRLEN];
    if (out->records == 0 || out->bytes > (tchdbfsiz(s->hdb) - s->hdb->frec) / 10 * 9) {
        /* Nothing, or next to nothing, readable is more likely a file this
         * build cannot read than a disk that lost it all: keep it as it is. */
        kumo_err(err, "%s: %llu of its %llu bytes of records cannot be read; not rebuilding it from the rest",
                 s->path, (unsigned long long)out->bytes, (unsigned long long)(tchdbfsiz(s->hdb) - s->hdb->frec));
        store_close(s);
        return NULL;
    }
    if (rebuild(s, out, why) < 0) {
        /* Serve from the damaged file: reads of what is left work, and the
         * caller has the damage to act on. */
        snprintf(out->rebuild_error, sizeof(out->rebuild_error), "%s", why);
        return s;
    }
    store_close(s);
    return store_open(spec, err);
}

void store_walk_abort(store *s)
{
    s->walking = false;
}

uint64_t store_count(store *s)
{
    return tchdbrnum(s->hdb);
}

uint64_t store_file_size(store *s)
{
    return tchdbfsiz(s->hdb);
}

/* Take again the lock tchdbopen took (tclock: F_WRLCK over the whole file). */
static int relock(store *s, char *err)
{
    if (s->lock_fd < 0) s->lock_fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (s->lock_fd < 0) return kumo_err(err, "%s: cannot re-take the file lock: %s", s->path, strerror(errno));
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(s->lock_fd, F_SETLK, &fl) < 0)
        return kumo_err(err, "%s: cannot re-take the file lock: %s", s->path, strerror(errno));
    return 0;
}

int store_backup(store *s, const char *dst, char *err)
{
    if (strcmp(dst, s->path) == 0) return kumo_err(err, "%s: cannot back up a database onto itself", dst);
    size_t n = strlen(dst) + sizeof(".tmp");
    char *tmp = malloc(n);
    if (!tmp) return kumo_err(err, "%s: out of memory", dst);
    snprintf(tmp, n, "%s.tmp", dst);

    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        kumo_err(err, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    close(fd);
    bool copied = tchdbcopy(s->hdb, tmp);
    if (relock(s, err) < 0) {
        unlink(tmp);
        goto out;
    }
    if (!copied) {
        tc_err(s, tmp, err);
        goto fail;
    }
    fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0) {
        kumo_err(err, "%s: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        goto fail;
    }
    close(fd);
    if (rename(tmp, dst) < 0) {
        kumo_err(err, "%s: %s", dst, strerror(errno));
        goto fail;
    }
    kumo_sync_dir(dst);
    rc = 0;
    goto out;
fail:
    unlink(tmp);
out:
    free(tmp);
    return rc;
}
