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

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

void kumo_sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int kumo_save_file(const char *path, const void *data, size_t len, char *err)
{
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp) return kumo_err(err, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp", path);
    int rc = -1, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const char *p = data;
    size_t left = len;
    while (fd >= 0 && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        left -= (size_t)w;
    }
    if (fd < 0 || left > 0 || fsync(fd) != 0) kumo_err(err, "%s: %s", tmp, strerror(errno ? errno : EIO));
    else if (rename(tmp, path) != 0) kumo_err(err, "%s: %s", path, strerror(errno));
    else rc = 0;
    if (rc == 0) kumo_sync_dir(path);
    if (fd >= 0) close(fd);
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc;
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
