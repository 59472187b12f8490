/*
 * kumo — the shared error helper (see kumo.h for the convention) and the
 * one --version line.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef PACKAGE_VERSION /* built without configure (tests/fuzz/run) */
#define PACKAGE_VERSION "unknown"
#endif

#include "kumo.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int kumo_err(char *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, KUMO_ERRLEN, fmt, ap);
        va_end(ap);
    }
    return -1;
}

char *kumo_format_time(time_t sec, long usec, char buf[KUMO_TIMELEN])
{
    struct tm tm;
    char date[24], zone[8];
    localtime_r(&sec, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    strftime(zone, sizeof(zone), "%z", &tm); /* +0900: ISO 8601's extended form wants +09:00 */
    if (usec >= 0) snprintf(buf, KUMO_TIMELEN, "%s.%06d%.3s:%.2s", date, (int)(usec % 1000000), zone, zone + 3);
    else snprintf(buf, KUMO_TIMELEN, "%s%.3s:%.2s", date, zone, zone + 3);
    return buf;
}

void kumo_print_version(const char *prog) { printf("%s (kumofs %s)\n", prog, PACKAGE_VERSION); }

int kumo_version_asked(const char *prog, int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            kumo_print_version(prog);
            return 1;
        }
    }
    return 0;
}
