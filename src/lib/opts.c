/*
 * opts — the command line of every binary, from one table (see opts.h).
 *
 * Owns: nothing after it returns; the config struct is the caller's.
 * Calls: nothing (stdio only).
 * Thread rule: start-up only (it may exit the process).
 *
 * Flags are exact tokens, as in kumofs 0.4's Kazuhiki: "-TR" is one flag,
 * never "-T" plus "R". A long name may also be written "--name=value".
 * "--" ends the flags; everything after it is positional.
 * Bounds: OPT_INT accepts [min, max] and always fits an int; when a table
 * entry leaves both min and max at 0 the value is unbounded (an int: the
 * int range; a double: any finite number).
 * A bad default in the table is a programming error: it is reported and the
 * process exits with 70 (EX_SOFTWARE) so the test suite catches it.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "kumo.h"
#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.5.0"
#endif

#define OPTS_EX_SOFTWARE 70

static bool unbounded(const opt_def *d)
{
    return d->min == 0 && d->max == 0;
}

static int parse_int(const opt_def *d, const char *s, int *out)
{
    if (!*s || isspace((unsigned char)*s)) return -1; /* strtoll would skip it */
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    double lo = unbounded(d) ? INT_MIN : d->min, hi = unbounded(d) ? INT_MAX : d->max;
    if (lo < INT_MIN) lo = INT_MIN;
    if (hi > INT_MAX) hi = INT_MAX;
    if ((double)v < lo || (double)v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const opt_def *d, const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s)) return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    if (!unbounded(d) && (v < d->min || v > d->max)) return -1;
    *out = v;
    return 0;
}

/* Store text as d's value into cfg. 0 / -1 if it does not parse or is out of bounds. */
static int set_value(const opt_def *d, void *cfg, const char *text)
{
    char *field = (char *)cfg + d->offset;
    switch (d->type) {
    case OPT_FLAG:
        *(bool *)(void *)field = text != NULL;
        return 0;
    case OPT_INT: {
        int v = 0;
        if (text && parse_int(d, text, &v) < 0) return -1;
        *(int *)(void *)field = v;
        return 0;
    }
    case OPT_DOUBLE: {
        double v = 0;
        if (text && parse_double(d, text, &v) < 0) return -1;
        *(double *)(void *)field = v;
        return 0;
    }
    case OPT_STRING:
        *(const char **)(void *)field = text;
        return 0;
    }
    return -1;
}

/* "(an integer from 1 to 256)" for the error message. */
static void describe(const opt_def *d, char *buf, size_t cap)
{
    if (d->type == OPT_INT) {
        if (unbounded(d))
            snprintf(buf, cap, "(an integer)");
        else
            snprintf(buf, cap, "(an integer from %.0f to %.0f)", d->min, d->max);
    } else if (unbounded(d)) {
        snprintf(buf, cap, "(a number)");
    } else {
        snprintf(buf, cap, "(a number from %g to %g)", d->min, d->max);
    }
}

static const opt_def *find(const opts_spec *spec, const char *tok, size_t len)
{
    for (size_t i = 0; i < spec->ndefs; i++) {
        const opt_def *d = &spec->defs[i];
        if (strlen(d->name) == len && strncmp(d->name, tok, len) == 0) return d;
        if (d->longname && strlen(d->longname) == len && strncmp(d->longname, tok, len) == 0) return d;
    }
    return NULL;
}

static void vdie(const opts_spec *spec, const char *fmt, va_list ap) __attribute__((noreturn, format(printf, 2, 0)));
static void vdie(const opts_spec *spec, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", spec->prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    opts_usage(spec, stderr);
    exit(OPTS_EX_USAGE);
}

void opts_die(const opts_spec *spec, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vdie(spec, fmt, ap);
    va_end(ap);
}

void opts_usage(const opts_spec *spec, FILE *out)
{
    fprintf(out, "Usage: %s %s\n", spec->prog, spec->synopsis ? spec->synopsis : "[options]");
    int width = 0;
    for (size_t i = 0; i < spec->ndefs; i++) {
        const opt_def *d = &spec->defs[i];
        int w = snprintf(NULL, 0, "%s%s%s%s%s", d->name, d->longname ? ", " : "",
                         d->longname ? d->longname : "", d->metavar ? " " : "",
                         d->metavar ? d->metavar : "");
        if (w > width) width = w;
    }
    for (size_t i = 0; i < spec->ndefs; i++) {
        const opt_def *d = &spec->defs[i];
        char left[256];
        snprintf(left, sizeof(left), "%s%s%s%s%s", d->name, d->longname ? ", " : "",
                 d->longname ? d->longname : "", d->metavar ? " " : "", d->metavar ? d->metavar : "");
        fprintf(out, "  %-*s   %s", width, left, d->help ? d->help : "");
        if (d->required)
            fprintf(out, " (required)");
        else if (d->def)
            fprintf(out, " (default: %s)", d->def);
        fputc('\n', out);
    }
}

void opts_parse(const opts_spec *spec, void *cfg, int argc, char **argv,
                const char **rest, size_t restcap, size_t *nrest)
{
    bool table_has_h = find(spec, "-h", 2) != NULL;
    bool *seen = calloc(spec->ndefs ? spec->ndefs : 1, sizeof(bool));
    if (!seen) {
        fprintf(stderr, "%s: out of memory\n", spec->prog);
        exit(OPTS_EX_SOFTWARE);
    }
    size_t n = 0;

    for (size_t i = 0; i < spec->ndefs; i++) {
        const opt_def *d = &spec->defs[i];
        /* A flag starts false whatever its (display-only) default says;
         * a number without a default starts at 0, a string at NULL. */
        if (set_value(d, cfg, d->type == OPT_FLAG ? NULL : d->def) < 0) {
            fprintf(stderr, "%s: internal error: bad default '%s' for %s\n", spec->prog, d->def, d->name);
            exit(OPTS_EX_SOFTWARE);
        }
    }

    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!flags_done && a[0] == '-' && a[1] != '\0') {
            if (strcmp(a, "--") == 0) {
                flags_done = true;
                continue;
            }
            if (strcmp(a, "--help") == 0 || (!table_has_h && strcmp(a, "-h") == 0)) {
                opts_usage(spec, stdout);
                exit(0);
            }
            if (strcmp(a, "--version") == 0 && !find(spec, a, strlen(a))) {
                kumo_print_version(spec->prog);
                exit(0);
            }
            /* "--long=value" */
            const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            const opt_def *d = find(spec, a, len);
            if (!d) {
                free(seen);
                opts_die(spec, "unknown option '%.*s'", (int)len, a);
            }
            seen[d - spec->defs] = true;
            if (d->type == OPT_FLAG) {
                if (eq) {
                    free(seen);
                    opts_die(spec, "option '%.*s' takes no value", (int)len, a);
                }
                set_value(d, cfg, a);
                continue;
            }
            const char *val;
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                free(seen);
                opts_die(spec, "option '%s' needs a value", a);
            }
            if (set_value(d, cfg, val) < 0) {
                char what[128];
                describe(d, what, sizeof(what));
                free(seen);
                opts_die(spec, "invalid value '%s' for %.*s %s", val, (int)len, a, what);
            }
            continue;
        }
        if (n >= restcap) {
            free(seen);
            opts_die(spec, "unexpected argument '%s'", a);
        }
        rest[n++] = a;
    }

    for (size_t i = 0; i < spec->ndefs; i++) {
        if (spec->defs[i].required && !seen[i]) {
            free(seen);
            opts_die(spec, "%s is required", spec->defs[i].name);
        }
    }
    free(seen);
    if (nrest) *nrest = n;
}
