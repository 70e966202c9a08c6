/* Edge cases of the C allocation functions, checked against the C
 * standard's and glibc's documented behaviour, and a multi-threaded
 * stress with cross-thread frees. Run as `api edge` or `api stress`; prints
 * "ok ..." and exits 0, or names the first failed check and exits 1. The
 * same program passes on glibc's malloc, which keeps the checks honest. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            printf("FAILED at line %d: %s\n", __LINE__, #cond);                  \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static int aligned(void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

static unsigned char pattern(size_t id, size_t i) { return (unsigned char)(id * 131 + i * 7 + 1); }
static void fill(unsigned char *p, size_t n, size_t id) { for (size_t i = 0; i < n; i++) p[i] = pattern(id, i); }
static int holds(const unsigned char *p, size_t n, size_t id) {
    for (size_t i = 0; i < n; i++) if (p[i] != pattern(id, i)) return 0;
    return 1;
}

static void edge(void) {
    /* malloc(0): a unique pointer that can be freed. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    free(z1);
    free(z2);
    free(NULL);

    /* Alignment of every block: max_align_t. */
    for (size_t n = 1; n < 5000; n += 37) {
        void *p = malloc(n);
        CHECK(p && aligned(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0);

    /* Out of memory and overflow: null and ENOMEM. */
    errno = 0;
    CHECK(malloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);

    /* calloc zeroes, also memory that was used before. */
    for (int round = 0; round < 4; round++) {
        unsigned char *d = malloc(100000);
        memset(d, 0xAB, 100000);
        free(d);
        unsigned char *small = malloc(200);
        memset(small, 0xCD, 200);
        free(small);
        unsigned char *c = calloc(1000, 100);
        unsigned char *c2 = calloc(25, 8);
        int zero = 1;
        for (size_t i = 0; i < 100000; i++) zero &= c[i] == 0;
        for (size_t i = 0; i < 200; i++) zero &= c2[i] == 0;
        CHECK(zero);
        free(c);
        free(c2);
    }
    void *c0 = calloc(0, 10);
    CHECK(c0 != NULL);
    free(c0);

    /* realloc: NULL is malloc; contents kept up and down; 0 frees. */
    unsigned char *r = realloc(NULL, 10);
    CHECK(r != NULL);
    fill(r, 10, 1);
    size_t sizes[] = {1, 16, 17, 100, 1000, 4096, 8191, 40000, 100000, 1 << 20, 3 << 20, 5000, 24, 8, 1};
    size_t have = 10;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        unsigned char *q = realloc(r, n);
        CHECK(q != NULL && aligned(q, 16));
        CHECK(holds(q, have < n ? have : n, 1));
        fill(q, n, 1);
        r = q;
        have = n;
    }
    errno = 0;
    CHECK(realloc(r, SIZE_MAX) == NULL && errno == ENOMEM);
    CHECK(holds(r, have, 1)); /* the old block is intact */
    CHECK(realloc(r, 0) == NULL); /* glibc: frees r */

    /* reallocarray overflow leaves the block alone. */
    unsigned char *ra = reallocarray(NULL, 10, 10);
    CHECK(ra != NULL);
    fill(ra, 100, 2);
    errno = 0;
    CHECK(reallocarray(ra, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    CHECK(holds(ra, 100, 2));
    ra = reallocarray(ra, 1000, 10);
    CHECK(ra && holds(ra, 100, 2));
    free(ra);

    /* posix_memalign: EINVAL for a bad alignment, no errno change needed. */
    void *pm = (void *)1;
    CHECK(posix_memalign(&pm, 3, 10) == EINVAL);
    CHECK(posix_memalign(&pm, sizeof(void *) / 2, 10) == EINVAL);
    CHECK(posix_memalign(&pm, 0, 10) == EINVAL);
    for (size_t a = sizeof(void *); a <= ((size_t)1 << 22); a <<= 1) {
        void *p = NULL;
        CHECK(posix_memalign(&p, a, 100) == 0 && p && aligned(p, a));
        memset(p, 1, 100);
        free(p);
    }
    CHECK(posix_memalign(&pm, 64, SIZE_MAX / 2) == ENOMEM);

    /* aligned_alloc: a power of two (glibc 2.38: EINVAL otherwise). */
    void *aa = aligned_alloc(4096, 100);
    CHECK(aa && aligned(aa, 4096));
    free(aa);
    /* glibc 2.38 and later refuse a non-power of two with EINVAL; older
     * glibc rounded it up. Either way the result must be usable. */
    errno = 0;
    void *odd = aligned_alloc(3, 10);
    CHECK(odd == NULL ? errno == EINVAL : malloc_usable_size(odd) >= 10);
    free(odd);

    /* memalign rounds a non-power of two up; valloc and pvalloc by page. */
    void *ma = memalign(48, 10);
    CHECK(ma && aligned(ma, 64));
    free(ma);
    long page = sysconf(_SC_PAGESIZE);
    void *va = valloc(10);
    CHECK(va && aligned(va, (size_t)page));
    free(va);
    void *pv = pvalloc(1);
    CHECK(pv && aligned(pv, (size_t)page) && malloc_usable_size(pv) >= (size_t)page);
    free(pv);

    /* mallinfo2 sees allocations; malloc_trim gives memory back. */
    struct mallinfo2 before = mallinfo2();
    void *big[10];
    for (int i = 0; i < 10; i++) { big[i] = malloc(1 << 20); memset(big[i], 1, 1 << 20); }
    struct mallinfo2 after = mallinfo2();
    /* glibc counts mmapped blocks in hblkhd, scavalloc in both. */
    CHECK(after.uordblks + after.hblkhd >= before.uordblks + before.hblkhd + 10 * (1 << 20));
    for (int i = 0; i < 10; i++) free(big[i]);
    int trimmed = malloc_trim(0);
    CHECK(trimmed == 0 || trimmed == 1);
}

/* Threads allocate random sizes and alignments, check their patterns, and
 * hand half of their blocks to the next thread, which checks and frees
 * them. */
#define THREADS 4
#define SLOTS 2000
#define ROUNDS 40
struct block { unsigned char *p; size_t n, id; };
static struct block handoff[THREADS][SLOTS / 2];
static pthread_barrier_t barrier;

static uint64_t next_rand(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static void *stress_thread(void *arg) {
    size_t t = (size_t)arg;
    uint64_t s = 0x9e3779b97f4a7c15ull ^ (t + 1);
    struct block slots[SLOTS];
    size_t id = t << 40;
    for (int i = 0; i < SLOTS; i++) slots[i].p = NULL;
    for (int round = 0; round < ROUNDS; round++) {
        for (int step = 0; step < 5000; step++) {
            struct block *b = &slots[next_rand(&s) % SLOTS];
            if (b->p) {
                if (!holds(b->p, b->n, b->id)) { printf("FAILED: thread %zu: block changed\n", t); failures++; }
                free(b->p);
            }
            size_t kind = next_rand(&s) % 100;
            size_t n = kind < 90 ? 1 + next_rand(&s) % 1024 : kind < 99 ? 1 + next_rand(&s) % 65536 : 1 + next_rand(&s) % (1 << 21);
            size_t a = (size_t)1 << (next_rand(&s) % 13);
            if (kind % 3 == 0) {
                void *p = NULL;
                if (posix_memalign(&p, a < sizeof(void *) ? sizeof(void *) : a, n) != 0) p = NULL;
                b->p = p;
                if (b->p && !aligned(b->p, a)) { printf("FAILED: misaligned\n"); failures++; }
            } else if (kind % 3 == 1) {
                b->p = calloc(1, n);
            } else {
                b->p = malloc(n);
            }
            if (!b->p) { printf("FAILED: out of memory\n"); failures++; b->n = 0; continue; }
            b->n = n;
            b->id = ++id;
            fill(b->p, n, b->id);
        }
        /* Hand the second half of the slots to the next thread. */
        for (int i = 0; i < SLOTS / 2; i++) { handoff[(t + 1) % THREADS][i] = slots[SLOTS / 2 + i]; slots[SLOTS / 2 + i].p = NULL; }
        pthread_barrier_wait(&barrier);
        for (int i = 0; i < SLOTS / 2; i++) slots[SLOTS / 2 + i] = handoff[t][i];
        pthread_barrier_wait(&barrier);
    }
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i].p) {
            if (!holds(slots[i].p, slots[i].n, slots[i].id)) { printf("FAILED: block changed at the end\n"); failures++; }
            free(slots[i].p);
        }
    }
    return NULL;
}

static void stress(void) {
    pthread_t th[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (size_t t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, stress_thread, (void *)t);
    for (size_t t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
}

static size_t rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) { if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0; fclose(f); }
    return resident * (size_t)sysconf(_SC_PAGESIZE) / 1024;
}

/* 256 MiB of 1 KiB blocks, all but every 10th freed, then up to 6 s of
 * idle: prints the RSS at the peak and after the idle (in KiB). */
static void idle(void) {
    size_t n = (256u << 20) / 1024;
    unsigned char **blocks = malloc(n * sizeof *blocks);
    for (size_t i = 0; i < n; i++) { blocks[i] = malloc(1024); memset(blocks[i], (int)i, 1024); }
    size_t peak = rss_kib();
    for (size_t i = 0; i < n; i++) if (i % 10 != 0) { free(blocks[i]); blocks[i] = NULL; }
    size_t after = rss_kib();
    for (int t = 0; t < 600 && after > peak * 6 / 10; t++) /* 60 s: a hang guard, not a speed bound */ { usleep(100000); after = rss_kib(); }
    for (size_t i = 0; i < n; i += 10) CHECK(blocks[i][1023] == (unsigned char)i);
    printf("peak %zu after %zu\n", peak, after);
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "edge";
    if (strcmp(what, "edge") == 0) edge();
    else if (strcmp(what, "stress") == 0) stress();
    else if (strcmp(what, "idle") == 0) idle();
    else if (strcmp(what, "foreign") == 0) {
        /* A pointer no allocator handed out: must stop the process. */
        static char not_from_malloc[64];
        printf("freeing a foreign pointer\n");
        fflush(stdout);
        free(not_from_malloc + 16);
        printf("survived\n");
    }
    else { printf("usage: api edge|stress|idle|foreign\n"); return 2; }
    if (failures) { printf("%d checks failed\n", failures); return 1; }
    printf("ok %s\n", what);
    return 0;
}
