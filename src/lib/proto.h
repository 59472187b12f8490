/*
 * proto — the numbers of the node protocol: method ids, operation codes,
 * status codes. docs/protocol.md describes each message; keep them in step.
 * Header only; no code.
 */
#ifndef KUMO_PROTO_H
#define KUMO_PROTO_H

/* kumo-manager, cluster port (-l) */
enum {
    MGR_KEEPALIVE = 0,           /* [clock] -> nil; from a server: [whs clocktime, fault:bool] */
    MGR_HS_REQUEST = 1,          /* [] -> [whs, rhs] */
    MGR_HS_SYNC = 2,             /* partner only: [whs, rhs] -> true adopted / false */
    MGR_REPLACE_COPY_END = 10,   /* [replace_clocktime, ok, phase_id] -> true */
    MGR_REPLACE_DELETE_END = 11, /* [replace_clocktime, ok, phase_id] -> true */
};

/* kumo-manager, control port (-c) — kumoctl */
enum {
    CTL_STATUS = 99,        /* [] -> [whs, [newcomer addr...], rhs, replace_state, auto_replace, partner] */
    CTL_ATTACH = 100,       /* [replace:bool] -> [attached addr...] */
    CTL_DETACH = 101,       /* [replace:bool] -> [detached addr...] */
    CTL_BACKUP = 102,       /* [suffix] -> [[addr, path-or-nil, error-or-nil]...] */
    CTL_AUTO_REPLACE = 103, /* [enable:bool] -> bool */
    CTL_REPLACE = 104,      /* [full:bool] -> servers asked to copy */
};

/* kumo-server, RPC port (-l) */
enum {
    SRV_KEEPALIVE = 0,      /* [clock] -> our clock (clock_now) */
    SRV_HS_SYNC = 2,        /* [whs, rhs] -> true (adopted) / false */
    SRV_HS_PREPARE = 4,     /* [version, ballot] -> [HS_*, version held, ballot | nil, whs | nil,
                                rhs | nil] (witness.c) */
    SRV_HS_ACCEPT = 5,      /* [version, ballot, whs, rhs] -> the same */
    SRV_REPLACE_COPY = 8,   /* [whs, replace_ct, full:bool, rhs, phase_id] -> true; later MGR_REPLACE_COPY_END */
    SRV_REPLACE_DELETE = 9, /* [whs, replace_ct, false, nil, phase_id] -> true; later MGR_REPLACE_DELETE_END */
    SRV_REPLACE_OFFER = 16, /* [stream_port, token, size] -> records applied, once
                                pulled from the sender's stream port */
    SRV_REPLICATE = 32,     /* [flags, dbkey, dbvalue-or-tombstone] -> true stored, false the
                                same ClockTime, or the ClockTime of the newer record kept;
                                WF_MEND: also over other bytes of the same ClockTime */
    SRV_GET = 34,           /* [dbkey] -> dbvalue | nil */
    SRV_SET = 35,           /* [op, flags, dbkey, dbvalue, cas, delta, initial]
                                -> [code, clocktime, number, value] */
    SRV_DELETE = 36,        /* [flags, dbkey, cas] -> [code, clocktime] */
    SRV_FLUSH = 37,         /* [delay_seconds] -> true */
    SRV_GET_MANY = 38,      /* [[dbkey...]] -> [dbvalue | nil | error...], in order;
                                at most SRV_GET_MANY_MAX keys */
    SRV_DEBUG_TIME = 39,    /* [offset:int seconds] -> true; only with kumo-server --debug-time
                                (the gateway's debugtime command; clock.h, the debug clock) */
    SRV_DIGEST = 40,        /* [job, values?] -> [job, walked, total, result | nil]; job 0 starts
                                a walk (or joins the one running); result = [whs_clocktime,
                                start_clocktime, vnodes, [[vnode, count, digest, vdigest
                                (with values 1)]...]] */
    SRV_RANGE_KEYS = 41,    /* [0, [[lo, hi]...], values?] starts a walk, [job] polls it -> [job,
                                walked, total, result | nil]; result = [complete, matched,
                                [[dbkey, clocktime, tombstone:bool, vhash (with values 1)]...]] */
    SRV_FETCH = 42,         /* [[dbkey...]] -> [record | nil...], in order, tombstones
                                included; at most SRV_FETCH_MAX keys */
    SRV_BACKUP = 96,        /* [suffix] -> path written */
    SRV_STATUS = 97,        /* [what] -> value */
    SRV_SET_CONFIG = 98,    /* [what, arg] -> count */
};

/* The most keys one SRV_GET_MANY may carry (a gateway sends fewer). */
#define SRV_GET_MANY_MAX 256
/* Anti-entropy bounds (src/server/digest.c): keys per SRV_FETCH; hash
 * intervals per SRV_RANGE_KEYS; records and bytes its result may list (past
 * either, it says complete = false, lists none, and the caller asks for
 * fewer ranges). */
#define SRV_FETCH_MAX 256
#define SRV_RANGE_KEYS_MAX_SPANS 4096
#define SRV_RANGE_KEYS_MAX_RECORDS 262144
#define SRV_RANGE_KEYS_MAX_BYTES (32u * 1024 * 1024)

/* kumo-gateway (as a manager's client) */
enum {
    GW_HS_PUSH = 3, /* [whs, rhs] -> true */
};

/* SRV_HS_PREPARE / SRV_HS_ACCEPT answers: a server witnessing one change of
 * the membership history (docs/architecture.md §11.1). */
enum {
    HS_OK = 0,      /* promised (with the pair it accepted for that version, if any) / accepted */
    HS_REFUSED = 1, /* a higher ballot was promised: it is in the answer */
    HS_STALE = 2,   /* the server holds that version or a newer one: its pair is in the answer */
    HS_BEHIND = 3,  /* the server lacks the version before: push it the pair first */
};

/* SRV_SET operations. dbvalue always carries the memcached header (flags,
 * exptime) and, where the operation has one, the payload. A non-zero cas
 * makes any operation but OP_ADD conditional on the stored ClockTime. */
enum {
    OP_SET = 0,
    OP_CAS = 2, /* OP_SET whose cas must match (also when cas is 0) */
    OP_ADD = 3,
    OP_REPLACE = 4,
    OP_APPEND = 5,
    OP_PREPEND = 6,
    OP_INCR = 7,        /* by delta; result `number` is the new value */
    OP_DECR = 8,        /* by delta, not below 0 */
    OP_TOUCH = 9,       /* new exptime from dbvalue's header */
    OP_GAT = 10,        /* OP_TOUCH that also returns the stored value */
    OP_MG_WIN = 11,     /* meta-get's win token (record.h STALE/WON): a live record
                       that is stale, or expires before `initial` (unix s,
                       0 = no such test), and has no token out gets WON:
                       CODE_STORED. WF_VIVIFY: a missing key is created
                       empty, WON, with dbvalue's exptime: CODE_STORED,
                       number 1. Otherwise CODE_EXISTS with the record as
                       it is, or CODE_NOT_FOUND. */
    OP_INVALIDATE = 12, /* meta-delete I: mark a live record STALE (clearing
                           WON), with dbvalue's exptime under WF_TOUCH */
    /* OP_INCR, OP_DECR, OP_GAT and OP_MG_WIN return the record they wrote
     * (OP_MG_WIN: or found) as `value` */
};

/* SRV_SET / SRV_DELETE result codes (memcached's words) */
enum {
    CODE_STORED = 0, /* also DELETED */
    CODE_NOT_STORED = 1,
    CODE_EXISTS = 2,
    CODE_NOT_FOUND = 3,
    CODE_NON_NUMERIC = 4, /* incr/decr of a value that is not a number */
};

/* SRV_SET / SRV_DELETE / SRV_REPLICATE flags */
enum {
    WF_ASYNC = 0x01,  /* answer after the primary's own write (-As/-Ad, noreply) */
    WF_VIVIFY = 0x02, /* incr/decr of a missing key creates it with `initial` */
    WF_TOUCH = 0x04,  /* incr/decr also sets the exptime of dbvalue's header */
    WF_STALE = 0x08,  /* meta-set I: a non-zero cas older than the record's
                         stores the value anyway, marked STALE, keeping the
                         record's exptime and win token (memcached's CAS_STALE) */
    WF_MEND = 0x10,   /* SRV_REPLICATE from anti-entropy: a record of the same
                         ClockTime with other bytes is overwritten too (the
                         owners' majority's copy, docs/anti-entropy.md §7) */
};

/* SRV_STATUS what */
enum {
    ST_PID = 0,
    ST_UPTIME = 1,
    ST_TIME = 2,
    ST_VERSION = 3,
    ST_CMD_GET = 4,
    ST_CMD_SET = 5,
    ST_CMD_DELETE = 6,
    ST_ITEMS = 7,
    ST_CLOCKTIME = 8,
    ST_RHS = 9,
    ST_WHS = 10,
    ST_REPLACE = 11,
    ST_DB_BYTES = 12,         /* size of the database file */
    ST_REPLACE_MOVED = 13,    /* [records sent, bytes sent, records received, bytes received] by replaces */
    ST_ACCEPT = 14,           /* map: accept failures and unauthenticated connections (protocol.md §5.3) */
    ST_REPLACE_PROGRESS = 15, /* map: the last copy phase, records walked/total, queued, sent (protocol.md §5.3) */
};

/* Remote error text the gateway reacts to by refreshing its hash spaces. */
#define ERR_OBSOLETE_HS "obsolete hash space"
/* A read asked of a server that is still catching up (not in sync). */
#define ERR_CATCHING_UP "catching up"

#endif
