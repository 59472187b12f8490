/*
 * memproto — the memcached binary protocol: the request parser and the
 * numbers and words of a response.
 *
 * memproto_parse() is a pure, incremental function over a byte buffer. It
 * looks at the packet at the head of the buffer and either recognises one
 * whole, well-formed request, says it needs more bytes, or says what is
 * wrong with it and what the connection must do about it, as memcached 1.6
 * does (proto_bin.c, try_read_command_binary and dispatch_bin_command):
 *
 *   magic byte not 0x80          close, no answer
 *   key + extras > body          answer 0x0081, close
 *   key longer than 250 bytes    answer 0x0004, close
 *   opcode unknown               answer 0x0081, skip the body, go on
 *   (the SASL opcodes are known: the gateway answers them, see binary.c)
 *   wrong extras/key/value shape answer 0x0004, close
 *   value over the limit         answer 0x0003, skip the body, go on
 *
 * Every decision is taken from the 24-byte header alone, so nothing beyond
 * a request's own (bounded) size is ever buffered: a value is at most
 * min(value_max, MEMPROTO_VALUE_MAX) bytes, so a whole packet is at most
 * MEMPROTO_PACKET_MAX; a larger body is never waited for, only skipped.
 *
 * Where memcached leaves a request's trailing bytes to be read as the next
 * command (a value sent with STAT, TOUCH or GAT), this parser treats the
 * packet as malformed instead: the stream cannot be trusted after it.
 *
 * Nothing is allocated: key, extras and value point into the caller's
 * buffer, valid as long as it is.
 *
 * Thread rule: pure functions. Calls: nothing.
 */
#ifndef KUMO_MEMPROTO_H
#define KUMO_MEMPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEMPROTO_HEADER 24 /* bytes in a request or response header */
#define MEMPROTO_REQ_MAGIC 0x80
#define MEMPROTO_RES_MAGIC 0x81
#define MEMPROTO_KEY_MAX 250           /* memcached KEY_MAX_LENGTH */
#define MEMPROTO_EXTRAS_MAX 20         /* incr/decr: delta, initial, expiration */
#define MEMPROTO_VALUE_MAX (64u << 20) /* the largest value ever waited for (= -I's bound) */
#define MEMPROTO_PACKET_MAX (MEMPROTO_HEADER + MEMPROTO_EXTRAS_MAX + MEMPROTO_KEY_MAX + MEMPROTO_VALUE_MAX)
#define MEMPROTO_INCR_NO_CREATE 0xffffffffu /* incr/decr expiration: a miss stays a miss */

/* Request opcodes (memcached protocol_binary.h). */
enum {
    MEMPROTO_GET = 0x00,
    MEMPROTO_SET = 0x01,
    MEMPROTO_ADD = 0x02,
    MEMPROTO_REPLACE = 0x03,
    MEMPROTO_DELETE = 0x04,
    MEMPROTO_INCREMENT = 0x05,
    MEMPROTO_DECREMENT = 0x06,
    MEMPROTO_QUIT = 0x07,
    MEMPROTO_FLUSH = 0x08,
    MEMPROTO_GETQ = 0x09,
    MEMPROTO_NOOP = 0x0a,
    MEMPROTO_VERSION = 0x0b,
    MEMPROTO_GETK = 0x0c,
    MEMPROTO_GETKQ = 0x0d,
    MEMPROTO_APPEND = 0x0e,
    MEMPROTO_PREPEND = 0x0f,
    MEMPROTO_STAT = 0x10,
    MEMPROTO_SETQ = 0x11,
    MEMPROTO_ADDQ = 0x12,
    MEMPROTO_REPLACEQ = 0x13,
    MEMPROTO_DELETEQ = 0x14,
    MEMPROTO_INCREMENTQ = 0x15,
    MEMPROTO_DECREMENTQ = 0x16,
    MEMPROTO_QUITQ = 0x17,
    MEMPROTO_FLUSHQ = 0x18,
    MEMPROTO_APPENDQ = 0x19,
    MEMPROTO_PREPENDQ = 0x1a,
    MEMPROTO_VERBOSITY = 0x1b,
    MEMPROTO_TOUCH = 0x1c,
    MEMPROTO_GAT = 0x1d,
    MEMPROTO_GATQ = 0x1e,
    MEMPROTO_GATK = 0x23,
    MEMPROTO_GATKQ = 0x24,
    MEMPROTO_SASL_LIST_MECHS = 0x20,
    MEMPROTO_SASL_AUTH = 0x21,
    MEMPROTO_SASL_STEP = 0x22,
};
#define MEMPROTO_SASL_MECH_MAX 32 /* memcached's MAX_SASL_MECH_LEN */

/* Response statuses (memcached protocol_binary.h). */
enum {
    MEMPROTO_STATUS_SUCCESS = 0x0000,
    MEMPROTO_STATUS_KEY_ENOENT = 0x0001,
    MEMPROTO_STATUS_KEY_EEXISTS = 0x0002,
    MEMPROTO_STATUS_E2BIG = 0x0003,
    MEMPROTO_STATUS_EINVAL = 0x0004,
    MEMPROTO_STATUS_NOT_STORED = 0x0005,
    MEMPROTO_STATUS_DELTA_BADVAL = 0x0006,
    MEMPROTO_STATUS_AUTH_ERROR = 0x0020,
    MEMPROTO_STATUS_UNKNOWN_COMMAND = 0x0081,
    MEMPROTO_STATUS_ENOMEM = 0x0082,
};

/* What memproto_parse() found at the head of the buffer. */
typedef enum memproto_result {
    MEMPROTO_OK,          /* one whole request; consumed = 24 + body */
    MEMPROTO_NEED_MORE,   /* consumed = 0; req->need = bytes the packet needs, when known */
    MEMPROTO_BAD_MAGIC,   /* not a request packet: close without answering; consumed = 0 */
    MEMPROTO_BAD_LENGTHS, /* key + extras > body: answer UNKNOWN_COMMAND and close; consumed = 0 */
    MEMPROTO_INVALID,     /* key > 250, or a shape the opcode does not take:
                              answer EINVAL and close; consumed = 0 */
    MEMPROTO_UNKNOWN,     /* unknown opcode: answer UNKNOWN_COMMAND, then skip
                              req->swallow bytes after the consumed header */
    MEMPROTO_TOO_LARGE,   /* a storage request's value is over the limit: answer
                              E2BIG, then skip req->swallow bytes after the header */
} memproto_result;

/* A parsed request. The header fields are set for every result but
 * NEED_MORE and BAD_MAGIC; the rest only for OK. */
typedef struct memproto_request {
    uint8_t opcode; /* as sent: the response echoes it */
    uint8_t cmd;    /* the opcode without its quiet bit: GETQ -> GET, SETQ -> SET ... */
    bool quiet;     /* a quiet variant (GETQ, SETQ, ..., GATKQ) */
    uint8_t extlen;
    uint8_t datatype; /* ignored, as memcached does */
    uint16_t vbucket; /* ignored */
    uint16_t keylen;
    uint32_t bodylen;
    uint32_t opaque; /* echoed */
    uint64_t cas;
    const uint8_t *extras;
    const char *key;   /* keylen bytes, NULL when keylen is 0 */
    const char *value; /* vlen bytes: set/add/replace/append/prepend */
    size_t vlen;
    /* The extras, decoded. */
    uint32_t flags;   /* set/add/replace */
    uint32_t exptime; /* set/add/replace, touch/gat*, incr/decr, flush (0 if absent) */
    uint64_t delta;   /* incr/decr */
    uint64_t initial; /* incr/decr */
    uint32_t level;   /* verbosity */
    size_t swallow;   /* UNKNOWN, TOO_LARGE: body bytes the caller must skip */
    size_t need;      /* NEED_MORE: total bytes of the packet once its header is in; else 0 */
} memproto_request;

/* Parse the request at the head of buf[0..len). value_max: the largest
 * value a storage request may carry (clamped to MEMPROTO_VALUE_MAX).
 * Sets *consumed as described for each result; *req is overwritten. */
memproto_result memproto_parse(const void *buf, size_t len, size_t value_max, memproto_request *req,
                               size_t *consumed);

/* Write a 24-byte response header into out. opcode and opaque are echoed
 * from the request; bodylen = extlen + keylen + value bytes. */
void memproto_response_header(uint8_t out[MEMPROTO_HEADER], uint8_t opcode, uint16_t status, uint8_t extlen,
                              uint16_t keylen, uint32_t bodylen, uint32_t opaque, uint64_t cas);

/* memcached's text for an error status ("Not found", "Data exists for key."
 * ...), the value of its error responses; "Unknown error" for others. */
const char *memproto_status_text(uint16_t status);

#endif
