/*
 * opts — the command line of every binary, from one table.
 *
 * Flags are kumofs 0.4's: single dash, possibly several letters
 * ("-TR 4", "-Ci 0.5", "-gS 2048"), each with an optional --long name.
 * A flag's value is the next argument. The table gives type, bounds,
 * default and help; opts_usage() prints them all (defaults included) and the
 * man-page test checks the pages against it.
 *
 * opts_parse(): "--help"/"-h" (unless the table uses -h) prints usage to
 * stdout and exits 0; "--version" prints the version and exits 0; an unknown
 * flag, a missing value, a value that does not parse or is out of bounds, or
 * a missing required flag prints "prog: <what is wrong>" and the usage to
 * stderr and exits 64 (EX_USAGE). Arguments that are not flags are left in
 * argv order in *rest (for tools' positional arguments).
 *
 * Thread rule: start-up only. Calls: nothing.
 */
#ifndef KUMO_OPTS_H
#define KUMO_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define OPTS_EX_USAGE 64

typedef enum opt_type {
    OPT_FLAG,   /* bool, no value */
    OPT_INT,    /* int, bounds checked */
    OPT_DOUBLE, /* double (seconds), bounds checked */
    OPT_STRING, /* const char * (points into argv or the default) */
} opt_type;

typedef struct opt_def {
    const char *name;     /* "-TR" */
    const char *longname; /* "--read-threads" or NULL */
    opt_type type;
    size_t offset;       /* offsetof(config struct, field) */
    const char *metavar; /* "<num>" shown in usage; NULL for flags */
    const char *def;     /* default as text ("4", "0.5", NULL = none) */
    double min, max;     /* bounds for OPT_INT / OPT_DOUBLE */
    bool required;
    const char *help;
} opt_def;

typedef struct opts_spec {
    const char *prog;     /* "kumo-server" */
    const char *synopsis; /* "-l <addr> -m <addr> -s <path.tch> [options]" */
    const opt_def *defs;
    size_t ndefs;
} opts_spec;

/* Fill cfg (defaults first, then argv). Positional arguments go to rest
 * (capacity restcap; more than that is a usage error); *nrest set.
 * Exits as described above; returns only on success. */
void opts_parse(const opts_spec *spec, void *cfg, int argc, char **argv,
                const char **rest, size_t restcap, size_t *nrest);
void opts_usage(const opts_spec *spec, FILE *out);
/* Print "prog: message" and the usage to stderr, exit 64. For checks the
 * table cannot express (e.g. "-t, -b or -c is required"). */
void opts_die(const opts_spec *spec, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
