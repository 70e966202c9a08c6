/* realloc within what a block already holds, malloc_usable_size and calloc,
 * for every request size from 0 to 40000 bytes:
 *
 * - malloc(n) gives at least n usable bytes (malloc_usable_size), 16-aligned;
 * - the block is filled through all its usable bytes, then realloc'd to its
 *   usable size and back to n: both return the same pointer (a size the
 *   block already holds needs no move; on scavalloc, the same size class)
 *   for every small size (up to 32 KiB), and keep the contents;
 * - a block freed dirty and asked for again through calloc reads as zero
 *   over all n bytes (a small calloc may reuse the block just freed).
 *
 * Prints "ok in-place ..." and exits 0, or names the first failed check and
 * exits 1. Passes on glibc as well as under LD_PRELOAD of libscavalloc.so. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZE 40000
#define SMALL_MAX 32768

static void fail(const char *what, size_t n, size_t usable, void *p) {
    printf("FAILED: %s (size %zu, usable %zu, block %p)\n", what, n, usable, p);
    fflush(stdout);
    exit(1);
}

static unsigned char pattern(size_t seed, size_t i) {
    return (unsigned char)(((seed + i) * 0x9E3779B97F4A7C15ull) >> 56);
}

static void fill(unsigned char *p, size_t len, size_t seed) {
    for (size_t i = 0; i < len; i++) p[i] = pattern(seed, i);
}

static int intact(const unsigned char *p, size_t len, size_t seed) {
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern(seed, i)) return 0;
    return 1;
}

int main(void) {
    size_t same = 0;
    for (size_t n = 0; n <= MAX_SIZE; n++) {
        unsigned char *p = malloc(n);
        if (!p) fail("malloc returned null", n, 0, p);
        if ((uintptr_t)p % 16) fail("malloc block not 16-aligned", n, 0, p);
        size_t usable = malloc_usable_size(p);
        if (usable < n) fail("usable size below the request", n, usable, p);
        fill(p, usable, n);
        uintptr_t was = (uintptr_t)p; /* compared after realloc, never used */

        unsigned char *q = realloc(p, usable ? usable : 1);
        if (!q) fail("realloc to the usable size returned null", n, usable, p);
        if (n <= SMALL_MAX && (uintptr_t)q != was) fail("realloc to the usable size moved the block", n, usable, q);
        if (!intact(q, usable, n)) fail("realloc to the usable size lost contents", n, usable, q);
        unsigned char *r = realloc(q, n ? n : 1);
        uintptr_t was_q = (uintptr_t)q;
        if (!r) fail("realloc back to the request returned null", n, usable, r);
        if (n <= SMALL_MAX && (uintptr_t)r != was_q) fail("realloc back to the request moved the block", n, usable, r);
        if (!intact(r, n, n)) fail("realloc back to the request lost contents", n, usable, r);
        if (malloc_usable_size(r) < n) fail("usable size below the request after realloc", n, usable, r);
        same += ((uintptr_t)r == was);

        /* Dirty, free, and ask again zeroed. */
        memset(r, 0xA5, malloc_usable_size(r));
        free(r);
        unsigned char *z = calloc(1, n);
        if (!z) fail("calloc returned null", n, 0, z);
        for (size_t i = 0; i < n; i++)
            if (z[i] != 0) fail("calloc block not zero", n, i, z);
        if (malloc_usable_size(z) < n) fail("calloc usable size below the request", n, 0, z);
        free(z);
    }
    printf("ok in-place: sizes 0..%d, %zu kept in place through both reallocs\n", MAX_SIZE, same);
    return 0;
}
