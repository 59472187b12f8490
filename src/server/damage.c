/*
 * damage — what a server does when its database file is damaged
 * (docs/architecture.md §11.2).
 *
 * store.c's walks step over the parts of the file they cannot read instead
 * of failing on them, and count them (store_damage), so a replace, a backup
 * or an anti-entropy pass goes on past a bad disk block. What then:
 *
 *   - found at start: main.c opens the database with store_open_checked,
 *     whose walk finds the damage and rebuilds the file from every record
 *     it could read (TC's index of a damaged file leads lookups and writes
 *     of some keys into the damage, and TC refuses those writes). A new
 *     process is a lost server to the manager, so it is attached again, and
 *     the attach catches it up from the other owners before it serves;
 *   - found by a later walk (the disk failed under a running server):
 *     damage_walked stops the server (SIGTERM's drain) with exit status
 *     75, EX_TEMPFAIL. systemd (Restart=on-failure) or Docker (restart:
 *     unless-stopped) start it again, and the check at open rebuilds the
 *     file. Serving on would mean writes of some keys failing for good,
 *     and a catch-up into the damaged file would fail with them.
 *
 * A copy walk that stepped over damage also reports its copy failed
 * (replace.c): what was there was not sent.
 *
 * Owns: nothing. Calls: store, log, binlog, metrics. Thread rule: main loop.
 */
#include "binlog.h"
#include "log.h"
#include "server.h"

void damage_walked(server *s)
{
    uint64_t spots, bytes;
    store_damage(s->db, &spots, &bytes);
    if (spots == 0 || s->stopping || s->exit_status != 0) return;
    log_error("database %s: a walk stepped over %llu damaged spots (%llu bytes): stopping (exit status %d) so that "
              "the restart rebuilds the file from what can be read; then attach catches this server up",
              store_path(s->db), (unsigned long long)spots, (unsigned long long)bytes, SERVER_EXIT_DAMAGED);
    binlog_event(LOG_LVL_ERROR, "db_damaged", BL_UINT("spots", spots), BL_UINT("bytes", bytes));
    s->shutdown(s, SERVER_EXIT_DAMAGED);
}

/* The check at open counts too: after the restart that rebuilt the file,
 * the metrics still say this process found damage (the rebuilt file itself
 * has none, so store_damage starts again from 0). */
void damage_metrics(server *s, metrics_out *o)
{
    uint64_t spots, bytes;
    store_damage(s->db, &spots, &bytes);
    metrics_counter(o, "kumo_server_db_damaged_spots",
                    "damaged parts of the database file that walks stepped over (the check at open included)",
                    spots + s->open_damage_spots);
    metrics_counter(o, "kumo_server_db_damaged_bytes",
                    "bytes of the database file that walks stepped over as damaged (the check at open included)",
                    bytes + s->open_damage_bytes);
}
