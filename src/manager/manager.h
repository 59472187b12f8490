/*
 * kumo-manager — the state of one manager, shared by its modules:
 *   main.c        flags, start-up, listeners, signals, the control port
 *   membership.c  servers and gateways, keepalive and fault detection,
 *                 attach/detach, the hash spaces and their distribution
 *   control.c     the commands of kumoctl
 *   partner.c     the second manager: hash-space sync, who drives a replace
 *   replace.c     moving data after a membership change: copy to the new
 *                 owners, switch rhs to whs, delete from the old owners
 *   history.c     each membership change as the next version of one
 *                 history, agreed through a majority of the servers
 *   dispatch.c    which module answers each request on the cluster port
 *
 * Thread rule: one event loop; the manager's work is small and rare.
 */
#ifndef KUMO_MANAGER_H
#define KUMO_MANAGER_H

#include <event2/event.h>
#include <event2/listener.h>

#include "clock.h"
#include "cmdline.h"
#include "daemon.h"
#include "hashspace.h"
#include "net.h"
#include "rpc.h"

typedef struct manager_config {
    daemon_common common;
    const char *listen;   /* -l */
    const char *partner;  /* -p */
    const char *control;  /* -c [addr:]port */
    bool auto_replace;    /* -a */
    double replace_delay; /* -Rs */
} manager_config;

/* A server the manager has heard from. */
typedef struct mserver {
    net_addr addr;
    rpc_conn *conn;     /* the live link, NULL while down */
    rpc_conn *probe;    /* our reconnect attempt after a loss */
    int probes_left;    /* reconnect attempts before it is declared lost */
    double last_answer; /* monotonic time of the last keepalive answer */
    bool keepalive_out;
    bool newcomer;        /* shown under "not attached node" */
    uint64_t incarnation; /* of the process that said hello last (0: unknown) */
    uint8_t keylen;       /* the ring key its database is placed by (ring.h); 0: its address */
    uint8_t key[RING_KEY_MAX];
    bool fresh;    /* answered a blank layout while we learned: a new process */
    bool lost;     /* found lost and marked fault; cleared by its next hello */
    bool suspect;  /* found lost while this manager reached a minority: not marked */
    bool copying;  /* replace: its copy phase has not ended */
    bool copied;   /* replace: it copied everything it had to send in this round */
    bool deleting; /* replace: its delete phase has not ended */
    bool barred;   /* replace: it answered this phase's barrier */
    struct event *probe_timer;
    struct manager *m;
} mserver;

struct manager;

/* What membership.c calls when something happens to the connections and
 * hash spaces it owns. main.c fills them in (with partner, replace and
 * control functions), so that membership.c does not call the modules that
 * call it. */
typedef struct manager_hooks {
    /* a request on the cluster port (dispatch.c) */
    void (*request)(struct manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
    void (*changed)(struct manager *m);                     /* whs/rhs replaced here: partner_sync */
    void (*tick)(struct manager *m, double lag);            /* every tick: partner_tick */
    void (*server_lost)(struct manager *m, mserver *ms);    /* replace_server_lost */
    void (*server_back)(struct manager *m, mserver *ms);    /* said hello again: replace_resend */
    void (*manager_hello)(struct manager *m, rpc_conn *c);  /* partner_hello */
    void (*manager_closed)(struct manager *m, rpc_conn *c); /* partner_closed */
    void (*auto_replace_due)(struct manager *m);            /* the -a timer fired */
    void (*stopping)(struct manager *m);                    /* replace_stop */
    /* a change of the membership (a moved database): history_change with
     * no answer awaited; false while another change is being agreed */
    bool (*propose)(struct manager *m, hashspace *whs, hashspace *rhs);
} manager_hooks;

typedef struct manager {
    struct event_base *base;
    manager_hooks hooks;
    const manager_config *cfg;
    clock_hlc clock;
    net_addr self;
    rpc_self rpc_self;
    daemon_listener *cluster_listener, *control_listener;
    hashspace *whs, *rhs; /* never NULL */
    bool learning;        /* whs is blank or was learned from servers (membership.c) */
    mserver **servers;
    size_t nservers, servers_cap;
    rpc_conn **gateways;
    size_t ngateways, gateways_cap;
    struct event *tick;
    double last_tick; /* monotonic time tick_cb last ran (0: never) */
    struct event *auto_timer;
    /* the second manager (partner.c) */
    bool has_partner;
    net_addr partner;         /* len 0 until the -p name resolves */
    double partner_resolved;  /* monotonic time of the last lookup */
    rpc_conn *partner_conn;   /* the link in use */
    rpc_conn *partner_dialed; /* our own connection attempt */
    struct event *partner_retry;
    double partner_answer; /* monotonic time of the partner's last answer to our keepalive */
    bool partner_ping_out; /* a keepalive to it is in flight */
    bool stopping;
    bool auto_replace; /* -a, or kumoctl enable-auto-replace */
    /* replace (replace.c) */
    bool replacing;
    uint64_t replace_ct; /* whs clocktime the running replace moves data to */
    size_t copy_pending, delete_pending;
    bool copy_failed;                 /* some server could not copy everything */
    hashspace *round_whs, *round_rhs; /* the layout the running copy started from */
    uint64_t round_gen;               /* counts rounds, so a late barrier answer is known */
    uint64_t round_base;              /* random: round_base + round_gen names a phase to servers (replace.c) */
    size_t barrier_pending;           /* servers yet to confirm the layout before a phase */
    size_t catchup_blocked;           /* catching-up servers the last round could not clear */
    struct event *retry_timer;        /* restarts a replace whose copy failed */
    struct proposal *proposal;        /* history.c: the change being agreed, or NULL */
} manager;

/* membership.c */
void membership_start(manager *m);
void membership_stop(manager *m);
/* A new connection on the cluster port (servers and gateways). */
void membership_accept(manager *m, int fd);
/* MGR_KEEPALIVE and MGR_HS_REQUEST; false for any other method. */
bool membership_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

/* dispatch.c: every request on the cluster port. */
void dispatch_request(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
mserver *membership_find_server(manager *m, const net_addr *a);
/* ms as a ring entry: its address and the key its database is placed by. */
ring_node membership_node_of(const mserver *ms, bool active, bool catchup);
/* The handlers of every manager connection (cluster port). */
rpc_handlers membership_handlers(manager *m);
/* Take hash spaces that came from the partner (refs owned): no sync back. */
void membership_adopted(manager *m, hashspace *whs, hashspace *rhs);
/* With auto-replace on: attach newcomers, detach lost servers and replace,
 * -Rs seconds after the last change. */
void membership_schedule_auto_replace(manager *m);

/* control.c: kumoctl's commands (and kumostat -m's status). Answers and
 * returns true if `method` is one. */
bool control_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
/* Auto-replace: attach, detach and replace in one step (if enabled). */
void control_auto_replace(manager *m);

/* Replace both hash spaces (taking ownership of the refs) and push them to
 * every server and gateway. */
void membership_set_hashspaces(manager *m, hashspace *whs, hashspace *rhs);

/* Take a pair that another manager made (found at a server, or learned):
 * by hashspace_adopt's rule, piece by piece; no sync to the partner. */
void membership_take(manager *m, hashspace *whs, hashspace *rhs);
/* The linked server that is listed node n: at n's address, or, placed by
 * the same ring key, at a new one (a container recreated with its volume,
 * before its entry follows it). NULL if none is linked. */
mserver *membership_linked_node(manager *m, const ring_node *n);
/* Whether this manager is linked to a majority of the servers listed in
 * whs, fault ones included (always true without a partner): only then may
 * it mark servers fault (membership.c server_lost). */
bool membership_sees_majority(manager *m);
/* Push the hash spaces to one server (SRV_HS_SYNC). */
void membership_push(manager *m, mserver *ms);

/* history.c */
enum { HISTORY_OK,
       HISTORY_SUPERSEDED,
       HISTORY_FAILED };
/* HISTORY_OK: the change is installed. HISTORY_SUPERSEDED: another change
 * became the next version (and is installed): build the change again on
 * the new hash spaces. HISTORY_FAILED: no majority agreed; why says so. */
typedef void (*history_done)(manager *m, void *arg, int result, const char *why);
/* Make (whs, rhs), built from m->whs and m->rhs, the next version of the
 * membership (refs taken; the version and a fresh ClockTime are set here).
 * done (may be NULL) is called when it is decided, before this returns if
 * nobody must be asked. false, and done never called, while another change
 * of this manager is being agreed. */
bool history_change(manager *m, hashspace *whs, hashspace *rhs, history_done done, void *arg);
bool history_busy(const manager *m);

/* replace.c */
/* Start (or restart) a replace towards the current whs. */
void replace_start(manager *m, bool full);
/* A server reported the end of a phase (MGR_REPLACE_COPY_END/DELETE_END). */
/* phase: the phase's name the server echoed (0 from servers before names). */
void replace_phase_end(manager *m, rpc_conn *c, uint32_t method, uint64_t replace_ct, uint64_t phase, bool ok);
/* A server was lost: it no longer holds up the replace. */
void replace_server_lost(manager *m, mserver *ms);
void replace_stop(manager *m);
/* A server's link came (back) up: resend its phase if it owes one, or
 * start a round if a catch-up waits for copies and it holds one. */
void replace_resend(manager *m, mserver *ms);
/* Whether the down server `a` holds the only in-sync copy of some range
 * (no live in-sync owner is left to copy it): detaching it would let the
 * catching-up owners serve without it. */
bool replace_holds_last_copy(manager *m, const net_addr *a);

/* partner.c */
void partner_start(manager *m);
void partner_stop(manager *m);
void partner_sync(manager *m);
void partner_hello(manager *m, rpc_conn *c);
void partner_closed(manager *m, rpc_conn *c);
bool partner_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
bool partner_up(const manager *m);
/* Every tick: a keepalive to the partner; one silent for PARTNER_SILENCE
 * seconds (hung, or cut off by a partition that closes no connection) is
 * lost: logged, its link closed and dialled again. */
void partner_tick(manager *m, double lag);
/* Whether this manager runs automatic replaces (the smaller address does
 * while both are up). */
bool partner_drives_auto(const manager *m);

#endif
