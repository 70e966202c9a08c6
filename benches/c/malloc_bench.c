/* glibc's malloc micro-benchmark style runs.
 *
 *   malloc_bench thread THREADS OPS WORKING_SET REPEAT
 *   malloc_bench simple BLOCKS ROUNDS REPEAT
 *
 * thread: each thread keeps WORKING_SET slots (a power of two) and
 * replaces a random one per step by an object of a random size from a
 * fixed table (OPS steps in all, split among the threads). simple: one
 * thread; for each of six sizes, BLOCKS blocks allocated and freed in
 * order, in reverse, interleaved; ROUNDS times. */
#include "common.h"

/* The same table as `MT_SIZES` in the Rust harness (threads.rs). */
static const size_t mt_sizes[32] = {8,   8,   16,  16,  16,  24,  24,  32,   32,   32,   40,   48,   48,   64,   64,    80,
                                    96,  112, 128, 128, 160, 192, 256, 320,  384,  512,  768,  1024, 2048, 4096, 8192, 32768};
static const size_t ms_sizes[6] = {16, 32, 64, 128, 256, 512};

struct thread_args {
    uint64_t seed;
    size_t ops, ws;
};

static void *thread_run(void *arg) {
    struct thread_args *a = arg;
    uint64_t rng = a->seed;
    void **slots = calloc(a->ws, sizeof(void *));
    if (slots == NULL)
        die("out of memory");
    for (size_t n = 0; n < a->ops; n++) {
        uint64_t r = rng_next(&rng);
        size_t i = (size_t)r & (a->ws - 1);
        size_t size = mt_sizes[(r >> 32) % 32];
        free(slots[i]);
        slots[i] = alloc_touch(size);
    }
    for (size_t i = 0; i < a->ws; i++)
        free(slots[i]);
    free(slots);
    count_thread_allocations();
    return NULL;
}

static void simple_run(void **blocks, size_t n, size_t rounds) {
    for (size_t r = 0; r < rounds; r++) {
        for (size_t s = 0; s < 6; s++) {
            for (int order = 0; order < 3; order++) {
                for (size_t k = 0; k < n; k++)
                    blocks[k] = alloc_touch(ms_sizes[s]);
                for (size_t k = 0; k < n; k++) {
                    size_t i = order == 0 ? k : order == 1 ? n - 1 - k : (k * 2) % n + (k * 2) / n;
                    free(blocks[i]);
                }
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "simple") == 0) {
        if (argc != 5)
            die("usage: malloc_bench simple BLOCKS ROUNDS REPEAT");
        size_t blocks = arg(argc, argv, 2), rounds = arg(argc, argv, 3), repeat = arg(argc, argv, 4);
        if (blocks % 2 != 0)
            die("BLOCKS is even (the interleaved order visits the evens, then the odds)");
        void **b = malloc(blocks * sizeof(void *));
        if (b == NULL)
            die("out of memory");
        for (size_t rep = 0; rep < repeat; rep++)
            simple_run(b, blocks, rounds);
        free(b);
        report();
        return 0;
    }
    if (argc != 6 || strcmp(argv[1], "thread") != 0)
        die("usage: malloc_bench thread THREADS OPS WORKING_SET REPEAT | simple BLOCKS ROUNDS REPEAT");
    size_t threads = arg(argc, argv, 2), ops = arg(argc, argv, 3), ws = arg(argc, argv, 4),
           repeat = arg(argc, argv, 5);
    if ((ws & (ws - 1)) != 0)
        die("WORKING_SET is a power of two");
    struct thread_args *a = calloc(threads, sizeof *a);
    pthread_t *t = calloc(threads, sizeof *t);
    if (a == NULL || t == NULL)
        die("out of memory");
    for (size_t rep = 0; rep < repeat; rep++) {
        for (size_t i = 0; i < threads; i++) {
            a[i] = (struct thread_args){0x2545f4914f6cdd1dull ^ (i + 1), ops / threads, ws};
            start_thread(&t[i], thread_run, &a[i]);
        }
        for (size_t i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
    }
    free(a);
    free(t);
    report();
    return 0;
}
