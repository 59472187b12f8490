/*
 * memtext — the memcached text protocol request parser (see memtext.h).
 *
 * Owns: nothing beyond the call; keys and data point into the caller's
 * buffer, the only state is on the stack. memtext.c is generated from this
 * file by `ragel -G2` and shipped in the tarball.
 * Calls: nothing (libc string functions only).
 * Thread rule: pure; any thread.
 *
 * Why the grammar is shaped this way
 * ----------------------------------
 * memcached (proto_text.c) does not parse a request with a grammar: it finds
 * the newline, splits the line on spaces into tokens, looks the first token
 * up, and then judges the others. Its replies follow that shape, and clients
 * depend on them:
 *  - an unknown command word, or a known one with the wrong number of
 *    arguments, answers "ERROR" (noreply not yet looked at, so never quiet);
 *  - a right-sized line with a bad token answers "CLIENT_ERROR <why>", where
 *    <why> depends on which token is bad ("invalid exptime argument",
 *    "invalid numeric delta argument", "bad command line format"…), and is
 *    suppressed when the last token is "noreply";
 *  - a storage line that fails drops only the line: its data block is then
 *    read as commands. Only a line that parsed makes memcached read
 *    <bytes>+2 bytes, and a block not ending in "\r\n" is "bad data chunk"
 *    with all of it dropped.
 * A whole-request state machine would have to rebuild "how many tokens were
 * there and which one failed" from its error state to give those answers.
 * So the Ragel machine below does the part a machine is good at — the
 * command word (exact, case-sensitive, followed by a space or the end) and
 * cutting the rest into space-separated tokens, noting NUL and CR bytes —
 * and per-command C gives the tokens meaning, arity first, then contents, in
 * memcached's order. Numbers are parsed with explicit overflow checks.
 *
 * Deliberate differences from memcached 1.6, all in the direction of
 * refusing what it would misread:
 *  - numbers out of their type's range are refused (memcached truncates
 *    strtoul/strtol results silently); flags must fit uint32, exptime int64;
 *  - keys are opaque bytes (memaslap sends 0x10-0xff), except that a NUL or
 *    a CR inside a key is refused (memcached stops at a NUL, and a CR would
 *    end the reply line early for clients that split on CR);
 *  - a line is bounded by MEMTEXT_MAX_LINE and a get by MEMTEXT_MAX_KEYS
 *    keys (memcached grows its buffer for long multi-gets);
 *  - <bytes> above MEMTEXT_MAX_DATA is refused before waiting for the data,
 *    and the caller swallows the block (memcached: "SERVER_ERROR object too
 *    large for cache" + conn_swallow);
 *  - a get or gets line with no newline after MEMTEXT_MAX_LINE+2 bytes
 *    closes the connection (memcached grows its buffer without bound).
 *
 * Where memcached hangs up without a word, so does this parser (HANGUP):
 *  - more than MEMTEXT_LONG_LINE bytes and no newline, unless the line
 *    starts with "get " or "gets " after at most 100 spaces;
 *  - an unknown command whose last token (of memcached's first 23) starts
 *    with "HTTP/": a browser tricked into posting to the port must not get
 *    its request lines executed. memcached applies the test only to words
 *    that fall through its whole dispatch, so it is repeated here with the
 *    same shape (see http_like).
 */
#include "memtext.h"

#include <string.h>

/* Arguments the line scanner stores: "gat <exptime>" plus MEMTEXT_MAX_KEYS
 * keys is the most any command can use. It counts further ones without
 * storing them; a command that reads its arguments refuses a count above
 * what is stored, and stats (which may have any number) reads only those. */
#define LINE_TOKENS (MEMTEXT_MAX_KEYS + 1)
/* Bytes searched for the newline: the longest line plus "\r\n". */
#define LINE_SCAN ((size_t)MEMTEXT_MAX_LINE + 2)

static const char E_FORMAT[] = "bad command line format";
static const char E_DELETE[] = "bad command line format.  Usage: delete <key> [noreply]";
static const char E_EXPTIME[] = "invalid exptime argument";
static const char E_DELTA[] = "invalid numeric delta argument";
static const char E_CHUNK[] = "bad data chunk";
static const char E_LARGE[] = "object too large for cache";
static const char E_LINE[] = "line too long";
static const char E_MFLAGS[] = "options flags too long";
static const char E_MGFLAGS[] = "options flags are too long"; /* sic, mg only */

/* memcached's tokenizer keeps at most this many tokens, the command word
 * included; the rest of the line is one more, unsplit. */
#define MC_TOKENS 23
/* memcached's MFLAG_MAX_OPT_LENGTH: tokens of a meta command, its command
 * word, key and an end marker included */
#define MC_META_TOKENS 20

typedef struct line {
    memtext_cmd cmd;
    size_t ntok;                   /* arguments after the command word; may exceed LINE_TOKENS */
    memtext_token tok[LINE_TOKENS];
    bool ctl[LINE_TOKENS];         /* the token holds a NUL or a CR */
} line;

%%{
    machine memtext;

    action tok_start { tok_p = p; }
    action tok_ctl { tok_ctl = true; }
    action tok_end {
        if (ln->ntok < LINE_TOKENS) {
            ln->tok[ln->ntok].p = tok_p;
            ln->tok[ln->ntok].len = (size_t)(p - tok_p);
            ln->ctl[ln->ntok] = tok_ctl;
        }
        ln->ntok++;
        tok_ctl = false;
    }

    ctl = 0 | '\r';
    token = ( (any - ' ' - ctl) | (ctl @tok_ctl) )+ >tok_start %tok_end;

    command =
        'get'       %{ ln->cmd = MEMTEXT_GET; }
      | 'gets'      %{ ln->cmd = MEMTEXT_GETS; }
      | 'gat'       %{ ln->cmd = MEMTEXT_GAT; }
      | 'gats'      %{ ln->cmd = MEMTEXT_GATS; }
      | 'set'       %{ ln->cmd = MEMTEXT_SET; }
      | 'add'       %{ ln->cmd = MEMTEXT_ADD; }
      | 'replace'   %{ ln->cmd = MEMTEXT_REPLACE; }
      | 'append'    %{ ln->cmd = MEMTEXT_APPEND; }
      | 'prepend'   %{ ln->cmd = MEMTEXT_PREPEND; }
      | 'cas'       %{ ln->cmd = MEMTEXT_CAS; }
      | 'incr'      %{ ln->cmd = MEMTEXT_INCR; }
      | 'decr'      %{ ln->cmd = MEMTEXT_DECR; }
      | 'delete'    %{ ln->cmd = MEMTEXT_DELETE; }
      | 'touch'     %{ ln->cmd = MEMTEXT_TOUCH; }
      | 'flush_all' %{ ln->cmd = MEMTEXT_FLUSH_ALL; }
      | 'stats'     %{ ln->cmd = MEMTEXT_STATS; }
      | 'version'   %{ ln->cmd = MEMTEXT_VERSION; }
      | 'verbosity' %{ ln->cmd = MEMTEXT_VERBOSITY; }
      | 'quit'      %{ ln->cmd = MEMTEXT_QUIT; }
      | 'mg'        %{ ln->cmd = MEMTEXT_MG; }
      | 'ms'        %{ ln->cmd = MEMTEXT_MS; }
      | 'md'        %{ ln->cmd = MEMTEXT_MD; }
      | 'ma'        %{ ln->cmd = MEMTEXT_MA; }
      | 'mn'        %{ ln->cmd = MEMTEXT_MN; }
      | 'me'        %{ ln->cmd = MEMTEXT_ME; }
      | 'shutdown'  %{ ln->cmd = MEMTEXT_SHUTDOWN; }
      | 'cache_memlimit' %{ ln->cmd = MEMTEXT_CACHE_MEMLIMIT; }
      | 'debugtime' %{ ln->cmd = MEMTEXT_DEBUGTIME; };

    # Leading, repeated and trailing spaces are allowed, as memcached's
    # tokenizer skips them (libmemcached sends "get a " with a trailing one).
    main := ' '* command ( ' '+ token )* ' '*;

    write data noerror noentry;
}%%

/* Run the machine over one command line (terminator already removed).
 * False: the command word is unknown or missing. */
static bool scan_line(const char *p, const char *pe, line *ln)
{
    const char *eof = pe;
    const char *tok_p = p;
    bool tok_ctl = false;
    int cs;

    ln->cmd = 0;
    ln->ntok = 0;
#if defined(__GNUC__)
#pragma GCC diagnostic push
/* Ragel -G2 jumps between states by falling through labels. */
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
    %% write init;
    %% write exec;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    return cs >= memtext_first_final && ln->cmd != 0;
}

/* ---- numbers: memcached's safe_strto* accept an optional sign and decimal
 * digits; unlike them we refuse values that do not fit instead of
 * truncating. */

static bool parse_u64(const memtext_token *t, uint64_t max, uint64_t *out)
{
    size_t i = 0;
    uint64_t v = 0;
    if (t->len > 0 && t->p[0] == '+')
        i = 1;
    if (i == t->len)
        return false;
    for (; i < t->len; i++) {
        unsigned d = (unsigned char)t->p[i] - '0';
        if (d > 9 || v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_i64(const memtext_token *t, int64_t *out)
{
    bool neg = t->len > 0 && t->p[0] == '-';
    memtext_token mag = *t;
    uint64_t v;
    if (neg) {
        mag.p++;
        mag.len--;
        if (mag.len > 0 && mag.p[0] == '+')
            return false;
    }
    /* |INT64_MIN| = INT64_MAX + 1 */
    if (!parse_u64(&mag, neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &v))
        return false;
    if (neg)
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    else
        *out = (int64_t)v;
    return true;
}

static bool tok_is(const memtext_token *t, const char *s)
{
    size_t n = strlen(s);
    return t->len == n && memcmp(t->p, s, n) == 0;
}

static bool key_ok(const line *ln, size_t i)
{
    return ln->tok[i].len <= MEMTEXT_MAX_KEY && !ln->ctl[i];
}

/* memcached's set_noreply_maybe(): the last token, whatever the command. */
static bool last_is_noreply(const line *ln)
{
    return ln->ntok > 0 && ln->ntok <= LINE_TOKENS && tok_is(&ln->tok[ln->ntok - 1], "noreply");
}

/* memcached's verdict on a line whose command word it does not know:
 * close when the last token it split off starts with "HTTP/". Its dispatch
 * answers ERROR before reaching that test for a word shorter than 2 bytes,
 * a two-byte word starting with 'm', and any word whose first letter is one
 * of its command initials g s a c i d t. (Its other commands, bget lru
 * lru_crawler watch, answer ERROR here: they are not served.) */
static bool http_like(const char *p, const char *pe)
{
    const char *last = NULL, *word = NULL;
    size_t last_len = 0, word_len = 0, ntok = 0;
    while (p < pe && ntok < MC_TOKENS) {
        while (p < pe && *p == ' ')
            p++;
        if (p == pe)
            break;
        const char *s = p;
        while (p < pe && *p != ' ')
            p++;
        if (ntok++ == 0) {
            word = s;
            word_len = (size_t)(p - s);
        }
        last = s;
        last_len = (size_t)(p - s);
    }
    if (!word || word_len < 2)
        return false;
    if ((word[0] == 'm' && word_len == 2) || memchr("gsacidt", word[0], 7))
        return false;
    static const char *const known[] = {"bget", "lru", "lru_crawler", "watch", "replace", "prepend",
                                        "flush_all", "version", "quit", "verbosity"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (word_len == strlen(known[i]) && memcmp(word, known[i], word_len) == 0)
            return false;
    return last_len >= 5 && memcmp(last, "HTTP/", 5) == 0;
}

/* memcached's verdict on len > MEMTEXT_LONG_LINE bytes without a newline:
 * only a get or gets line may be that long. */
static bool long_line_ok(const char *buf, size_t len)
{
    size_t sp = 0;
    while (sp < len && buf[sp] == ' ')
        sp++;
    if (sp > 100)
        return false;
    return (len - sp >= 4 && memcmp(buf + sp, "get ", 4) == 0) ||
           (len - sp >= 5 && memcmp(buf + sp, "gets ", 5) == 0);
}

/* ---- commands. Each returns OK when the line is complete and valid (for
 * storage commands: valid, data block still to check), else an error with
 * *errmsg set. ln->ntok is the argument count (command word excluded). */

static memtext_status do_get(const line *ln, memtext_request *req, const char **errmsg)
{
    bool touch = req->cmd == MEMTEXT_GAT || req->cmd == MEMTEXT_GATS;
    size_t first = touch ? 1 : 0;
    if (ln->ntok < 1)
        return MEMTEXT_ERROR;
    if (touch && !parse_i64(&ln->tok[0], &req->exptime)) {
        *errmsg = E_EXPTIME;
        return MEMTEXT_CLIENT_ERROR;
    }
    if (ln->ntok - first > MEMTEXT_MAX_KEYS) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    for (size_t i = first; i < ln->ntok; i++) {
        if (!key_ok(ln, i)) {
            *errmsg = E_FORMAT;
            return MEMTEXT_CLIENT_ERROR;
        }
        req->keys[req->nkeys++] = ln->tok[i];
    }
    return MEMTEXT_OK;
}

/* A <bytes>/<datalen> token: memcached refuses a negative or non-numeric one
 * and one above INT_MAX - 2 with "bad command line format" and does not
 * swallow; a large but sane one fails allocation and is swallowed. */
static memtext_status data_len(const memtext_token *t, memtext_request *req,
                               const char **errmsg)
{
    int64_t v;
    if (!parse_i64(t, &v) || v < 0 || v > INT32_MAX - 2) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->data_len = (size_t)v;
    if (v > (int64_t)MEMTEXT_MAX_DATA) {
        req->swallow = (size_t)v + 2;
        *errmsg = E_LARGE;
        return MEMTEXT_CLIENT_ERROR;
    }
    return MEMTEXT_OK;
}

static memtext_status do_store(const line *ln, memtext_request *req, const char **errmsg)
{
    bool cas = req->cmd == MEMTEXT_CAS;
    size_t base = cas ? 5 : 4;
    if (ln->ntok != base && ln->ntok != base + 1)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    if (!key_ok(ln, 0))
        goto format;
    req->keys[0] = ln->tok[0];
    req->nkeys = 1;
    uint64_t flags;
    if (!parse_u64(&ln->tok[1], UINT32_MAX, &flags) || !parse_i64(&ln->tok[2], &req->exptime))
        goto format;
    req->flags = (uint32_t)flags;
    /* memcached reads <bytes> before <cas> but judges its range after;
     * both failures answer alike, so only the range check must come last. */
    if (cas && !parse_u64(&ln->tok[4], UINT64_MAX, &req->cas))
        goto format;
    return data_len(&ln->tok[3], req, errmsg);
format:
    *errmsg = E_FORMAT;
    return MEMTEXT_CLIENT_ERROR;
}

static memtext_status do_arith(const line *ln, memtext_request *req, const char **errmsg)
{
    if (ln->ntok != 2 && ln->ntok != 3)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    if (!key_ok(ln, 0)) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->keys[0] = ln->tok[0];
    req->nkeys = 1;
    if (!parse_u64(&ln->tok[1], UINT64_MAX, &req->delta)) {
        *errmsg = E_DELTA;
        return MEMTEXT_CLIENT_ERROR;
    }
    return MEMTEXT_OK;
}

/* delete <key> [0] [noreply]: the "0" is the legacy hold time, accepted
 * only as "0", as memcached does. */
static memtext_status do_delete(const line *ln, memtext_request *req, const char **errmsg)
{
    if (ln->ntok < 1 || ln->ntok > 3)
        return MEMTEXT_ERROR;
    if (ln->ntok > 1) {
        bool zero = tok_is(&ln->tok[1], "0");
        req->noreply = last_is_noreply(ln);
        if (!((ln->ntok == 2 && (zero || req->noreply)) ||
              (ln->ntok == 3 && zero && req->noreply))) {
            *errmsg = E_DELETE;
            return MEMTEXT_CLIENT_ERROR;
        }
    }
    if (!key_ok(ln, 0)) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->keys[0] = ln->tok[0];
    req->nkeys = 1;
    return MEMTEXT_OK;
}

static memtext_status do_touch(const line *ln, memtext_request *req, const char **errmsg)
{
    if (ln->ntok != 2 && ln->ntok != 3)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    if (!key_ok(ln, 0)) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->keys[0] = ln->tok[0];
    req->nkeys = 1;
    if (!parse_i64(&ln->tok[1], &req->exptime)) {
        *errmsg = E_EXPTIME;
        return MEMTEXT_CLIENT_ERROR;
    }
    return MEMTEXT_OK;
}

/* flush_all [delay] [noreply]: like memcached, the first argument is read as
 * the delay unless it is the only one and is "noreply". */
static memtext_status do_flush(const line *ln, memtext_request *req, const char **errmsg)
{
    if (ln->ntok > 2)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    if (ln->ntok != (req->noreply ? 1u : 0u) && !parse_i64(&ln->tok[0], &req->delay)) {
        *errmsg = E_EXPTIME;
        return MEMTEXT_CLIENT_ERROR;
    }
    return MEMTEXT_OK;
}

static memtext_status do_verbosity(const line *ln, memtext_request *req, const char **errmsg)
{
    uint64_t level;
    if (ln->ntok != 1 && ln->ntok != 2)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    if (!parse_u64(&ln->tok[0], UINT32_MAX, &level)) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->delay = (int64_t)level;
    return MEMTEXT_OK;
}

/* cache_memlimit <megabytes> [noreply]: a bad number is ERROR, as in
 * memcached (quiet under noreply, like all its replies to this command). */
static memtext_status do_memlimit(const line *ln, memtext_request *req)
{
    uint64_t mb;
    if (ln->ntok != 1 && ln->ntok != 2)
        return MEMTEXT_ERROR;
    req->noreply = last_is_noreply(ln);
    req->delay = parse_u64(&ln->tok[0], UINT32_MAX, &mb) ? (int64_t)mb : -1;
    return MEMTEXT_OK;
}

/* debugtime <seconds>: memcached's debug builds answer ERROR without
 * exactly one argument; the number is judged by the gateway, which serves
 * the command only with --debug-time (and answers ERROR otherwise, as a
 * memcached built without it), so a bad one is not an error here. */
static memtext_status do_debugtime(const line *ln, memtext_request *req)
{
    if (ln->ntok != 1)
        return MEMTEXT_ERROR;
    if (ln->ctl[0] || !parse_i64(&ln->tok[0], &req->delay))
        req->delay = INT64_MIN;
    return MEMTEXT_OK;
}

/* stats [sub-command [args…]]: memcached judges the sub-command itself;
 * arguments past MEMTEXT_MAX_TOKENS are dropped (no stats takes > 3). */
static void do_stats(const line *ln, memtext_request *req)
{
    if (ln->ntok == 0)
        return;
    req->arg = ln->tok[0];
    for (size_t i = 1; i < ln->ntok && i < LINE_TOKENS && req->ntokens < MEMTEXT_MAX_TOKENS; i++)
        req->tokens[req->ntokens++] = ln->tok[i];
}

/* mg/md/ma/me <key> <flags>*, ms <key> <datalen> <flags>*: flags are handed
 * over raw; the gateway knows their meaning. */
static memtext_status do_meta(const line *ln, memtext_request *req, const char **errmsg)
{
    size_t first = req->cmd == MEMTEXT_MS ? 2 : 1;
    if (ln->ntok < 1) {
        if (req->cmd == MEMTEXT_ME) { /* memcached's process_meta_command */
            *errmsg = E_FORMAT;
            return MEMTEXT_CLIENT_ERROR;
        }
        return MEMTEXT_ERROR;
    }
    if (!key_ok(ln, 0)) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->keys[0] = ln->tok[0];
    req->nkeys = 1;
    if (req->cmd == MEMTEXT_MS && ln->ntok < 2) {
        *errmsg = E_FORMAT;
        return MEMTEXT_CLIENT_ERROR;
    }
    /* memcached refuses more than 20 tokens, counting the command, the
     * key and a terminator (me reads only what it needs) */
    if (req->cmd != MEMTEXT_ME && ln->ntok + 2 > MC_META_TOKENS) {
        *errmsg = req->cmd == MEMTEXT_MG ? E_MGFLAGS : E_MFLAGS;
        return MEMTEXT_CLIENT_ERROR;
    }
    /* me: tokens past MEMTEXT_MAX_TOKENS are not read */
    for (size_t i = first; i < ln->ntok && i < LINE_TOKENS && req->ntokens < MEMTEXT_MAX_TOKENS; i++)
        req->tokens[req->ntokens++] = ln->tok[i];
    if (req->cmd == MEMTEXT_MS)
        return data_len(&ln->tok[1], req, errmsg);
    return MEMTEXT_OK;
}

static bool has_data(memtext_cmd cmd)
{
    switch (cmd) {
    case MEMTEXT_SET:
    case MEMTEXT_ADD:
    case MEMTEXT_REPLACE:
    case MEMTEXT_APPEND:
    case MEMTEXT_PREPEND:
    case MEMTEXT_CAS:
    case MEMTEXT_MS:
        return true;
    default:
        return false;
    }
}

static void req_reset(memtext_request *req)
{
    req->cmd = 0;
    req->nkeys = 0;
    req->flags = 0;
    req->exptime = 0;
    req->cas = 0;
    req->delta = 0;
    req->delay = -1;
    req->noreply = false;
    req->data = NULL;
    req->data_len = 0;
    req->arg.p = NULL;
    req->arg.len = 0;
    req->ntokens = 0;
    req->need = 0;
    req->swallow = 0;
}

memtext_status memtext_parse(const char *buf, size_t len, memtext_request *req,
                             size_t *consumed, const char **errmsg)
{
    line ln;
    memtext_status st;

    req_reset(req);
    *consumed = 0;
    *errmsg = NULL;
    if (len == 0)
        return MEMTEXT_NEED_MORE;

    /* The command line: up to the first "\n", a "\r" before it dropped
     * (memcached: only when the line has something else in it). */
    const char *nl = memchr(buf, '\n', len < LINE_SCAN ? len : LINE_SCAN);
    if (!nl) {
        if (len > MEMTEXT_LONG_LINE && !long_line_ok(buf, len)) {
            *consumed = len;
            return MEMTEXT_HANGUP;
        }
        if (len < LINE_SCAN)
            return MEMTEXT_NEED_MORE;
        *consumed = len;
        *errmsg = E_LINE;
        return MEMTEXT_CLOSE;
    }
    size_t line_end = (size_t)(nl - buf) + 1;
    size_t n = line_end - 1;
    if (n > 1 && buf[n - 1] == '\r')
        n--;
    if (n > MEMTEXT_MAX_LINE) {
        *consumed = len;
        *errmsg = E_LINE;
        return MEMTEXT_CLOSE;
    }

    *consumed = line_end;
    if (!scan_line(buf, buf + n, &ln)) {
        if (!http_like(buf, buf + n))
            return MEMTEXT_ERROR;
        *consumed = len;
        return MEMTEXT_HANGUP;
    }
    req->cmd = ln.cmd;

    switch (ln.cmd) {
    case MEMTEXT_GET:
    case MEMTEXT_GETS:
    case MEMTEXT_GAT:
    case MEMTEXT_GATS:
        st = do_get(&ln, req, errmsg);
        break;
    case MEMTEXT_SET:
    case MEMTEXT_ADD:
    case MEMTEXT_REPLACE:
    case MEMTEXT_APPEND:
    case MEMTEXT_PREPEND:
    case MEMTEXT_CAS:
        st = do_store(&ln, req, errmsg);
        break;
    case MEMTEXT_INCR:
    case MEMTEXT_DECR:
        st = do_arith(&ln, req, errmsg);
        break;
    case MEMTEXT_DELETE:
        st = do_delete(&ln, req, errmsg);
        break;
    case MEMTEXT_TOUCH:
        st = do_touch(&ln, req, errmsg);
        break;
    case MEMTEXT_FLUSH_ALL:
        st = do_flush(&ln, req, errmsg);
        break;
    case MEMTEXT_VERBOSITY:
        st = do_verbosity(&ln, req, errmsg);
        break;
    case MEMTEXT_STATS:
    case MEMTEXT_SHUTDOWN:
        do_stats(&ln, req);
        st = MEMTEXT_OK;
        break;
    case MEMTEXT_CACHE_MEMLIMIT:
        st = do_memlimit(&ln, req);
        break;
    case MEMTEXT_DEBUGTIME:
        st = do_debugtime(&ln, req);
        break;
    case MEMTEXT_MG:
    case MEMTEXT_MS:
    case MEMTEXT_MD:
    case MEMTEXT_MA:
    case MEMTEXT_ME:
        st = do_meta(&ln, req, errmsg);
        break;
    default: /* version, quit, mn: memcached ignores any arguments */
        st = MEMTEXT_OK;
        break;
    }
    if (st == MEMTEXT_ERROR)
        req->noreply = false;
    if (st != MEMTEXT_OK || !has_data(ln.cmd))
        return st;

    /* The data block. line_end <= LINE_SCAN and data_len <= MEMTEXT_MAX_DATA,
     * so the sum cannot overflow. */
    size_t need = line_end + req->data_len + 2;
    if (len < need) {
        *consumed = 0;
        req->need = need;
        return MEMTEXT_NEED_MORE;
    }
    *consumed = need;
    if (buf[need - 2] != '\r' || buf[need - 1] != '\n') {
        *errmsg = E_CHUNK;
        return MEMTEXT_CLIENT_ERROR;
    }
    req->data = buf + line_end;
    return MEMTEXT_OK;
}
