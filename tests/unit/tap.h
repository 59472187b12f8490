/*
 * tap.h — a minimal TAP producer for the C unit tests (automake's
 * tap-driver.sh and prove both read it). Header-only on purpose: each test
 * is one .c file with main().
 */
#ifndef KUMO_TAP_H
#define KUMO_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

#define ok(cond, ...)                                                       \
    do {                                                                    \
        int ok_ = (cond) ? 1 : 0;                                           \
        printf("%sok %d - ", ok_ ? "" : "not ", ++tap_n);                   \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        if (!ok_) {                                                         \
            tap_failed++;                                                   \
            printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                   \
    } while (0)
#define is_int(got, want, ...)                                     \
    do {                                                           \
        long long g_ = (long long)(got), w_ = (long long)(want);   \
        ok(g_ == w_, __VA_ARGS__);                                 \
        if (g_ != w_) printf("#   got %lld, want %lld\n", g_, w_); \
    } while (0)
#define is_str(got, want, ...)                                                                   \
    do {                                                                                         \
        const char *g_ = (got), *w_ = (want);                                                    \
        int same_ = g_ && w_ && strcmp(g_, w_) == 0;                                             \
        ok(same_, __VA_ARGS__);                                                                  \
        if (!same_) printf("#   got '%s', want '%s'\n", g_ ? g_ : "(null)", w_ ? w_ : "(null)"); \
    } while (0)
/* A test that cannot run here (TAP's SKIP directive: counted, not failed). */
#define skip(...) (printf("ok %d # SKIP ", ++tap_n), printf(__VA_ARGS__), printf("\n"))
#define diag(...) (printf("# "), printf(__VA_ARGS__), printf("\n"))

/* Print the plan and return the exit status for main(). */
static inline int done_testing(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif
