/*
 * binlog — the binary log writer and the record codec (see binlog.h).
 *
 * Owns: the process-wide writer below (like log.c's logger, the one kind of
 * global docs/hacking.md allows): path, node name, descriptor, error count.
 * binlog_set_node/binlog_open set it once in main() before threads start;
 * afterwards only `fd` changes, in binlog_reopen, under `mu`.
 * Calls: net (address text), msgpack-c.
 * Thread rule: see binlog.h.
 *
 * Decoding untrusted bytes: msgpack-c allocates a container's element
 * array as soon as it reads the container's header, so a 5-byte header that
 * claims 2^32 elements would ask for 64 GiB. binlog_decode therefore first
 * walks the record with mp_check, which only reads bytes and refuses a
 * container that claims more elements than bytes remain, nesting deeper
 * than MP_MAX_DEPTH, or any byte that is not msgpack; only a record that
 * passes is handed to msgpack_unpack_next. Allocation is then bounded by a
 * small multiple of the record's size, itself at most BINLOG_MAX_RECORD.
 */
#include "binlog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define MP_MAX_DEPTH 16

static struct {
    pthread_mutex_t mu;
    int fd; /* -1 = closed */
    char *path;
    char node[BINLOG_MAX_NAME];
    _Atomic bool enabled;
    _Atomic uint64_t errors;
} writer = {PTHREAD_MUTEX_INITIALIZER, -1, NULL, "", false, 0};

/* ---- encoding ---- */

static size_t clip(size_t n, size_t max) { return n < max ? n : max; }

static void pack_text(msgpack_packer *pk, const char *s, size_t max)
{
    size_t n = clip(strlen(s), max);
    msgpack_pack_str(pk, n);
    if (n) msgpack_pack_str_body(pk, s, n);
}

int binlog_encode(msgpack_sbuffer *sb, uint64_t time_us, unsigned level, const char *node, const char *event,
                  const binlog_field *f, size_t n)
{
    size_t start = sb->size;
    static const char zero[BINLOG_HEADER];
    char buf[NET_ADDRSTRLEN];
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (n > BINLOG_MAX_FIELDS) n = BINLOG_MAX_FIELDS;
    msgpack_sbuffer_write(sb, zero, sizeof(zero)); /* the length, filled in below */
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, time_us);
    msgpack_pack_unsigned_int(&pk, level);
    pack_text(&pk, node ? node : "", BINLOG_MAX_NAME);
    pack_text(&pk, event ? event : "", BINLOG_MAX_NAME);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < n; i++) {
        pack_text(&pk, f[i].key ? f[i].key : "", BINLOG_MAX_NAME);
        switch (f[i].type) {
        case BINLOG_STR:
            if (f[i].str) pack_text(&pk, f[i].str, BINLOG_MAX_VALUE);
            else msgpack_pack_nil(&pk);
            break;
        case BINLOG_BYTES: {
            size_t len = f[i].bytes ? clip(f[i].len, BINLOG_MAX_VALUE) : 0;
            msgpack_pack_bin(&pk, len);
            if (len) msgpack_pack_bin_body(&pk, f[i].bytes, len);
            break;
        }
        case BINLOG_UINT: msgpack_pack_uint64(&pk, f[i].u); break;
        case BINLOG_INT: msgpack_pack_int64(&pk, f[i].i); break;
        case BINLOG_BOOL:
            if (f[i].b) msgpack_pack_true(&pk);
            else msgpack_pack_false(&pk);
            break;
        case BINLOG_ADDR:
            if (f[i].addr) pack_text(&pk, net_format(f[i].addr, buf, sizeof(buf)), BINLOG_MAX_VALUE);
            else msgpack_pack_nil(&pk);
            break;
        default: msgpack_pack_nil(&pk); break;
        }
    }
    size_t body = sb->size - start - BINLOG_HEADER;
    if (body > BINLOG_MAX_RECORD) {
        sb->size = start;
        return -1;
    }
    unsigned char *h = (unsigned char *)sb->data + start;
    h[0] = (unsigned char)(body >> 24);
    h[1] = (unsigned char)(body >> 16);
    h[2] = (unsigned char)(body >> 8);
    h[3] = (unsigned char)body;
    return 0;
}

/* ---- the writer ---- */

void binlog_set_node(const char *node)
{
    snprintf(writer.node, sizeof(writer.node), "%s", node ? node : "");
}

void binlog_set_node_addr(const char *role, const net_addr *addr)
{
    char buf[NET_ADDRSTRLEN];
    snprintf(writer.node, sizeof(writer.node), "%s@%s", role, net_format(addr, buf, sizeof(buf)));
}

bool binlog_enabled(void)
{
    return atomic_load_explicit(&writer.enabled, memory_order_relaxed);
}

uint64_t binlog_write_errors(void)
{
    return atomic_load_explicit(&writer.errors, memory_order_relaxed);
}

static int open_file(const char *path, char *err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return kumo_err(err, "%s: %s", path, strerror(errno));
    return fd;
}

int binlog_open(const char *path, char *err)
{
    binlog_close();
    if (!path) return 0;
    int fd = open_file(path, err);
    if (fd < 0) return -1;
    char *copy = strdup(path);
    if (!copy) {
        close(fd);
        return kumo_err(err, "%s: out of memory", path);
    }
    pthread_mutex_lock(&writer.mu);
    writer.fd = fd;
    writer.path = copy;
    pthread_mutex_unlock(&writer.mu);
    atomic_store(&writer.enabled, true);
    return 0;
}

int binlog_reopen(void)
{
    if (!binlog_enabled()) return 0;
    int fd = open_file(writer.path, NULL);
    if (fd < 0) {
        atomic_fetch_add(&writer.errors, 1);
        return -1;
    }
    pthread_mutex_lock(&writer.mu);
    int old = writer.fd;
    writer.fd = fd;
    pthread_mutex_unlock(&writer.mu);
    if (old >= 0) close(old);
    binlog_write(LOG_LVL_INFO, "binlog_reopen", &BL_STR("path", writer.path), 1);
    return 0;
}

void binlog_close(void)
{
    atomic_store(&writer.enabled, false);
    pthread_mutex_lock(&writer.mu);
    int old = writer.fd;
    writer.fd = -1;
    pthread_mutex_unlock(&writer.mu);
    if (old >= 0) close(old);
    free(writer.path);
    writer.path = NULL;
}

void binlog_write(log_level lvl, const char *event, const binlog_field *fields, size_t n)
{
    if (!binlog_enabled()) return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t us = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (binlog_encode(&sb, us, (unsigned)lvl, writer.node, event, fields, n) < 0) {
        atomic_fetch_add(&writer.errors, 1);
        msgpack_sbuffer_destroy(&sb);
        return;
    }
    pthread_mutex_lock(&writer.mu);
    /* One write: O_APPEND makes it land whole at the end of the file. */
    ssize_t w = writer.fd >= 0 ? write(writer.fd, sb.data, sb.size) : (ssize_t)sb.size;
    pthread_mutex_unlock(&writer.mu);
    if (w != (ssize_t)sb.size) atomic_fetch_add(&writer.errors, 1);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- decoding ---- */

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Step over one msgpack object in [*p, end) without allocating; false if it
 * is not well formed, runs past end, nests deeper than MP_MAX_DEPTH, or a
 * container claims more elements than there are bytes left. */
static bool mp_check(const uint8_t **p, const uint8_t *end, int depth)
{
    if (*p >= end || depth > MP_MAX_DEPTH) return false;
    uint8_t c = *(*p)++;
    size_t left = (size_t)(end - *p);
    uint64_t count = 0, skip = 0;
    bool map = false;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xc0 && c <= 0xc3 && c != 0xc1)) return true;
    if (c >= 0x80 && c <= 0x8f) {
        count = c & 0x0f;
        map = true;
    } else if (c >= 0x90 && c <= 0x9f) {
        count = c & 0x0f;
    } else if (c >= 0xa0 && c <= 0xbf) {
        skip = c & 0x1f;
    } else {
        static const int8_t fixed[] = {
            /* c4..df: bytes after the type byte, -N = an N-byte length field follows */
            -1, -2, -4,     /* bin 8/16/32 */
            -11, -12, -14,  /* ext 8/16/32 (length, then 1 type byte) */
            4, 8,           /* float 32/64 */
            1, 2, 4, 8,     /* uint */
            1, 2, 4, 8,     /* int */
            2, 3, 5, 9, 17, /* fixext 1/2/4/8/16 (type byte + data) */
            -1, -2, -4,     /* str 8/16/32 */
            -22, -24,       /* array 16/32 */
            -32, -34,       /* map 16/32 */
        };
        if (c == 0xc1) return false;
        int8_t k = fixed[c - 0xc4];
        if (k > 0) {
            if (left < (size_t)k) return false;
            *p += k;
            return true;
        }
        int width = (-k) % 10;
        int kind = (-k) / 10; /* 0 raw, 1 ext, 2 array, 3 map */
        if (left < (size_t)width) return false;
        uint64_t n = be(*p, width);
        *p += width;
        left -= (size_t)width;
        if (kind == 0) skip = n;
        else if (kind == 1) skip = n + 1;
        else if (kind == 2) count = n;
        else {
            count = n;
            map = true;
        }
        if (kind <= 1) {
            if (skip > left) return false;
            *p += skip;
            return true;
        }
    }
    if (skip) {
        if (skip > left) return false;
        *p += skip;
        return true;
    }
    if (map) {
        if (count > left / 2) return false;
        count *= 2;
    } else if (count > left) {
        return false;
    }
    for (uint64_t i = 0; i < count; i++)
        if (!mp_check(p, end, depth + 1)) return false;
    return true;
}

void binlog_record_init(binlog_record *r)
{
    memset(r, 0, sizeof(*r));
    msgpack_unpacked_init(&r->unpacked);
}

void binlog_record_free(binlog_record *r)
{
    msgpack_unpacked_destroy(&r->unpacked);
    msgpack_unpacked_init(&r->unpacked);
}

binlog_status binlog_decode(const void *buf, size_t len, binlog_record *r, size_t *used, char *err)
{
    const uint8_t *p = buf;
    if (len < BINLOG_HEADER) return BINLOG_MORE;
    uint64_t n = be(p, BINLOG_HEADER);
    if (n == 0 || n > BINLOG_MAX_RECORD) {
        kumo_err(err, "record length %llu out of range", (unsigned long long)n);
        return BINLOG_CORRUPT;
    }
    /* The first byte must open an array of 5 or more; checking it before
     * waiting for n bytes keeps a garbage length from stalling a resync. */
    if (len > BINLOG_HEADER && !((p[4] >= 0x95 && p[4] <= 0x9f) || p[4] == 0xdc || p[4] == 0xdd)) {
        kumo_err(err, "record is not a msgpack array of 5 or more");
        return BINLOG_CORRUPT;
    }
    if (len - BINLOG_HEADER < n) return BINLOG_MORE;
    const uint8_t *q = p + BINLOG_HEADER, *end = q + n;
    if (!mp_check(&q, end, 0) || q != end) {
        kumo_err(err, "record of %llu bytes is not one msgpack object", (unsigned long long)n);
        return BINLOG_CORRUPT;
    }
    size_t off = 0;
    msgpack_unpacked_destroy(&r->unpacked);
    msgpack_unpacked_init(&r->unpacked);
    if (msgpack_unpack_next(&r->unpacked, (const char *)p + BINLOG_HEADER, (size_t)n, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != n) {
        kumo_err(err, "record of %llu bytes does not unpack", (unsigned long long)n);
        return BINLOG_CORRUPT;
    }
    const msgpack_object *o = &r->unpacked.data;
    const msgpack_object *a = o->via.array.ptr;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 5 || a[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > 255 || a[2].type != MSGPACK_OBJECT_STR ||
        a[3].type != MSGPACK_OBJECT_STR || a[4].type != MSGPACK_OBJECT_MAP) {
        kumo_err(err, "record is not [time, level, node, event, {fields}]");
        return BINLOG_CORRUPT;
    }
    for (uint32_t i = 0; i < a[4].via.map.size; i++) {
        if (a[4].via.map.ptr[i].key.type != MSGPACK_OBJECT_STR) {
            kumo_err(err, "record has a field name that is not a string");
            return BINLOG_CORRUPT;
        }
    }
    r->time_us = a[0].via.u64;
    r->level = (unsigned)a[1].via.u64;
    r->node = a[2].via.str.ptr;
    r->node_len = a[2].via.str.size;
    r->event = a[3].via.str.ptr;
    r->event_len = a[3].via.str.size;
    r->fields = &a[4].via.map;
    *used = BINLOG_HEADER + (size_t)n;
    return BINLOG_OK;
}

const char *binlog_level_name(unsigned level)
{
    static const char *const names[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"};
    return level < sizeof(names) / sizeof(names[0]) ? names[level] : NULL;
}
