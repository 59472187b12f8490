/*
 * kumomergedb — merge database files (backups) into one (kumomergedb(1)).
 *
 *   kumomergedb <dst.tch> <src.tch> [src.tch...]
 *
 * For every key the newest write wins (the ClockTime rule replicas use),
 * deletes included: a tombstone in one backup beats an older value in
 * another. When every source is merged the tombstones are removed, so the
 * merged file holds live values only. Sources are opened read-only. Reads
 * files written by kumofs 0.4 as well (meta = 0 values). A source that is
 * missing, corrupt, or not a kumofs database is reported and nothing of it
 * is merged; the exit status is then 1.
 *
 * Calls: store, record, ring. Single-threaded.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "record.h"
#include "ring.h"
#include "store.h"

typedef struct merge {
    store *dst;
    uint64_t total, merged, skipped, foreign;
    char err[KUMO_ERRLEN];
    bool failed;
} merge;

/* A kumofs key starts with the hash of the rest; anything else is foreign. */
static bool kumofs_record(const void *key, size_t klen, const void *val, size_t vlen)
{
    if (klen <= RECORD_KEY_HEADER || vlen < RECORD_TOMBSTONE) return false;
    return record_key_hash(key, klen) == ring_hash((const char *)key + RECORD_KEY_HEADER, klen - RECORD_KEY_HEADER);
}

static int count_foreign(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    merge *m = arg;
    m->total++;
    if (!kumofs_record(key, klen, val, vlen)) m->foreign++;
    return 0;
}

static int merge_record(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    merge *m = arg;
    record_value v;
    if (!kumofs_record(key, klen, val, vlen) || record_value_parse(val, vlen, &v) < 0) {
        m->skipped++;
        return 0;
    }
    int rc = store_update(m->dst, key, klen, val, vlen, m->err);
    if (rc < 0) {
        m->failed = true;
        return 1;
    }
    if (!v.tombstone) m->merged += (uint64_t)rc;
    return 0;
}

typedef struct purge {
    store *dst;
    uint64_t removed;
    char err[KUMO_ERRLEN];
    bool failed;
} purge;

static int purge_tombstone(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    purge *p = arg;
    if (vlen != RECORD_TOMBSTONE) return 0;
    if (store_remove_if_older(p->dst, key, klen, record_clocktime(val, vlen), p->err) < 0) {
        p->failed = true;
        return 1;
    }
    p->removed++;
    return 0;
}

int main(int argc, char **argv)
{
    char err[KUMO_ERRLEN];
    if (kumo_version_asked("kumomergedb", argc, argv)) return 0;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("Usage: kumomergedb <dst.tch> <src.tch> [src.tch...]\n"
               "Merge kumofs databases (backups); the newest write of each key wins, deletes are dropped.\n");
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "kumomergedb: need a destination and at least one source\n"
                        "Usage: kumomergedb <dst.tch> <src.tch> [src.tch...]\n");
        return 64;
    }
    for (int i = 2; i < argc; i++) {
        struct stat st;
        if (strcmp(argv[i], argv[1]) == 0) {
            fprintf(stderr, "kumomergedb: %s is both the destination and a source\n", argv[i]);
            return 64;
        }
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "kumomergedb: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
    }
    /* The store's own messages (a damaged spot, with its offset) go with
     * ours, to stderr. */
    if (log_init("/dev/stderr", false, err) < 0) log_init(NULL, false, err);
    merge m = {0};
    m.dst = store_open(argv[1], err);
    if (!m.dst) {
        fprintf(stderr, "kumomergedb: %s\n", err);
        return 1;
    }
    int rc = 0;
    uint64_t merged = 0, total = 0;
    for (int i = 2; i < argc; i++) {
        printf("merging %s...", argv[i]);
        fflush(stdout);
        store *src = store_open_readonly(argv[i], err);
        if (!src) {
            printf("  failed\n");
            fprintf(stderr, "kumomergedb: %s\n", err);
            rc = 1;
            continue;
        }
        m.total = m.merged = m.skipped = m.foreign = 0;
        uint64_t spots0 = 0, bytes0 = 0;
        if (store_iterate(src, count_foreign, &m, err) < 0) {
            printf("  failed\n");
            fprintf(stderr, "kumomergedb: %s\n", err);
            rc = 1;
        } else if (m.total == 0 && store_file_size(src) == 0) {
            printf("  failed\n");
            fprintf(stderr, "kumomergedb: %s: empty file, not a database\n", argv[i]);
            rc = 1;
        } else if (m.total > 0 && m.foreign == m.total) {
            printf("  failed\n");
            fprintf(stderr, "kumomergedb: %s: not a kumofs database (no record has a kumofs key)\n", argv[i]);
            rc = 1;
        } else if ((store_damage(src, &spots0, &bytes0), store_iterate(src, merge_record, &m, err) < 0) || m.failed) {
            printf("  failed\n");
            fprintf(stderr, "kumomergedb: %s\n", m.failed ? m.err : err);
            rc = 1;
        } else {
            merged += m.merged;
            total += m.total;
            printf("  merged %llu records of %llu records\n", (unsigned long long)merged, (unsigned long long)total);
            uint64_t spots, bytes;
            store_damage(src, &spots, &bytes);
            spots -= spots0, bytes -= bytes0; /* the merge walk's; the counting walk saw the same */
            if (spots > 0) {                  /* what could be read is merged; the rest is not there */
                fprintf(stderr,
                        "kumomergedb: %s: damaged: %llu bytes in %llu places stepped over; the records there are not "
                        "in the merge\n",
                        argv[i], (unsigned long long)bytes, (unsigned long long)spots);
                rc = 1;
            }
        }
        store_close(src);
    }
    purge p = {.dst = m.dst};
    if (store_iterate(m.dst, purge_tombstone, &p, err) < 0 || p.failed) {
        fprintf(stderr, "kumomergedb: %s\n", p.failed ? p.err : err);
        rc = 1;
    }
    store_close(m.dst);
    return rc;
}
