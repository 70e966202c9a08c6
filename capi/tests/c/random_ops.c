/* A randomized differential test of the C allocation functions: four
 * threads each do a deterministic random sequence of malloc, calloc,
 * realloc, reallocarray, posix_memalign, aligned_alloc, memalign, free and
 * malloc_usable_size on a table of slots, and every so many operations each
 * hands a run of its slots to the next thread (blocks freed and realloc'd
 * by another thread than the one that allocated them, while that one goes
 * on allocating).
 *
 * Every block is filled with a pattern derived from its (id, size) and
 * checked in full before each realloc and free (and its kept prefix after
 * a realloc); calloc memory is checked zero, alignment checked, and
 * malloc_usable_size at least the size asked for.
 *
 * Run as `random_ops [ops-per-thread]`. The hand-offs happen at barriers,
 * so each thread's sequence depends only on the seeds, never on timing or
 * the allocator: the last line, "summary ...", is the same under glibc and
 * under any correct allocator. Exits 0, or names the first failed check
 * and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define SLOTS 1024
/* Operations between hand-offs, and slots handed on at each. */
#define ROUND 4096
#define HANDOFF 96

struct block {
    unsigned char *p;
    size_t size;
    uint64_t id;
};

enum op {
    OP_MALLOC,
    OP_CALLOC,
    OP_POSIX_MEMALIGN,
    OP_ALIGNED_ALLOC,
    OP_MEMALIGN,
    OP_REALLOC_NULL,
    OP_REALLOCARRAY_NULL,
    OP_FREE,
    OP_REALLOC,
    OP_REALLOC_NEAR,
    OP_REALLOCARRAY,
    OP_REALLOC_ZERO,
    OP_OVERFLOW,
    OP_USABLE,
    OP_PEEK,
    OP_HANDED,
    NOPS
};
static const char *const op_name[NOPS] = {
    "malloc", "calloc", "posix_memalign", "aligned_alloc", "memalign", "realloc_null",
    "reallocarray_null", "free", "realloc", "realloc_near", "reallocarray", "realloc_zero",
    "overflow", "usable", "peek", "handed",
};

struct thread {
    int index;
    pthread_t handle;
    uint64_t rng;
    uint64_t next_id;
    uint64_t hash;
    uint64_t checked_bytes;
    uint64_t count[NOPS];
    struct block slot[SLOTS];
};

static struct thread threads[THREADS];
/* exchange[t] is written by thread t and emptied by thread t + 1, each
 * between the same two barriers. */
static struct block exchange[THREADS][HANDOFF];
static pthread_barrier_t barrier;
static long ops_per_thread = 500000;
/* Sizes whose products overflow, hidden from the compiler's warnings. */
static volatile size_t half_max = SIZE_MAX / 2, quarter_max = SIZE_MAX / 4;

static void fail(struct thread *t, const char *what, const struct block *b) {
    printf("FAILED in thread %d: %s (block id %llu, size %zu, at %p)\n", t->index, what,
           (unsigned long long)(b ? b->id : 0), b ? b->size : 0, b ? (void *)b->p : NULL);
    fflush(stdout);
    exit(1);
}

static uint64_t next(struct thread *t) {
    /* xorshift64* */
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

static void note(struct thread *t, enum op op, uint64_t a, uint64_t b) {
    t->count[op]++;
    t->hash = mix(t->hash ^ ((uint64_t)op << 56) ^ a ^ (b << 17) ^ (b >> 47));
}

/* The pattern of a block: word j of it is word(seed, j). */
static uint64_t seed_of(const struct block *b) { return mix(b->id * 0x9E3779B97F4A7C15ull + b->size); }
static uint64_t word(uint64_t seed, size_t j) { return seed ^ (j * 0xD6E8FEB86659FD93ull); }

static void fill(unsigned char *p, size_t n, uint64_t seed) {
    size_t words = n / 8, j;
    for (j = 0; j < words; j++) {
        uint64_t w = word(seed, j);
        memcpy(p + 8 * j, &w, 8);
    }
    if (n % 8) {
        uint64_t w = word(seed, j);
        memcpy(p + 8 * j, &w, n % 8);
    }
}

/* Whether the first `n` bytes at `p` hold the pattern of `seed`. */
static int holds(const unsigned char *p, size_t n, uint64_t seed) {
    size_t words = n / 8, j;
    for (j = 0; j < words; j++) {
        uint64_t w = word(seed, j), v;
        memcpy(&v, p + 8 * j, 8);
        if (v != w) return 0;
    }
    if (n % 8) {
        uint64_t w = word(seed, j);
        if (memcmp(p + 8 * j, &w, n % 8) != 0) return 0;
    }
    return 1;
}

static void check(struct thread *t, const struct block *b, const char *when) {
    if (!holds(b->p, b->size, seed_of(b))) fail(t, when, b);
    t->checked_bytes += b->size;
}

static int is_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* A size: mostly small, some across the class and page boundaries, a few
 * large objects, rarely a MiB or two. */
static size_t random_size(struct thread *t) {
    uint64_t r = next(t);
    unsigned pick = (unsigned)(r % 10000);
    r >>= 16;
    if (pick < 6500) return 1 + r % 256;
    if (pick < 8800) return 257 + r % 3840;
    if (pick < 9700) return 4097 + r % 36000;
    if (pick < 9990) return 40001 + r % 260000;
    return (1u << 20) + r % (1u << 20);
}

static size_t random_align(struct thread *t) {
    uint64_t r = next(t);
    if (r % 200 == 0) return (size_t)1 << (17 + r / 200 % 4); /* 128 KiB .. 1 MiB */
    return (size_t)16 << (r / 200 % 9);                        /* 16 B .. 4 KiB */
}

static void check_aligned(struct thread *t, const struct block *b, size_t align) {
    if ((uintptr_t)b->p % align) fail(t, "misaligned", b);
    if (malloc_usable_size(b->p) < b->size) fail(t, "usable size below the request", b);
}

static void allocate(struct thread *t, struct block *b) {
    uint64_t r = next(t);
    unsigned pick = (unsigned)(r % 100);
    size_t size = random_size(t), align = 16;
    enum op op;
    b->id = ((uint64_t)t->index << 48) | t->next_id++;
    errno = 0;
    if (pick < 40) {
        op = OP_MALLOC;
        b->p = malloc(size);
    } else if (pick < 60) {
        op = OP_CALLOC;
        size_t elem = (size_t)1 << (r >> 8) % 4;
        size_t count = (size + elem - 1) / elem;
        size = count * elem;
        b->p = calloc(count, elem);
        if (b->p && !is_zero(b->p, size)) {
            b->size = size;
            fail(t, "calloc memory not zero", b);
        }
    } else if (pick < 70) {
        op = OP_POSIX_MEMALIGN;
        align = random_align(t);
        void *p = NULL;
        int e = posix_memalign(&p, align, size);
        if (e != 0) p = NULL;
        b->p = p;
    } else if (pick < 78) {
        op = OP_ALIGNED_ALLOC;
        align = random_align(t);
        b->p = aligned_alloc(align, size);
    } else if (pick < 86) {
        op = OP_MEMALIGN;
        align = random_align(t);
        b->p = memalign(align, size);
    } else if (pick < 93) {
        op = OP_REALLOC_NULL;
        b->p = realloc(NULL, size);
    } else {
        op = OP_REALLOCARRAY_NULL;
        size_t elem = (r >> 8) % 3 + 1;
        size_t count = (size + elem - 1) / elem;
        size = count * elem;
        b->p = reallocarray(NULL, count, elem);
    }
    b->size = size;
    if (!b->p) fail(t, op_name[op], b);
    check_aligned(t, b, align);
    fill(b->p, size, seed_of(b));
    note(t, op, size, align);
}

/* Resizes `b` by `op` to count * elem bytes (realloc or reallocarray). */
static void resize(struct thread *t, struct block *b, enum op op, size_t count, size_t elem) {
    size_t size = count * elem;
    check(t, b, "contents changed before realloc");
    unsigned char *q = op == OP_REALLOCARRAY ? reallocarray(b->p, count, elem) : realloc(b->p, size);
    if (!q) fail(t, "realloc returned null", b);
    struct block old = *b;
    size_t keep = old.size < size ? old.size : size;
    b->p = q;
    if (!holds(q, keep, seed_of(&old))) fail(t, "realloc lost contents", b);
    b->size = size;
    check_aligned(t, b, 16);
    fill(q, size, seed_of(b));
    note(t, op, old.size, size);
}

static void operate(struct thread *t) {
    uint64_t r = next(t);
    struct block *b = &t->slot[r % SLOTS];
    unsigned pick = (unsigned)((r >> 20) % 1000);
    if (!b->p) {
        allocate(t, b);
        return;
    }
    if (pick < 330) {
        check(t, b, "contents changed before free");
        note(t, OP_FREE, b->size, b->id);
        free(b->p);
        b->p = NULL;
    } else if (pick < 530) {
        resize(t, b, OP_REALLOC, random_size(t), 1);
    } else if (pick < 700) {
        /* A little up or down: growth and shrinking in place. */
        size_t delta = (size_t)(next(t) % 512);
        size_t size = (r >> 40) & 1 ? b->size + delta : (b->size > delta + 1 ? b->size - delta : 1);
        resize(t, b, OP_REALLOC_NEAR, size, 1);
    } else if (pick < 780) {
        size_t elem = (size_t)1 << (r >> 40) % 5;
        resize(t, b, OP_REALLOCARRAY, random_size(t) / elem + 1, elem);
    } else if (pick < 790) {
        /* glibc: the block is freed and null returned. */
        check(t, b, "contents changed before realloc to 0");
        void *q = realloc(b->p, 0);
        note(t, OP_REALLOC_ZERO, b->size, q == NULL);
        if (q) free(q);
        b->p = NULL;
    } else if (pick < 795) {
        /* Requests that overflow fail with ENOMEM and leave the block. */
        errno = 0;
        void *q = reallocarray(b->p, half_max, 3);
        int ok = q == NULL && errno == ENOMEM;
        errno = 0;
        q = calloc(quarter_max, 8);
        ok = ok && q == NULL && errno == ENOMEM;
        if (!ok) fail(t, "an overflowing request did not fail with ENOMEM", b);
        check(t, b, "contents changed by a failed reallocarray");
        note(t, OP_OVERFLOW, b->size, 0);
    } else if (pick < 900) {
        if (malloc_usable_size(b->p) < b->size) fail(t, "usable size below the request", b);
        note(t, OP_USABLE, b->size, 0);
    } else {
        /* The ends of the block only: cheap, and catches neighbours. */
        size_t n = b->size < 64 ? b->size : 64;
        if (!holds(b->p, n, seed_of(b))) fail(t, "block start overwritten", b);
        note(t, OP_PEEK, b->size, n);
    }
}

/* Hands slots [first, first + HANDOFF) to the next thread and takes the
 * previous thread's into them. */
static void hand_off(struct thread *t, size_t first) {
    for (size_t k = 0; k < HANDOFF; k++) {
        struct block *b = &t->slot[(first + k) % SLOTS];
        exchange[t->index][k] = *b;
        note(t, OP_HANDED, b->p ? b->id : 0, b->size);
        b->p = NULL;
    }
    pthread_barrier_wait(&barrier);
    int from = (t->index + THREADS - 1) % THREADS;
    for (size_t k = 0; k < HANDOFF; k++) {
        t->slot[(first + k) % SLOTS] = exchange[from][k];
        exchange[from][k].p = NULL;
    }
    pthread_barrier_wait(&barrier);
}

static void *run(void *arg) {
    struct thread *t = arg;
    long done = 0;
    while (done < ops_per_thread) {
        for (int i = 0; i < ROUND && done < ops_per_thread; i++, done++) operate(t);
        hand_off(t, (size_t)(next(t) % SLOTS));
    }
    for (size_t s = 0; s < SLOTS; s++) {
        struct block *b = &t->slot[s];
        if (!b->p) continue;
        check(t, b, "contents changed before the final free");
        free(b->p);
        b->p = NULL;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) ops_per_thread = atol(argv[1]);
    if (ops_per_thread <= 0) {
        fprintf(stderr, "usage: %s [ops-per-thread]\n", argv[0]);
        return 2;
    }
    /* Every thread runs the same number of rounds, so the barriers match. */
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        threads[i].index = i;
        threads[i].rng = mix(0x5CA7A110Cull + (uint64_t)i) | 1;
        threads[i].hash = (uint64_t)i;
        threads[i].next_id = 1;
        if (pthread_create(&threads[i].handle, NULL, run, &threads[i]) != 0) {
            printf("FAILED: pthread_create\n");
            return 1;
        }
    }
    uint64_t count[NOPS] = {0}, checksum = 0, checked = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i].handle, NULL);
        for (int k = 0; k < NOPS; k++) count[k] += threads[i].count[k];
        checksum = mix(checksum ^ threads[i].hash);
        checked += threads[i].checked_bytes;
    }
    for (int k = 0; k < NOPS; k++) printf("%s=%llu ", op_name[k], (unsigned long long)count[k]);
    printf("\nsummary threads=%d ops=%ld checked_bytes=%llu checksum=%016llx\n", THREADS,
           ops_per_thread * THREADS, (unsigned long long)checked, (unsigned long long)checksum);
    return 0;
}
