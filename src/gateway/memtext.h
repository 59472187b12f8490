/*
 * memtext — the memcached text protocol request parser (Ragel, memtext.rl).
 *
 * A pure, incremental function over a byte buffer: it either recognises one
 * whole request (command line plus, for storage commands, the data block and
 * its CRLF), says it needs more bytes, or says what is wrong and how many
 * bytes to skip so that the connection can go on, as memcached does.
 * Nothing is allocated: keys and data point into the caller's buffer.
 *
 * Grammar: memcached 1.6 protocol.txt. Commands: get gets gat gats set add
 * replace append prepend cas incr decr delete touch flush_all stats version
 * verbosity quit shutdown cache_memlimit debugtime, and the meta commands mg
 * ms md ma mn me (their flags are returned as raw tokens for the gateway to
 * interpret).
 * Keys: 1..250 bytes of anything but space, NUL, CR and LF.
 * A command line ends in "\r\n" or a bare "\n" (memcached accepts both); a
 * data block must be followed by exactly "\r\n".
 *
 * Thread rule: pure. Calls: nothing.
 */
#ifndef KUMO_MEMTEXT_H
#define KUMO_MEMTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEMTEXT_MAX_KEYS 256        /* keys in one get line */
#define MEMTEXT_MAX_LINE 65536      /* a command line longer than this is an error */
#define MEMTEXT_LONG_LINE 2048      /* memcached's bound on a line without its newline
                                      yet, get and gets excepted: HANGUP beyond it */
#define MEMTEXT_MAX_TOKENS 24       /* meta-command flags */
#define MEMTEXT_MAX_KEY 250         /* bytes in a key (memcached KEY_MAX_LENGTH) */
#define MEMTEXT_MAX_DATA (1u << 30) /* data block bytes the parser will wait for at
                                       all; the gateway applies the real item-size
                                       limit itself (see memtext_request.need) */

typedef enum memtext_cmd {
    MEMTEXT_GET = 1,
    MEMTEXT_GETS,
    MEMTEXT_GAT,
    MEMTEXT_GATS,
    MEMTEXT_SET,
    MEMTEXT_ADD,
    MEMTEXT_REPLACE,
    MEMTEXT_APPEND,
    MEMTEXT_PREPEND,
    MEMTEXT_CAS,
    MEMTEXT_INCR,
    MEMTEXT_DECR,
    MEMTEXT_DELETE,
    MEMTEXT_TOUCH,
    MEMTEXT_FLUSH_ALL,
    MEMTEXT_STATS,
    MEMTEXT_VERSION,
    MEMTEXT_VERBOSITY,
    MEMTEXT_QUIT,
    MEMTEXT_MG,
    MEMTEXT_MS,
    MEMTEXT_MD,
    MEMTEXT_MA,
    MEMTEXT_MN,
    MEMTEXT_ME,
    MEMTEXT_SHUTDOWN,       /* arg: "graceful" or another word; ntokens: any more */
    MEMTEXT_CACHE_MEMLIMIT, /* delay: the megabytes, -1 when not a number */
    MEMTEXT_DEBUGTIME,      /* debugtime <seconds>: delay: the seconds (either sign), INT64_MIN
                               when not a number; the gateway decides whether it is served (a
                               bad number is then CLIENT_ERROR, else ERROR as unknown) */
} memtext_cmd;

typedef struct memtext_token {
    const char *p;
    size_t len;
} memtext_token;

/* Only the scalar fields are reset by each call; keys[] and tokens[] are
 * valid up to nkeys / ntokens. */
typedef struct memtext_request {
    memtext_cmd cmd;                      /* 0 when the command word is unknown */
    size_t nkeys;                         /* get/gets: >= 1; gat/gats: >= 0 ("gat 10" answers END,
                           as memcached); other keyed commands: 1; else 0 */
    memtext_token keys[MEMTEXT_MAX_KEYS]; /* get/gets/gat/gats: all; others: keys[0] */
    uint32_t flags;                       /* storage commands */
    int64_t exptime;                      /* storage, touch, gat: as sent (may be negative) */
    uint64_t cas;                         /* cas */
    uint64_t delta;                       /* incr/decr */
    int64_t delay;                        /* flush_all [delay]; verbosity level; -1 if absent */
    bool noreply;                         /* classic commands: the last token is "noreply" (meta
                           commands: always false, their 'q' flag is a token) */
    const char *data;                     /* storage commands: the data block (without CRLF) */
    size_t data_len;                      /* storage commands (ms: its <datalen>) */
    memtext_token arg;                    /* stats: the optional sub-command ("settings"…) */
    size_t ntokens;                       /* meta commands: flag tokens after the key (ms: after
                           <datalen>); stats: arguments after the sub-command */
    memtext_token tokens[MEMTEXT_MAX_TOKENS];
    size_t need;    /* NEED_MORE of a storage command whose line is complete:
                           the bytes the whole request will take (line + data +
                           2), with cmd, keys[0], flags, exptime, cas, data_len
                           and noreply already filled in, so the caller can
                           refuse an oversized value before buffering it
                           (reply, then discard `need` bytes as they arrive).
                           0 otherwise. */
    size_t swallow; /* CLIENT_ERROR "object too large for cache"
                           (data_len > MEMTEXT_MAX_DATA): after dropping
                           *consumed bytes (the line), discard this many more
                           as they arrive (the data block and its CRLF), as
                           memcached's conn_swallow does. 0 otherwise. */
} memtext_request;

typedef enum memtext_status {
    MEMTEXT_OK = 0,       /* *consumed bytes form the request in *req */
    MEMTEXT_NEED_MORE,    /* nothing consumed; call again with more bytes */
    MEMTEXT_ERROR,        /* unknown command or wrong argument count: reply
                             "ERROR\r\n" (never suppressed by noreply) */
    MEMTEXT_CLIENT_ERROR, /* reply "CLIENT_ERROR <*errmsg>\r\n" */
    MEMTEXT_CLOSE,        /* reply as CLIENT_ERROR, then close (e.g. line too long) */
    MEMTEXT_HANGUP,       /* close without a reply, as memcached 1.6 does: an
                             unknown command whose last token starts "HTTP/"
                             (a browser's request: cross-protocol defence), or
                             more than MEMTEXT_LONG_LINE bytes without a
                             newline that are not a get or gets line */
} memtext_status;

/* Parse the request at buf[0..len). On OK and on the error statuses
 * *consumed says how many bytes to drop (the bad line, and for a storage
 * command whose line parsed, its data block as memcached swallows it);
 * it is > 0 and <= len (CLOSE, HANGUP: len). Because memcached judges a
 * line without its newline by the bytes it has read, so does this parser:
 * the same line may be NEED_MORE at 2048 bytes and HANGUP at 2049. *errmsg is a static string such as
 * "bad data chunk" or "bad command line format" for CLIENT_ERROR and CLOSE,
 * NULL otherwise. noreply on an erroring command is reported in req->noreply
 * so the caller can stay quiet as memcached does (memcached suppresses
 * CLIENT_ERROR replies under noreply, but not ERROR).
 * Memcached-compatible swallowing: a storage line that fails to parse drops
 * only the line (its data block is then read as commands, as memcached
 * does); a bad data chunk drops line + bytes + 2. */
memtext_status memtext_parse(const char *buf, size_t len, memtext_request *req,
                             size_t *consumed, const char **errmsg);

#endif
