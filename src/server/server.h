/*
 * kumo-server — the state of one storage server, shared by its modules:
 *   main.c     flags, start-up, listeners, signals
 *   cluster.c  the manager links, hash spaces, peer connections, keepalive
 *   data.c     Get/Set/Delete from gateways, replication to the other owners
 *   replace.c  the server's part of moving data after membership changes
 *   stream.c   the bulk copy of a replace over the stream port (-L)
 *   digest.c   anti-entropy: range digests, range keys, raw fetches (digest.h)
 *   gc.c       tombstone collection
 *   damage.c   a database whose walks stepped over damage: stop, to be rebuilt
 *   dispatch.c which module answers each request, on any connection
 *   apply.c, identity.c, streamdec.c: pure helpers of data, main and stream
 *
 * Thread rule: everything runs on the main event loop (one thread; -TR
 * workers are the subject of the performance work, see docs/architecture.md).
 */
#ifndef KUMO_SERVER_H
#define KUMO_SERVER_H

#include <event2/event.h>
#include <event2/listener.h>
#include <stdint.h>
#include <time.h>

#include "clock.h"
#include "cmdline.h"
#include "daemon.h"
#include "hashspace.h"
#include "identity.h"
#include "metrics.h"
#include "net.h"
#include "record.h"
#include "rpc.h"
#include "store.h"

typedef struct server_config {
    daemon_common common;
    const char *listen;      /* -l */
    const char *node_name;   /* --node-name */
    int stream_port;         /* -L */
    const char *manager1;    /* -m */
    const char *manager2;    /* -p */
    const char *db_spec;     /* -s */
    const char *tmpdir;      /* -f */
    int set_retries;         /* -S */
    int delete_retries;      /* -D */
    int gc_mem_kib;          /* -gS */
    int gc_min_sec;          /* -gN */
    int gc_max_sec;          /* -gX */
    double replace_rate;     /* --replace-rate, MiB/s; 0 = unlimited */
    int verify_interval;     /* --verify-interval, s; 0 = no background anti-entropy pass */
    int max_peer_output_kib; /* --max-peer-output: answers held for one peer before its requests wait */
    bool debug_time;         /* --debug-time: SRV_DEBUG_TIME is served (tests only) */
} server_config;

typedef struct peer {
    net_addr addr;
    rpc_conn *conn; /* NULL when not connected */
} peer;

/* The last copy phase of a replace (replace.c), for kumostat progress,
 * kumoctl status and --metrics. Wall-clock seconds; 0 = not yet. */
typedef struct replace_progress {
    uint64_t replace_ct; /* the replace it belongs to */
    double started, walk_ended, ended;
    uint64_t total;                      /* records in the database when the walk began */
    uint64_t walked;                     /* records looked at so far */
    uint64_t queued;                     /* records to send (one per destination) */
    uint64_t sent_base, sent_bytes_base; /* moved_sent(_bytes) when it began */
    bool full;
} replace_progress;

/* The last backup (data.c): records walked of the database's. */
typedef struct backup_progress {
    double started, ended; /* wall clock; 0 = not yet */
    uint64_t total, walked;
} backup_progress;

typedef struct server {
    struct event_base *base;
    const server_config *cfg;
    clock_hlc clock;
    store *db;
    uint64_t open_damage_spots, open_damage_bytes; /* what the check at open stepped over (main.c) */
    net_addr self;
    bool listen_everywhere; /* -l is not this host's, or not given: every interface */
    node_identity identity; /* identity.h: the ring key this database is placed by */
    uint8_t ring_keylen;    /* as announced: 0 when placed by self's address */
    uint8_t ring_key[RING_KEY_MAX];
    rpc_self rpc_self;
    rpc_handlers handlers;
    daemon_listener *listener;
    rpc_conn **accepted; /* connections others opened to us */
    size_t naccepted, accepted_cap;
    struct links *managers; /* links.h: -m and -p, found by name */
    hashspace *whs;         /* never NULL: empty until a manager sends one */
    hashspace *rhs;
    peer *peers;
    size_t npeers, peers_cap;
    time_t started;
    uint64_t cmd_get, cmd_set, cmd_delete;
    uint64_t repl_retries, repl_failures; /* replica sends repeated / given up */
    bool ready_notified;
    bool stopping;
    int exit_status; /* of main(), once the loop ends (shutdown) */
    /* Set by main.c, so that the modules below call up without naming it
     * (which would make circles of modules): */
    void (*dispatch)(struct server *s, rpc_conn *c, uint32_t msgid, uint32_t method,
                     const msgpack_object *params); /* dispatch_request */
    void (*on_rejoin)(struct server *s);            /* a co-owner caught up: digest_pass_now */
    void (*shutdown)(struct server *s, int status); /* SIGTERM's drain, then exit with status */
    /* flush_all: records older than this ClockTime are gone once its second
     * has come (kept in <db>.flush so a restart does not bring them back) */
    uint64_t flush_floor;
    /* SRV_DEBUG_TIME (--debug-time): seconds added to the time exptimes are
     * judged by (clock.h, the debug clock); 0 otherwise */
    int64_t debug_offset;
    int writes_inflight; /* coordinated writes not yet answered */
    /* Bumped whenever whs or rhs changes; writes_old counts the writes in
     * flight that were routed by an older layout (the barrier of cluster.c
     * waits for them before a replace copies, and before it deletes). */
    uint64_t write_epoch;
    int writes_old;
    /* A replica refused one of our writes because its whs marks us fault:
     * we were lost (stopped, cut off) and hold a stale hash space. Until
     * the view's lease holds again or a manager sends new hash spaces, we
     * coordinate no write and answer no read (cluster.c). */
    bool stale_view;
    double lease_until;       /* clock_mono until which our view is leased (cluster.c) */
    struct lease_slot *lease; /* cluster.c: per manager address, its last confirmation */
    struct event *lease_timer;
    struct failed_write *failed_writes; /* data.c: failed writes undone, while writes are in flight */
    int nfailed_writes;
    bool catching_up;                                                    /* this server is catching up in whs (derived on adoption) */
    bool replace_copying;                                                /* a copy phase has transfers in flight */
    uint64_t replace_latest;                                             /* ClockTime of the newest replace asked of us */
    bool replace_deleting;                                               /* a delete phase is walking */
    uint64_t moved_sent, moved_sent_bytes, moved_recv, moved_recv_bytes; /* by replaces, since start */
    replace_progress progress;                                           /* the last copy phase */
    backup_progress backup;                                              /* the last backup */
    daemon_listener *stream_listener;                                    /* -L */
    admit *stream_admit;                                                 /* -L connections that have not sent a token yet */
    struct offer *offers;                                                /* stream files waiting to be collected */
    struct ev_token_bucket_cfg *rate;                                    /* --replace-rate */
    struct event *flush_timer;
    struct gc *gc;                  /* gc.c: remembered tombstones */
    struct digest *digest;          /* digest.c: anti-entropy walks and their results */
    struct server_metrics *metrics; /* main.c: request latencies for --metrics */
    /* witness.c: this server's vote on version witness_version of the
     * membership history */
    uint64_t witness_version;
    hashspace_ballot witness_promised, witness_accepted;
    hashspace *witness_whs, *witness_rhs; /* accepted for that version, or NULL */
} server;

/* cluster.c */
int cluster_start(server *s, char *err);
void cluster_stop(server *s);
/* The connection to a peer server, connecting if needed (never NULL unless
 * out of memory). */
rpc_conn *cluster_peer(server *s, const net_addr *addr);
/* Requests from managers (keepalive, hash spaces). Returns false if the
 * method is not one of cluster.c's. */
bool cluster_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
void cluster_set_hashspaces(server *s, hashspace *whs, hashspace *rhs);
/* A peer holds us fault: set s->stale_view (a manager's confirmation
 * clears it). */
void cluster_stale_view(server *s, const net_addr *by);
/* Whether every manager we link to confirmed our hash spaces less than
 * VIEW_LEASE seconds ago. A write made outside the lease keeps what it
 * replaced, to be undone if a replica refuses it (data.c). */
bool cluster_view_leased(server *s);
/* Whether a peer server that sent us a write is marked fault in our whs:
 * then its hash space is stale and it must not coordinate. */
bool cluster_peer_is_fault(const server *s, const rpc_conn *c);

/* dispatch.c: every request a server answers, whichever connection it came
 * on (the modules' *_handle functions in turn). */
void dispatch_request(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

/* replace.c: copy and delete phases, and the batches they send. */
bool replace_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
/* The answer to ST_REPLACE_PROGRESS: a map (protocol.md §5.3). */
void replace_pack_progress(const server *s, msgpack_packer *pk);
/* "idle", "walk", "send" or "done": where the last copy phase is. */
const char *replace_progress_phase(const server *s);

/* stream.c: the bulk copy of a replace over the stream port. A stream file
 * collects [key, value] records, compressed, in an unlinked file under -f;
 * offering it hands it to a destination, which pulls and applies it. */
typedef struct stream_file stream_file;
typedef void (*stream_done_fn)(void *arg, bool ok, uint64_t applied);
int stream_start(server *s, char *err);
void stream_stop(server *s);
stream_file *stream_file_new(server *s, char *err);
void stream_file_add(stream_file *f, const void *key, size_t klen, const void *val, size_t vlen);
uint64_t stream_file_count(const stream_file *f);
/* Takes f; fn runs exactly once, later. */
void stream_file_offer(server *s, stream_file *f, const net_addr *to, stream_done_fn fn, void *arg);
void stream_file_abandon(stream_file *f);
bool stream_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

/* gc.c: tombstone collection (-gS, -gN, -gX; kumo-server(8)). */
typedef struct gc_stats {
    uint64_t entries, bytes;    /* remembered now */
    uint64_t pushed, collected; /* tombstones remembered / removed from the database, since start */
    uint64_t forgotten, errors; /* dropped under -gS before -gN (left in the database); store errors */
} gc_stats;
int gc_start(server *s, char *err);
void gc_stop(server *s);
/* A record was written: if it is a tombstone, remember it for collection
 * (and collect what is due). Call after every tombstone this server writes. */
void gc_tombstone(server *s, const void *key, size_t klen, const void *val, size_t vlen);
void gc_get_stats(const server *s, gc_stats *out);

/* damage.c: after every walk, a server whose database walks stepped over
 * damage stops, so that the restart's check rebuilds the file. */
#define SERVER_EXIT_DAMAGED 75 /* EX_TEMPFAIL: start it again */
void damage_walked(server *s);
void damage_metrics(server *s, metrics_out *o);

/* data.c */
/* Walk the whole database in steps, serving requests in between; done runs
 * once (ok = false on a database error or at shutdown). */
typedef void (*data_walk_done_fn)(server *s, void *arg, bool ok);
void data_walk(server *s, store_iter_fn fn, data_walk_done_fn done, void *arg);
/* Read the flush floor kept beside the database (start-up). */
void data_load_flush(server *s);
void data_stop(server *s);
/* Wall-clock seconds, for the progress records of backups and replaces. */
double progress_now(void);
bool data_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

#endif
