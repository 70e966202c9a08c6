/* Over-aligned blocks through their whole life: every power-of-two
 * alignment from 16 B to 1 MiB, from posix_memalign, aligned_alloc and
 * memalign (and page-aligned from valloc and pvalloc), in sizes below, at
 * and above the alignment and the class and page boundaries; each block is
 * checked for its alignment, filled, then realloc'd up and down across
 * those boundaries (its kept prefix checked after every step,
 * malloc_usable_size at least what was asked) and freed. The whole matrix
 * runs in the main thread, then in a few threads that exit (their caches
 * are flushed then), then in the main thread again.
 *
 * Prints "ok aligned-realloc ..." and exits 0, or names the first failed
 * check and exits 1. Passes on glibc as well as under LD_PRELOAD of
 * libscavalloc.so. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 3

static void fail(const char *what, size_t align, size_t size, size_t step, void *p) {
    printf("FAILED: %s (align %zu, size %zu, step %zu, block %p)\n", what, align, size, step, p);
    fflush(stdout);
    exit(1);
}

static unsigned char pattern(uint64_t seed, size_t i) {
    uint64_t x = (seed + i) * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(x >> 56);
}

static void fill(unsigned char *p, size_t from, size_t to, uint64_t seed) {
    for (size_t i = from; i < to; i++) p[i] = pattern(seed, i);
}

/* The first index in [0, n) whose byte is wrong, or n. */
static size_t first_wrong(const unsigned char *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern(seed, i)) return i;
    return n;
}

enum how { POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN, VALLOC, PVALLOC, HOWS };
static const char *const how_name[HOWS] = {"posix_memalign", "aligned_alloc", "memalign", "valloc", "pvalloc"};

/* Where realloc takes each block: across the small classes, the 8 KiB
 * page, the 32 KiB largest class, and into large objects, then back down
 * to one byte. Each block starts at a different place in the cycle, so
 * every boundary is also crossed by a block's first realloc. */
static const size_t steps[] = {
    200, 1, 8191, 8192, 8193, 32768, 32769, 70000, (size_t)1 << 20,
    70000, 32769, 32768, 8193, 8192, 8191, 4096, 200, 16,
};
#define NSTEPS (sizeof steps / sizeof steps[0])

static size_t page;

static void *allocate(enum how how, size_t align, size_t size) {
    void *p = NULL;
    switch (how) {
    case POSIX_MEMALIGN:
        if (posix_memalign(&p, align, size) != 0) p = NULL;
        break;
    case ALIGNED_ALLOC: p = aligned_alloc(align, size); break;
    case MEMALIGN: p = memalign(align, size); break;
    case VALLOC: p = valloc(size); break;
    case PVALLOC: p = pvalloc(size); break;
    default: break;
    }
    return p;
}

/* One block: allocated, realloc'd through `steps` from `start` on, freed.
 * Returns the number of reallocs. */
static size_t one_block(enum how how, size_t align, size_t size, size_t start, uint64_t seed) {
    unsigned char *p = allocate(how, align, size);
    if (!p) fail(how_name[how], align, size, 0, p);
    if ((uintptr_t)p % align != 0) fail("misaligned block", align, size, 0, p);
    if (malloc_usable_size(p) < size) fail("usable size below the request", align, size, 0, p);
    fill(p, 0, size, seed);
    size_t have = size;
    for (size_t k = 0; k < NSTEPS; k++) {
        size_t want = steps[(start + k) % NSTEPS];
        unsigned char *q = realloc(p, want);
        if (!q) fail("realloc returned null", align, size, want, p);
        if ((uintptr_t)q % 16 != 0) fail("realloc result not 16-aligned", align, size, want, q);
        size_t keep = have < want ? have : want;
        size_t bad = first_wrong(q, keep, seed);
        if (bad != keep) {
            printf("byte %zu of %zu kept bytes differs\n", bad, keep);
            fail("realloc lost contents", align, size, want, q);
        }
        if (malloc_usable_size(q) < want) fail("usable size below the realloc request", align, size, want, q);
        fill(q, keep, want, seed);
        p = q;
        have = want;
    }
    if (first_wrong(p, have, seed) != have) fail("contents changed before free", align, size, have, p);
    free(p);
    return NSTEPS;
}

/* Sizes tried for alignment `align`: around the alignment itself and the
 * class and page boundaries. */
static size_t sizes_for(size_t align, size_t *out) {
    static const size_t fixed[] = {1, 100, 1024, 4095, 4096, 4097, 8191, 8192, 8193, 32768, 32769, 65537};
    size_t n = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) out[n++] = fixed[i];
    out[n++] = align - 1;
    out[n++] = align;
    out[n++] = align + 1;
    out[n++] = 3 * align;
    return n;
}

struct tally {
    uint64_t salt;
    size_t blocks, reallocs;
};

/* The whole matrix; `t->salt` varies the contents between runs. */
static void matrix(struct tally *t) {
    uint64_t salt = t->salt;
    size_t sizes[32];
    size_t start = salt % NSTEPS;
    for (int how = 0; how < HOWS; how++) {
        for (size_t align = 16; align <= ((size_t)1 << 20); align *= 2) {
            /* valloc and pvalloc take no alignment: they give a page's. */
            size_t a = align;
            if (how == VALLOC || how == PVALLOC) {
                if (align != 16) continue;
                a = page;
            }
            size_t n = sizes_for(a, sizes);
            for (size_t i = 0; i < n; i++) {
                uint64_t seed = salt * 1000003u + (uint64_t)how * 7919u + a * 31u + sizes[i];
                t->reallocs += one_block((enum how)how, a, sizes[i], start++, seed);
                t->blocks++;
                /* And the same block freed straight away. */
                void *p = allocate((enum how)how, a, sizes[i]);
                if (!p || (uintptr_t)p % a != 0) fail("plain aligned allocation", a, sizes[i], 0, p);
                if (malloc_usable_size(p) < sizes[i]) fail("usable size (plain)", a, sizes[i], 0, p);
                memset(p, 0xa5, sizes[i]);
                free(p);
                t->blocks++;
            }
        }
    }
}

static void *worker(void *arg) {
    matrix(arg);
    return NULL;
}

int main(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    /* The case as first reported: a one-page large object realloc'd into a
     * small class. */
    void *p = NULL;
    if (posix_memalign(&p, 65536, 100) != 0) fail("posix_memalign", 65536, 100, 0, p);
    memset(p, 7, 100);
    unsigned char *q = realloc(p, 200);
    if (!q || q[99] != 7) fail("realloc of the first case", 65536, 100, 200, q);
    free(q);

    struct tally total = {1, 0, 0};
    matrix(&total);

    pthread_t th[THREADS];
    struct tally per[THREADS];
    for (int i = 0; i < THREADS; i++) {
        per[i] = (struct tally){(uint64_t)i + 2, 0, 0};
        if (pthread_create(&th[i], NULL, worker, &per[i]) != 0) fail("pthread_create", 0, 0, 0, NULL);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total.blocks += per[i].blocks;
        total.reallocs += per[i].reallocs;
    }
    /* Again, now on memory the exited threads gave back. */
    total.salt = THREADS + 2;
    matrix(&total);
    printf("ok aligned-realloc blocks=%zu reallocs=%zu\n", total.blocks, total.reallocs);
    return 0;
}
