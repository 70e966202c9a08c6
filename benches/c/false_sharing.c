/* False sharing, passive and active (as the classic cache-scratch and
 * cache-thrash benchmarks).
 *
 *   false_sharing passive|active THREADS OBJECT_SIZE ROUNDS REPETITIONS REPEAT
 *
 * Passive: the main thread allocates one object per worker, side by side,
 * and hands one to each; each worker frees it, then runs ROUNDS/THREADS
 * rounds of malloc, REPETITIONS writes of every byte, free. An allocator
 * that hands a freed object back to the thread that freed it gives
 * neighbouring workers one cache line. Active: no hand-over, each worker
 * its own loop from the start. Prints how many workers' first objects
 * share a cache line with another worker's: the scheduler decides how
 * often two of them run at once (on a loaded machine, seldom), but not
 * whether their objects can collide. */
#include "common.h"

struct worker {
    pthread_barrier_t *start;
    void *handed;
    size_t size, rounds, repetitions;
    uint64_t sum;
    uintptr_t first; /* the address of the worker's first own object */
};

static void *work(void *arg) {
    struct worker *w = arg;
    if (w->handed != NULL)
        free(w->handed);
    pthread_barrier_wait(w->start);
    uint64_t sum = 0;
    for (size_t r = 0; r < w->rounds; r++) {
        volatile unsigned char *p = alloc_touch(w->size);
        if (r == 0) {
            /* Every worker's first object is live at once when the
             * addresses are compared (a freed one may be reused). */
            w->first = (uintptr_t)p;
            pthread_barrier_wait(w->start);
        }
        for (size_t j = 0; j < w->repetitions; j++) {
            for (size_t k = 0; k < w->size; k++) {
                p[k] = (unsigned char)k;
                sum += p[k];
            }
        }
        free((void *)p);
    }
    w->sum = sum;
    count_thread_allocations();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7)
        die("usage: false_sharing passive|active THREADS OBJECT_SIZE ROUNDS REPETITIONS REPEAT");
    int passive = strcmp(argv[1], "passive") == 0;
    if (!passive && strcmp(argv[1], "active") != 0)
        die("mode is passive or active");
    size_t threads = arg(argc, argv, 2), size = arg(argc, argv, 3), rounds = arg(argc, argv, 4),
           repetitions = arg(argc, argv, 5), repeat = arg(argc, argv, 6);
    struct worker *w = calloc(threads, sizeof *w);
    pthread_t *t = calloc(threads, sizeof *t);
    if (w == NULL || t == NULL)
        die("out of memory");
    uint64_t sum = 0;
    for (size_t rep = 0; rep < repeat; rep++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)threads);
        for (size_t i = 0; i < threads; i++) {
            w[i] = (struct worker){&start, passive ? alloc_touch(size) : NULL, size, rounds / threads, repetitions, 0, 0};
        }
        for (size_t i = 0; i < threads; i++)
            start_thread(&t[i], work, &w[i]);
        for (size_t i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            sum += w[i].sum;
        }
        pthread_barrier_destroy(&start);
        /* Whether false sharing can happen at all, whatever the scheduler
         * did: the workers whose first object shares a 64-byte cache line
         * with another worker's. */
        if (rep == 0) {
            size_t sharing = 0;
            for (size_t i = 0; i < threads; i++) {
                for (size_t j = 0; j < threads; j++) {
                    if (j != i && w[i].first / 64 == w[j].first / 64) {
                        sharing++;
                        break;
                    }
                }
            }
            printf("workers_sharing_a_line %zu\n", sharing);
        }
    }
    free(w);
    free(t);
    report();
    return sum == 0 ? 1 : 0;
}
