/*
 * binlog — the binary log of every daemon (-g path.mpac, kumolog(1))
 * and the decoder kumolog reads it with.
 *
 * File format (docs/protocol.md, "Binary log"): records back to back, each
 *   be32(N) | N bytes of one msgpack array
 *   [time:uint (unix microseconds), level:uint (log.h's log_level),
 *    node:str ("server@127.0.0.1:19800"), event:str ("server_lost"),
 *    fields:map (str key -> str | bin | uint | int | bool | nil | float)]
 * A reader accepts longer arrays (later additions) and rejects everything
 * else. N is at most BINLOG_MAX_RECORD; the writer clips str/bin field
 * values to BINLOG_MAX_VALUE bytes so that every record fits.
 *
 * The writer is process-wide state like the text log (log.h): set up once
 * in main() before threads start (daemon_start opens the file, and
 * binlog_set_node names the node before the first record), reopened on
 * SIGHUP (daemon.c calls binlog_reopen), so logrotate can move the file
 * away. Each record is written with a single
 * write(2) on an O_APPEND descriptor under a mutex: records from different
 * threads never interleave, and a reader never sees half of one unless the
 * disk filled up.
 *
 * Thread rule: binlog_write / binlog_event and binlog_enabled from any
 * thread; binlog_set_node, binlog_open and binlog_close at start-up/exit;
 * binlog_reopen from the thread that handles SIGHUP. The encoder and the
 * decoder are pure functions over caller buffers.
 * Calls: net (formatting addresses), msgpack.
 */
#ifndef KUMO_BINLOG_H
#define KUMO_BINLOG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo.h"
#include "log.h"
#include "net.h"

#define BINLOG_HEADER 4
#define BINLOG_MAX_RECORD (1024u * 1024)
#define BINLOG_MAX_VALUE 4096u
#define BINLOG_MAX_FIELDS 32u
#define BINLOG_MAX_NAME 256u /* node and event names, field keys */

typedef enum binlog_type {
    BINLOG_STR,   /* .str: NUL-terminated text (NULL is written as nil) */
    BINLOG_BYTES, /* .bytes/.len: a byte string (a key, a value) */
    BINLOG_UINT,  /* .u */
    BINLOG_INT,   /* .i */
    BINLOG_BOOL,  /* .b */
    BINLOG_ADDR,  /* .addr: written as the str "ip:port" */
} binlog_type;

typedef struct binlog_field {
    const char *key;
    binlog_type type;
    union {
        const char *str;
        struct {
            const void *bytes;
            size_t len;
        };
        uint64_t u;
        int64_t i;
        bool b;
        const net_addr *addr;
    };
} binlog_field;

#define BL_STR(k, s) ((binlog_field){.key = (k), .type = BINLOG_STR, .str = (s)})
#define BL_BYTES(k, p, n) ((binlog_field){.key = (k), .type = BINLOG_BYTES, .bytes = (p), .len = (n)})
#define BL_UINT(k, v) ((binlog_field){.key = (k), .type = BINLOG_UINT, .u = (uint64_t)(v)})
#define BL_INT(k, v) ((binlog_field){.key = (k), .type = BINLOG_INT, .i = (int64_t)(v)})
#define BL_BOOL(k, v) ((binlog_field){.key = (k), .type = BINLOG_BOOL, .b = (v)})
#define BL_ADDR(k, a) ((binlog_field){.key = (k), .type = BINLOG_ADDR, .addr = (a)})

/* ---- the writer ---- */

/* The node name written in every record ("server@127.0.0.1:19800");
 * copied. Call at start-up, before the first record is written (before or
 * after binlog_open), while the process has one thread. */
void binlog_set_node(const char *node);
/* The same from a role and an address: "server@127.0.0.1:19800". */
void binlog_set_node_addr(const char *role, const net_addr *addr);
/* Open path for append (created 0640). path NULL = no binary log (0).
 * 0 / -1 + err naming the file. */
int binlog_open(const char *path, char *err);
/* Reopen the same path (after logrotate moved it) and write a
 * "binlog_reopen" record into the new file. 0 (also when disabled) / -1
 * (the old descriptor stays). */
int binlog_reopen(void);
void binlog_close(void);
bool binlog_enabled(void);
/* Write one record now (time = now). Fields beyond BINLOG_MAX_FIELDS are
 * dropped. Errors are counted, never reported (a full disk must not stop
 * the daemon). */
void binlog_write(log_level lvl, const char *event, const binlog_field *fields, size_t n);
/* Records the writer failed to write since start (for metrics). */
uint64_t binlog_write_errors(void);

/* binlog_event(LOG_LVL_WARN, "server_lost", BL_ADDR("addr", &a), BL_UINT("clocktime", ct));
 * The fields are evaluated only when a binary log is open. */
#define binlog_event(lvl, event, ...)                                                                  \
    do {                                                                                               \
        if (binlog_enabled()) {                                                                        \
            const binlog_field binlog_f_[] = {{.key = NULL}, __VA_ARGS__};                             \
            binlog_write((lvl), (event), binlog_f_ + 1, sizeof(binlog_f_) / sizeof(binlog_f_[0]) - 1); \
        }                                                                                              \
    } while (0)

/* ---- the format ---- */

/* Append one whole record (header included) to sb. 0 / -1 when it would
 * exceed BINLOG_MAX_RECORD (nothing appended). */
int binlog_encode(msgpack_sbuffer *sb, uint64_t time_us, unsigned level, const char *node, const char *event,
                  const binlog_field *fields, size_t n);

typedef enum binlog_status {
    BINLOG_OK = 0,  /* a record was decoded; *used bytes consumed */
    BINLOG_MORE,    /* buf holds the start of a record only: read more */
    BINLOG_CORRUPT, /* buf does not start with a record (resync: try buf + 1) */
} binlog_status;

typedef struct binlog_record {
    uint64_t time_us;
    unsigned level;
    const char *node, *event; /* not NUL-terminated; point into `unpacked` */
    size_t node_len, event_len;
    const msgpack_object_map *fields; /* keys are str */
    msgpack_unpacked unpacked;        /* owns the objects */
} binlog_record;

/* Initialise r once before the first decode; free it with binlog_record_free. */
void binlog_record_init(binlog_record *r);
void binlog_record_free(binlog_record *r);
/* Decode the record at the start of buf. BINLOG_OK fills r (valid until the
 * next decode into r) and *used; BINLOG_CORRUPT writes a reason to err. */
binlog_status binlog_decode(const void *buf, size_t len, binlog_record *r, size_t *used, char *err);
/* "TRACE" … "FATAL", or NULL for an unknown level. */
const char *binlog_level_name(unsigned level);

#endif
