/*
 * kumo — the shared error helper (see kumo.h for the convention).
 */
#include "kumo.h"

#include <stdarg.h>
#include <stdio.h>

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
