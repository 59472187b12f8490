/*
 * fuzz.h — what every libFuzzer target of tests/fuzz shares: CHECK, an
 * invariant that aborts (a finding, with its file and line) when false, and
 * the entry point's prototype (-Wmissing-prototypes).
 */
#ifndef KUMO_FUZZ_H
#define KUMO_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
