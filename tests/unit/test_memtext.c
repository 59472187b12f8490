/*
 * test_memtext — the memcached text protocol parser against memcached 1.6's
 * observable behaviour: what each request parses to, how many bytes every
 * outcome consumes, which error class and string it gives, and that every
 * proper prefix of a valid request asks for more.
 */
#include "memtext.h"
#include "tap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static memtext_request req;
static size_t used;
static const char *err;

static memtext_status parse_n(const char *s, size_t len)
{
    return memtext_parse(s, len, &req, &used, &err);
}

static memtext_status parse(const char *s)
{
    return parse_n(s, strlen(s));
}

static int tok_eq(memtext_token t, const char *s)
{
    return t.p && t.len == strlen(s) && memcmp(t.p, s, t.len) == 0;
}

/* s with CR and LF spelled out, for a TAP description (one line). */
static const char *show(const char *s)
{
    static char out[256];
    size_t o = 0;
    for (; *s && o + 3 < sizeof out; s++) {
        if (*s == '\r' || *s == '\n') {
            out[o++] = '\\';
            out[o++] = *s == '\r' ? 'r' : 'n';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
    return out;
}

/* Every proper prefix of s[0..len) must be NEED_MORE with nothing consumed;
 * the whole must be OK consuming exactly len. */
static void prefixes_ok(const char *s, size_t len, const char *what)
{
    size_t bad = (size_t)-1;
    for (size_t i = 0; i < len && bad == (size_t)-1; i++) {
        if (parse_n(s, i) != MEMTEXT_NEED_MORE || used != 0)
            bad = i;
    }
    ok(bad == (size_t)-1, "%s: all %zu proper prefixes need more", what, len);
    if (bad != (size_t)-1)
        diag("prefix of %zu bytes gave status %d, consumed %zu", bad, (int)parse_n(s, bad), used);
    memtext_status st = parse_n(s, len);
    ok(st == MEMTEXT_OK && used == len, "%s: whole is OK, consumed %zu", what, len);
    if (st != MEMTEXT_OK || used != len)
        diag("status %d consumed %zu err %s", (int)st, used, err ? err : "(null)");
}

static void client_error(const char *s, const char *msg, size_t want_used, const char *what)
{
    memtext_status st = parse(s);
    is_int(st, MEMTEXT_CLIENT_ERROR, "%s: CLIENT_ERROR", what);
    is_str(err, msg, "%s: message", what);
    is_int(used, want_used, "%s: consumed", what);
}

static void error_line(const char *s, const char *what)
{
    memtext_status st = parse(s);
    is_int(st, MEMTEXT_ERROR, "%s: ERROR", what);
    is_int(used, strlen(s), "%s: whole line consumed", what);
    ok(!req.noreply, "%s: ERROR is never quiet", what);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_get(void)
{
    is_int(parse("get foo\r\n"), MEMTEXT_OK, "get");
    is_int(req.cmd, MEMTEXT_GET, "get: cmd");
    is_int(req.nkeys, 1, "get: one key");
    ok(tok_eq(req.keys[0], "foo"), "get: key");
    is_int(used, 9, "get: consumed");
    ok(err == NULL, "get: no errmsg on OK");

    is_int(parse("gets a bb ccc\r\n"), MEMTEXT_OK, "gets");
    is_int(req.cmd, MEMTEXT_GETS, "gets: cmd");
    is_int(req.nkeys, 3, "gets: three keys");
    ok(tok_eq(req.keys[0], "a") && tok_eq(req.keys[1], "bb") && tok_eq(req.keys[2], "ccc"),
       "gets: keys in order");

    is_int(parse("  get   a    b  \r\n"), MEMTEXT_OK, "get with extra spaces (libmemcached)");
    ok(req.nkeys == 2 && tok_eq(req.keys[0], "a") && tok_eq(req.keys[1], "b"),
       "extra spaces: keys");

    is_int(parse("gat 100 k1 k2\r\n"), MEMTEXT_OK, "gat");
    ok(req.cmd == MEMTEXT_GAT && req.exptime == 100 && req.nkeys == 2 &&
           tok_eq(req.keys[0], "k1") && tok_eq(req.keys[1], "k2"),
       "gat: exptime and keys");
    is_int(parse("gats -1 k\r\n"), MEMTEXT_OK, "gats negative exptime");
    ok(req.cmd == MEMTEXT_GATS && req.exptime == -1 && req.nkeys == 1, "gats: fields");
    is_int(parse("gat 10\r\n"), MEMTEXT_OK, "gat without keys (memcached answers END)");
    is_int(req.nkeys, 0, "gat without keys: nkeys 0");
    client_error("gat x k\r\n", "invalid exptime argument", 9, "gat bad exptime");

    error_line("get\r\n", "get without key");
    error_line("get   \r\n", "get with only spaces");
    error_line("gets\r\n", "gets without key");
    error_line("gat\r\n", "gat without exptime");
}

static void test_multiget_limits(void)
{
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "get");
    for (int i = 0; i < MEMTEXT_MAX_KEYS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " k%d", i);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    is_int(parse(buf), MEMTEXT_OK, "get with %d keys", MEMTEXT_MAX_KEYS);
    is_int(req.nkeys, MEMTEXT_MAX_KEYS, "256 keys returned");
    ok(tok_eq(req.keys[0], "k0") && tok_eq(req.keys[255], "k255"), "first and last key");
    is_int(used, n, "256 keys: consumed");

    n -= 2;
    n += (size_t)snprintf(buf + n, sizeof buf - n, " k256\r\n");
    client_error(buf, "bad command line format", n, "get with 257 keys");

    n = (size_t)snprintf(buf, sizeof buf, "gat 5");
    for (int i = 0; i < MEMTEXT_MAX_KEYS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " k%d", i);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    is_int(parse(buf), MEMTEXT_OK, "gat with exptime and 256 keys");
    is_int(req.nkeys, MEMTEXT_MAX_KEYS, "gat: 256 keys returned");

    n = (size_t)snprintf(buf, sizeof buf, "get");
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " k");
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    client_error(buf, "bad command line format", n, "get with 1000 keys");
}

static void test_key_length(void)
{
    char *k250 = repeat('k', 250), *k251 = repeat('k', 251);
    char buf[1024];
    size_t n;

    snprintf(buf, sizeof buf, "get %s\r\n", k250);
    is_int(parse(buf), MEMTEXT_OK, "get: 250-byte key ok");
    is_int(req.keys[0].len, 250, "250-byte key returned whole");
    n = (size_t)snprintf(buf, sizeof buf, "get a %s\r\n", k251);
    client_error(buf, "bad command line format", n, "get: 251-byte key");

    n = (size_t)snprintf(buf, sizeof buf, "set %s 0 0 1\r\nx\r\n", k250);
    is_int(parse(buf), MEMTEXT_OK, "set: 250-byte key ok");
    is_int(used, n, "set: 250-byte key consumed");
    /* memcached refuses the line without swallowing: "hello" is then read
     * as a command of its own. */
    n = (size_t)snprintf(buf, sizeof buf, "set %s 0 0 5\r\nhello\r\n", k251);
    client_error(buf, "bad command line format", n - 7, "set: 251-byte key drops the line only");
    is_int(parse(buf + used), MEMTEXT_ERROR, "set: 251-byte key: data then read as a command");
    is_int(used, 7, "set: that command line is consumed");

    n = (size_t)snprintf(buf, sizeof buf, "delete %s\r\n", k251);
    client_error(buf, "bad command line format", n, "delete: 251-byte key");
    n = (size_t)snprintf(buf, sizeof buf, "incr %s 1\r\n", k251);
    client_error(buf, "bad command line format", n, "incr: 251-byte key");
    n = (size_t)snprintf(buf, sizeof buf, "touch %s 1\r\n", k251);
    client_error(buf, "bad command line format", n, "touch: 251-byte key");
    n = (size_t)snprintf(buf, sizeof buf, "mg %s v\r\n", k251);
    client_error(buf, "bad command line format", n, "mg: 251-byte key");
    snprintf(buf, sizeof buf, "mg %s v\r\n", k250);
    is_int(parse(buf), MEMTEXT_OK, "mg: 250-byte key ok");
    free(k250);
    free(k251);

    /* Keys are opaque bytes but for NUL and CR, which would break a reply. */
    client_error("get a\rb\r\n", "bad command line format", 9, "key with a CR");
    is_int(parse("get a\tb\r\n"), MEMTEXT_OK, "key with a tab ok");
    is_int(parse("get \x56\x7f\x12\x10\x10v2-jsXa\r\n"), MEMTEXT_OK, "memaslap key (0x10-0x7f) ok");
    static const char nul[] = "get a\0b\r\n";
    is_int(parse_n(nul, sizeof nul - 1), MEMTEXT_CLIENT_ERROR, "key with a NUL");
    is_int(used, sizeof nul - 1, "key with a NUL: line consumed");
    client_error("get a\r\r\n", "bad command line format", 8,
                 "only the \\r before \\n is the terminator");
    is_int(parse("get \xc3\xa9t\xc3\xa9\r\n"), MEMTEXT_OK, "UTF-8 key ok");
}

static void test_storage(void)
{
    static const struct {
        const char *word;
        memtext_cmd cmd;
    } cmds[] = {
        {"set", MEMTEXT_SET},
        {"add", MEMTEXT_ADD},
        {"replace", MEMTEXT_REPLACE},
        {"append", MEMTEXT_APPEND},
        {"prepend", MEMTEXT_PREPEND},
    };
    char buf[256];
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        size_t n = (size_t)snprintf(buf, sizeof buf, "%s key 42 3600 5\r\nhello\r\n", cmds[i].word);
        is_int(parse(buf), MEMTEXT_OK, "%s", cmds[i].word);
        ok(req.cmd == cmds[i].cmd && req.nkeys == 1 && tok_eq(req.keys[0], "key") &&
               req.flags == 42 && req.exptime == 3600 && req.data_len == 5 &&
               req.data && memcmp(req.data, "hello", 5) == 0 && !req.noreply,
           "%s: fields", cmds[i].word);
        ok(req.data == buf + n - 7, "%s: data points into the buffer", cmds[i].word);
        is_int(used, n, "%s: consumed line + data + 2", cmds[i].word);
    }

    is_int(parse("set k 0 0 5 noreply\r\nhello\r\n"), MEMTEXT_OK, "set noreply");
    ok(req.noreply, "set noreply: flag");
    /* memcached looks only at whether the last token is "noreply". */
    is_int(parse("set k 0 0 5 whatever\r\nhello\r\n"), MEMTEXT_OK, "set with a non-noreply 5th token");
    ok(!req.noreply, "5th token not noreply: reply");

    is_int(parse("set k 0 0 0\r\n\r\n"), MEMTEXT_OK, "zero-length value allowed");
    ok(req.data_len == 0 && req.data != NULL, "zero-length: data_len 0, data set");
    is_int(used, 15, "zero-length: consumed");

    is_int(parse("set k 0 0 4\r\na\r\nb\r\n"), MEMTEXT_OK, "value containing CRLF");
    ok(req.data_len == 4 && memcmp(req.data, "a\r\nb", 4) == 0, "value containing CRLF: data");
    static const char bin[] = "set k 0 0 3\r\n\0\n\xff\r\n";
    is_int(parse_n(bin, sizeof bin - 1), MEMTEXT_OK, "binary value");
    ok(req.data_len == 3 && req.data[0] == '\0' && req.data[2] == '\xff', "binary value: data");

    is_int(parse("cas k 1 2 3 12345678901234\r\nabc\r\n"), MEMTEXT_OK, "cas");
    ok(req.cmd == MEMTEXT_CAS && req.cas == 12345678901234ULL && req.flags == 1 &&
           req.exptime == 2 && req.data_len == 3 && !req.noreply,
       "cas: fields");
    is_int(parse("cas k 0 0 1 18446744073709551615 noreply\r\nx\r\n"), MEMTEXT_OK, "cas noreply, max unique");
    ok(req.noreply && req.cas == UINT64_MAX, "cas noreply: fields");
    client_error("cas k 0 0 1 x\r\n", "bad command line format", 15, "cas bad unique");
    client_error("cas k 0 0 1 18446744073709551616\r\n", "bad command line format", 34,
                 "cas unique overflow");

    error_line("set k 0 0\r\n", "set with 3 arguments");
    error_line("set k 0 0 1 noreply x\r\n", "set with 6 arguments");
    error_line("set\r\n", "set alone");
    error_line("cas k 0 0 1\r\n", "cas without unique");
    error_line("cas k 0 0 1 2 noreply x\r\n", "cas with 7 arguments");

    /* Numbers. */
    is_int(parse("set k 4294967295 0 1\r\nx\r\n"), MEMTEXT_OK, "flags 2^32-1");
    ok(req.flags == UINT32_MAX, "flags 2^32-1: value");
    client_error("set k 4294967296 0 1\r\n", "bad command line format", 22, "flags 2^32");
    client_error("set k -1 0 1\r\n", "bad command line format", 14, "negative flags");
    client_error("set k x 0 1\r\n", "bad command line format", 13, "non-numeric flags");
    client_error("set k 1x 0 1\r\n", "bad command line format", 14, "trailing garbage in flags");
    is_int(parse("set k +7 -30 1\r\nx\r\n"), MEMTEXT_OK, "explicit + sign, negative exptime");
    ok(req.flags == 7 && req.exptime == -30, "signs: values");
    is_int(parse("set k 0 -9223372036854775808 1\r\nx\r\n"), MEMTEXT_OK, "exptime INT64_MIN");
    ok(req.exptime == INT64_MIN, "exptime INT64_MIN: value");
    client_error("set k 0 9223372036854775808 1\r\n", "bad command line format", 31, "exptime overflow");
    client_error("set k 0 - 1\r\n", "bad command line format", 13, "exptime lone sign");
    client_error("set k 0 0 -1\r\nx\r\n", "bad command line format", 14, "negative length");
    client_error("set k 0 0 abc\r\n", "bad command line format", 15, "non-numeric length");
    client_error("set k 0 0 99999999999999999999999\r\n", "bad command line format", 35,
                 "length overflowing 64 bits");
    client_error("set k 0 0 2147483646\r\n", "bad command line format", 22,
                 "length above INT_MAX-2 (memcached's bound)");
    is_int(req.swallow, 0, "length above INT_MAX-2: nothing swallowed");
    client_error("set k 0 0 2147483645\r\n", "object too large for cache", 22,
                 "length above MEMTEXT_MAX_DATA");
    is_int(req.swallow, 2147483647, "too large: caller swallows bytes + 2");
    client_error("set k 0 0 1073741825 noreply\r\n", "object too large for cache", 30,
                 "MEMTEXT_MAX_DATA + 1");
    ok(req.noreply && req.swallow == 1073741827, "too large noreply: quiet, swallow");
    is_int(parse("set k 0 0 1073741824\r\n"), MEMTEXT_NEED_MORE, "MEMTEXT_MAX_DATA itself: waits");
    is_int(req.need, 22 + 1073741824 + 2, "MEMTEXT_MAX_DATA: need");

    /* The line parsed but the data is not followed by CRLF: memcached has read
     * bytes + 2 and drops them all. */
    static const char chunk[] = "set k 0 0 3\r\nabcd\r\n";
    client_error(chunk, "bad data chunk", 13 + 3 + 2, "bad data chunk");
    ok(!req.noreply, "bad data chunk: reply");
    is_int(parse(chunk + used), MEMTEXT_ERROR, "bad data chunk: the rest is a line");
    is_int(used, 1, "bad data chunk: lone \\n consumed");
    client_error("set k 0 0 1 noreply\r\nab\r\n", "bad data chunk", 21 + 3, "bad data chunk noreply");
    ok(req.noreply, "bad data chunk noreply: quiet");
    client_error("set k 0 0 1\r\na\nX", "bad data chunk", 16, "data followed by bare \\n");
    client_error("set k 0 0 1\r\nab\n", "bad data chunk", 16, "data followed by \\r missing");
    client_error("set k 0 0 0\r\nxx", "bad data chunk", 15, "zero length, no CRLF");
    is_int(parse("set k 0 0 3\r\nabc\r"), MEMTEXT_NEED_MORE, "data + \\r: waits for the \\n");
}

static void test_need(void)
{
    is_int(parse("set key 5 10 100 noreply\r\npartial"), MEMTEXT_NEED_MORE, "set waiting for data");
    is_int(used, 0, "waiting: nothing consumed");
    is_int(req.need, 26 + 100 + 2, "waiting: need = line + bytes + 2");
    ok(req.cmd == MEMTEXT_SET && tok_eq(req.keys[0], "key") && req.flags == 5 &&
           req.exptime == 10 && req.data_len == 100 && req.noreply && req.data == NULL,
       "waiting: line fields filled in");
    is_int(parse("get a"), MEMTEXT_NEED_MORE, "incomplete line");
    is_int(req.need, 0, "incomplete line: need unknown");
    is_int(parse_n("", 0), MEMTEXT_NEED_MORE, "empty buffer");
    is_int(parse_n(NULL, 0), MEMTEXT_NEED_MORE, "NULL empty buffer");
}

static void test_arith(void)
{
    is_int(parse("incr n 5\r\n"), MEMTEXT_OK, "incr");
    ok(req.cmd == MEMTEXT_INCR && tok_eq(req.keys[0], "n") && req.delta == 5 && !req.noreply,
       "incr: fields");
    is_int(parse("decr n 18446744073709551615 noreply\r\n"), MEMTEXT_OK, "decr max noreply");
    ok(req.cmd == MEMTEXT_DECR && req.delta == UINT64_MAX && req.noreply, "decr: fields");
    client_error("incr n abc\r\n", "invalid numeric delta argument", 12, "incr non-numeric delta");
    client_error("incr n -1\r\n", "invalid numeric delta argument", 11, "incr negative delta");
    client_error("decr n 18446744073709551616\r\n", "invalid numeric delta argument", 29,
                 "decr delta overflow");
    client_error("incr n x noreply\r\n", "invalid numeric delta argument", 18, "incr bad delta noreply");
    ok(req.noreply, "incr bad delta noreply: quiet");
    error_line("incr n\r\n", "incr without delta");
    error_line("decr n 1 noreply x\r\n", "decr with 4 arguments");
}

static void test_delete(void)
{
    is_int(parse("delete k\r\n"), MEMTEXT_OK, "delete");
    ok(req.cmd == MEMTEXT_DELETE && tok_eq(req.keys[0], "k") && req.nkeys == 1 && !req.noreply,
       "delete: fields");
    is_int(parse("delete k noreply\r\n"), MEMTEXT_OK, "delete noreply");
    ok(req.noreply, "delete noreply: flag");
    is_int(parse("delete k 0\r\n"), MEMTEXT_OK, "delete with legacy 0");
    is_int(parse("delete k 0 noreply\r\n"), MEMTEXT_OK, "delete 0 noreply");
    ok(req.noreply, "delete 0 noreply: flag");
    client_error("delete k 5\r\n", "bad command line format.  Usage: delete <key> [noreply]", 12,
                 "delete with a hold time");
    client_error("delete k 5 noreply\r\n", "bad command line format.  Usage: delete <key> [noreply]",
                 20, "delete with a hold time, noreply");
    ok(req.noreply, "delete hold time noreply: quiet");
    client_error("delete k noreply 0\r\n", "bad command line format.  Usage: delete <key> [noreply]",
                 20, "delete noreply 0 (wrong order)");
    error_line("delete\r\n", "delete without key");
    error_line("delete k 0 noreply x\r\n", "delete with 4 arguments");
}

static void test_touch_flush_misc(void)
{
    is_int(parse("touch k 60\r\n"), MEMTEXT_OK, "touch");
    ok(req.cmd == MEMTEXT_TOUCH && tok_eq(req.keys[0], "k") && req.exptime == 60, "touch: fields");
    is_int(parse("touch k -1 noreply\r\n"), MEMTEXT_OK, "touch noreply");
    ok(req.noreply && req.exptime == -1, "touch noreply: fields");
    client_error("touch k soon\r\n", "invalid exptime argument", 14, "touch bad exptime");
    error_line("touch k\r\n", "touch without exptime");

    is_int(parse("flush_all\r\n"), MEMTEXT_OK, "flush_all");
    ok(req.cmd == MEMTEXT_FLUSH_ALL && req.delay == -1 && !req.noreply, "flush_all: no delay");
    is_int(parse("flush_all 30\r\n"), MEMTEXT_OK, "flush_all delay");
    is_int(req.delay, 30, "flush_all delay: value");
    is_int(parse("flush_all noreply\r\n"), MEMTEXT_OK, "flush_all noreply");
    ok(req.noreply && req.delay == -1, "flush_all noreply: fields");
    is_int(parse("flush_all 0 noreply\r\n"), MEMTEXT_OK, "flush_all 0 noreply");
    ok(req.noreply && req.delay == 0, "flush_all 0 noreply: fields");
    client_error("flush_all later\r\n", "invalid exptime argument", 17, "flush_all bad delay");
    error_line("flush_all 1 noreply x\r\n", "flush_all with 3 arguments");

    is_int(parse("stats\r\n"), MEMTEXT_OK, "stats");
    ok(req.cmd == MEMTEXT_STATS && req.arg.p == NULL && req.ntokens == 0, "stats: no argument");
    is_int(parse("stats settings\r\n"), MEMTEXT_OK, "stats settings");
    ok(tok_eq(req.arg, "settings") && req.ntokens == 0, "stats settings: arg");
    is_int(parse("stats detail on\r\n"), MEMTEXT_OK, "stats detail on");
    ok(tok_eq(req.arg, "detail") && req.ntokens == 1 && tok_eq(req.tokens[0], "on"),
       "stats detail on: arg and tokens");

    is_int(parse("version\r\n"), MEMTEXT_OK, "version");
    is_int(req.cmd, MEMTEXT_VERSION, "version: cmd");
    is_int(parse("version please\r\n"), MEMTEXT_OK, "version ignores arguments (memcached)");
    is_int(parse("quit\r\n"), MEMTEXT_OK, "quit");
    is_int(req.cmd, MEMTEXT_QUIT, "quit: cmd");

    is_int(parse("verbosity 1\r\n"), MEMTEXT_OK, "verbosity");
    ok(req.cmd == MEMTEXT_VERBOSITY && req.delay == 1 && !req.noreply, "verbosity: level");
    is_int(parse("verbosity 2 noreply\r\n"), MEMTEXT_OK, "verbosity noreply");
    ok(req.delay == 2 && req.noreply, "verbosity noreply: fields");
    client_error("verbosity loud\r\n", "bad command line format", 16, "verbosity non-numeric");

    /* debugtime <seconds>: the number is the gateway's to judge */
    is_int(parse("debugtime 5\r\n"), MEMTEXT_OK, "debugtime 5");
    ok(req.cmd == MEMTEXT_DEBUGTIME && req.delay == 5 && used == 13, "debugtime 5: the seconds");
    is_int(parse("debugtime -30\n"), MEMTEXT_OK, "debugtime -30");
    ok(req.cmd == MEMTEXT_DEBUGTIME && req.delay == -30, "debugtime -30: a negative offset");
    const char *bad_times[] = {"debugtime x\r\n", "debugtime 5s\r\n", "debugtime p\r\n",
                               "debugtime 99999999999999999999\r\n", "debugtime -\r\n", "debugtime -+5\r\n"};
    for (size_t i = 0; i < sizeof(bad_times) / sizeof(bad_times[0]); i++) {
        is_int(parse(bad_times[i]), MEMTEXT_OK, "%s: parsed", show(bad_times[i]));
        ok(req.cmd == MEMTEXT_DEBUGTIME && req.delay == INT64_MIN && used == strlen(bad_times[i]),
           "%s: not a number (INT64_MIN), line consumed", show(bad_times[i]));
    }
    is_int(parse_n("debugtime 1\0\r\n", 14), MEMTEXT_OK, "debugtime with a NUL: parsed");
    ok(req.delay == INT64_MIN, "debugtime with a NUL: not a number");
    error_line("debugtime\r\n", "debugtime without an argument");
    error_line("debugtime 1 2\r\n", "debugtime with two arguments");
    error_line("debugtime 1 noreply\r\n", "debugtime has no noreply");
    prefixes_ok("debugtime 12\r\n", 14, "debugtime 12");
    error_line("verbosity\r\n", "verbosity without level");
}

static void test_meta(void)
{
    is_int(parse("mg foo v f t k Oabc\r\n"), MEMTEXT_OK, "mg");
    ok(req.cmd == MEMTEXT_MG && tok_eq(req.keys[0], "foo") && req.ntokens == 5 &&
           tok_eq(req.tokens[0], "v") && tok_eq(req.tokens[4], "Oabc") && !req.noreply,
       "mg: key and raw flags");
    is_int(parse("mg foo\r\n"), MEMTEXT_OK, "mg without flags");
    is_int(req.ntokens, 0, "mg without flags: none");
    error_line("mg\r\n", "mg without key");

    /* memcached: at most 20 tokens with the command, key and end marker */
    char buf[512];
    size_t n = (size_t)snprintf(buf, sizeof buf, "mg k");
    for (int i = 0; i < 17; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " O%d", i);
    snprintf(buf + n, sizeof buf - n, "\r\n");
    is_int(parse(buf), MEMTEXT_OK, "mg with 17 flags");
    is_int(req.ntokens, 17, "mg: all flags returned");
    n += (size_t)snprintf(buf + n, sizeof buf - n, " q\r\n");
    client_error(buf, "options flags are too long", n, "mg with too many flags");
    buf[1] = 'd';
    client_error(buf, "options flags too long", n, "md with too many flags");

    is_int(parse("ms foo 3 T60 F5 q\r\nbar\r\n"), MEMTEXT_OK, "ms");
    ok(req.cmd == MEMTEXT_MS && tok_eq(req.keys[0], "foo") && req.data_len == 3 &&
           memcmp(req.data, "bar", 3) == 0 && req.ntokens == 3 && tok_eq(req.tokens[0], "T60") &&
           tok_eq(req.tokens[2], "q") && !req.noreply,
       "ms: key, data, flags after datalen");
    is_int(used, 24, "ms: consumed");
    is_int(parse("ms foo 0\r\n\r\n"), MEMTEXT_OK, "ms zero length");
    client_error("ms foo\r\n", "bad command line format", 8, "ms without datalen");
    client_error("ms foo -3\r\n", "bad command line format", 11, "ms negative datalen");
    client_error("ms foo 3 q\r\nbarX\r\n", "bad data chunk", 12 + 5, "ms bad data chunk");
    ok(!req.noreply, "ms bad data chunk: meta errors are never quiet");
    error_line("ms\r\n", "ms without key");

    is_int(parse("md foo q C123\r\n"), MEMTEXT_OK, "md");
    ok(req.cmd == MEMTEXT_MD && tok_eq(req.keys[0], "foo") && req.ntokens == 2, "md: fields");
    is_int(parse("ma cnt D5 MI N0\r\n"), MEMTEXT_OK, "ma");
    ok(req.cmd == MEMTEXT_MA && tok_eq(req.keys[0], "cnt") && req.ntokens == 3, "ma: fields");
    error_line("ma\r\n", "ma without key");
    is_int(parse("mn\r\n"), MEMTEXT_OK, "mn");
    ok(req.cmd == MEMTEXT_MN && req.nkeys == 0, "mn: no key");
    is_int(parse("me foo\r\n"), MEMTEXT_OK, "me");
    ok(req.cmd == MEMTEXT_ME && tok_eq(req.keys[0], "foo"), "me: key");
    client_error("me\r\n", "bad command line format", 4, "me without key (memcached: CLIENT_ERROR)");
    error_line("mx foo\r\n", "unknown meta command");
}

static void test_unknown(void)
{
    error_line("foo bar baz\r\n", "unknown command");
    error_line("GET a\r\n", "commands are case-sensitive");
    error_line("getx a\r\n", "command word with a suffix");
    error_line("ge a\r\n", "command word prefix");
    error_line("get\ta\r\n", "tab is not a separator");
    error_line("\r\n", "empty line");
    error_line("\n", "bare newline");
    error_line("   \r\n", "blank line");
    error_line("bget a\r\n", "bget is not supported");
    static const char nul[] = "\0get a\r\n";
    is_int(parse_n(nul, sizeof nul - 1), MEMTEXT_ERROR, "leading NUL");
    is_int(used, sizeof nul - 1, "leading NUL: line consumed");
}

static void test_line_endings(void)
{
    is_int(parse("get a\n"), MEMTEXT_OK, "bare \\n ends a command line");
    ok(tok_eq(req.keys[0], "a") && used == 6, "bare \\n: key, consumed");
    is_int(parse("set k 0 0 2\nhi\r\n"), MEMTEXT_OK, "storage line with bare \\n");
    ok(req.data_len == 2 && memcmp(req.data, "hi", 2) == 0 && used == 16, "bare \\n: data");
    is_int(parse("delete k noreply\n"), MEMTEXT_OK, "delete with bare \\n");
    ok(req.noreply, "bare \\n: noreply is not eaten");
}

/* memcached's hang-ups: no reply, the connection closes */
static void test_hangup(void)
{
    char *s = repeat('a', MEMTEXT_LONG_LINE + 1);
    is_int(parse_n(s, MEMTEXT_LONG_LINE), MEMTEXT_NEED_MORE, "LONG_LINE bytes, no newline: waits");
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_HANGUP, "LONG_LINE+1 bytes, no newline: hang up");
    ok(err == NULL && used == MEMTEXT_LONG_LINE + 1, "hang up: no message, everything consumed");
    memcpy(s, "set k 0 0 1 ", 12);
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_HANGUP, "long set line: hang up");
    memcpy(s, "gets ", 5);
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_NEED_MORE, "long gets line: waits");
    memcpy(s, "gat 0", 5);
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_HANGUP, "long gat line: hang up");
    memset(s, ' ', 100);
    memcpy(s + 100, "get ", 4);
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_NEED_MORE, "get after 100 spaces: waits");
    memset(s, ' ', 101);
    memcpy(s + 101, "get ", 4);
    is_int(parse_n(s, MEMTEXT_LONG_LINE + 1), MEMTEXT_HANGUP, "get after 101 spaces: hang up");
    free(s);

    static const char *const http[] = {"GET / HTTP/1.0\r\n", "PUT /a HTTP/1.1\r\n", "DELETE HTTP/1.1\r\n",
                                       "HTTP/1.1\r\n", "OPTIONS * HTTP/1.1\n", "  POST  /x  HTTP/2  \r\n"};
    for (size_t i = 0; i < sizeof(http) / sizeof(http[0]); i++) {
        size_t len = strlen(http[i]) + 5; /* the rest of the request too */
        char b[64];
        snprintf(b, sizeof b, "%sHost", http[i]);
        is_int(parse_n(b, len - 1), MEMTEXT_HANGUP, "HTTP line %zu: hang up", i);
        is_int(used, len - 1, "HTTP line %zu: everything consumed", i);
    }
    error_line("GET /\r\n", "no HTTP/ token");
    error_line("FOO HTTP/1.1 x\r\n", "HTTP/ not last");
    error_line("gxx / HTTP/1.1\r\n", "a word memcached's g branch refuses");
    error_line("Z HTTP/1.1\r\n", "a one-letter word");
    error_line("mx HTTP/1.1\r\n", "a two-letter m word");
    error_line("bget HTTP/1.1\r\n", "a word memcached knows");
    /* the 23rd token is the last memcached looks at */
    char b[256];
    size_t n = (size_t)snprintf(b, sizeof b, "FOO");
    for (int i = 0; i < 21; i++) n += (size_t)snprintf(b + n, sizeof b - n, " x");
    snprintf(b + n, sizeof b - n, " HTTP/1.1 y\r\n");
    is_int(parse(b), MEMTEXT_HANGUP, "HTTP/ as the 23rd token: hang up");
}

static void test_line_too_long(void)
{
    char *s = repeat('a', MEMTEXT_MAX_LINE + 2);
    memcpy(s, "get ", 4);
    is_int(parse_n(s, MEMTEXT_MAX_LINE + 1), MEMTEXT_NEED_MORE, "get: MAX_LINE+1 bytes, no newline: waits");
    is_int(parse_n(s, MEMTEXT_MAX_LINE + 2), MEMTEXT_CLOSE, "get: MAX_LINE+2 bytes, no newline: close");
    is_str(err, "line too long", "close: message");
    is_int(used, MEMTEXT_MAX_LINE + 2, "close: consumed everything");
    free(s);

    /* "get kkk…k" of exactly MAX_LINE bytes (the most keys, the longest
     * keys, padded with the trailing spaces libmemcached sends), then CRLF. */
    s = malloc(MEMTEXT_MAX_LINE + 4);
    size_t n = 0;
    memcpy(s, "get", 3);
    n = 3;
    for (int keys = 0; keys < MEMTEXT_MAX_KEYS && n + 1 + MEMTEXT_MAX_KEY <= MEMTEXT_MAX_LINE; keys++) {
        s[n++] = ' ';
        memset(s + n, 'k', MEMTEXT_MAX_KEY);
        n += MEMTEXT_MAX_KEY;
    }
    memset(s + n, ' ', MEMTEXT_MAX_LINE - n);
    n = MEMTEXT_MAX_LINE;
    memcpy(s + n, "\r\n", 2);
    is_int(parse_n(s, n + 2), MEMTEXT_OK, "line of exactly MAX_LINE bytes");
    is_int(used, MEMTEXT_MAX_LINE + 2, "MAX_LINE line: consumed");
    s[n] = 'k';
    s[n + 1] = '\n';
    is_int(parse_n(s, n + 2), MEMTEXT_CLOSE, "line of MAX_LINE+1 bytes + \\n: close");
    memcpy(s + n, "k\r\n", 3);
    is_int(parse_n(s, n + 3), MEMTEXT_CLOSE, "line of MAX_LINE+1 bytes + CRLF: close");
    free(s);
}

static void test_prefixes(void)
{
    static const char *reqs[] = {
        "get foo\r\n",
        "gets a b c\r\n",
        "gat 10 a b\r\n",
        "set k 1 2 5\r\nhello\r\n",
        "set k 0 0 0\r\n\r\n",
        "set k 0 0 4 noreply\r\na\r\nb\r\n",
        "cas k 0 0 2 99\r\nhi\r\n",
        "append k 0 0 1\nx\r\n",
        "incr k 1\r\n",
        "delete k 0 noreply\r\n",
        "touch k 1\n",
        "flush_all 5\r\n",
        "stats\r\n",
        "version\r\n",
        "verbosity 1\r\n",
        "quit\n",
        "mg k v\r\n",
        "ms k 2 T0\r\nab\r\n",
        "md k q\r\n",
        "ma k\r\n",
        "mn\r\n",
        "me k\r\n",
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
        prefixes_ok(reqs[i], strlen(reqs[i]), show(reqs[i]));
}

static void test_pipeline(void)
{
    static const char buf[] =
        "set a 0 0 1\r\n1\r\n"
        "get a b\r\n"
        "bogus\r\n"
        "incr a x\r\n"
        "set b 0 0 2 noreply\nbb\r\n"
        "set c 0 0 1\r\nxyz\r\n"
        "gets c\n"
        "mn\r\n"
        "delete a\r\n"
        "quit\r\n";
    static const memtext_status want[] = {
        MEMTEXT_OK,
        MEMTEXT_OK,
        MEMTEXT_ERROR,
        MEMTEXT_CLIENT_ERROR,
        MEMTEXT_OK,
        MEMTEXT_CLIENT_ERROR,
        MEMTEXT_ERROR,
        MEMTEXT_OK,
        MEMTEXT_OK,
        MEMTEXT_OK,
        MEMTEXT_OK,
    };
    /* "set c 0 0 1" then "xyz\r\n": the bad data chunk drops the line and
     * 1 + 2 bytes ("xyz"), leaving "\r\n", a line with no command (ERROR). */
    static const memtext_cmd want_cmd[] = {
        MEMTEXT_SET,
        MEMTEXT_GET,
        0,
        MEMTEXT_INCR,
        MEMTEXT_SET,
        MEMTEXT_SET,
        0,
        MEMTEXT_GETS,
        MEMTEXT_MN,
        MEMTEXT_DELETE,
        MEMTEXT_QUIT,
    };
    size_t len = sizeof buf - 1, off = 0, i = 0, bad = (size_t)-1;
    while (off < len && i < sizeof want / sizeof want[0]) {
        memtext_status st = parse_n(buf + off, len - off);
        if (bad == (size_t)-1 && (st != want[i] || req.cmd != want_cmd[i] || used == 0)) {
            bad = i;
            diag("request %zu: status %d cmd %d consumed %zu", i, (int)st, (int)req.cmd, used);
        }
        if (st == MEMTEXT_NEED_MORE || used == 0)
            break;
        off += used;
        i++;
    }
    ok(bad == (size_t)-1, "pipeline: every request has the expected outcome");
    is_int(i, sizeof want / sizeof want[0], "pipeline: request count");
    is_int(off, len, "pipeline: the buffer is consumed exactly");
    is_int(parse_n(buf + off, 0), MEMTEXT_NEED_MORE, "pipeline: then need more");
}

int main(void)
{
    test_get();
    test_multiget_limits();
    test_key_length();
    test_storage();
    test_need();
    test_arith();
    test_delete();
    test_touch_flush_misc();
    test_meta();
    test_unknown();
    test_line_endings();
    test_line_too_long();
    test_hangup();
    test_prefixes();
    test_pipeline();
    return done_testing();
}
