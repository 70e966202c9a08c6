/* Producer/consumer: PAIRS producer threads allocate 64 B objects and pass
 * them through a ring each to a consumer thread, which reads and frees
 * them; every free is a remote one.
 *
 *   producer_consumer PAIRS OBJECTS REPEAT
 *
 * OBJECTS in all, split among the pairs. Each side publishes its ring
 * index in batches, so the hand-over costs about a store per object. */
#include <sched.h>
#include <stdatomic.h>

#include "common.h"

#define RING_CAP 4096
#define PUBLISH_EVERY 64
#define OBJECT 64

struct ring {
    _Alignas(128) _Atomic size_t head; /* written by the consumer */
    _Alignas(128) _Atomic size_t tail; /* written by the producer */
    _Alignas(128) _Atomic int done;
    size_t objects;
    _Atomic(void *) slots[RING_CAP];
};

static void backoff(unsigned *n) {
    if (*n < 64) {
        (*n)++;
        __builtin_ia32_pause();
    } else {
        sched_yield();
    }
}

static void *consume(void *arg) {
    struct ring *r = arg;
    size_t head = 0;
    uint64_t sum = 0;
    unsigned spins = 0;
    for (;;) {
        size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (tail == head) {
            if (atomic_load_explicit(&r->done, memory_order_acquire) &&
                atomic_load_explicit(&r->tail, memory_order_acquire) == head)
                break;
            backoff(&spins);
            continue;
        }
        spins = 0;
        for (size_t i = head; i < tail; i++) {
            volatile unsigned char *p = atomic_load_explicit(&r->slots[i % RING_CAP], memory_order_relaxed);
            sum += p[0];
            free((void *)p);
        }
        head = tail;
        atomic_store_explicit(&r->head, head, memory_order_release);
    }
    return (void *)(uintptr_t)sum;
}

static void *produce(void *arg) {
    struct ring *r = arg;
    size_t tail = 0, head = 0;
    for (size_t n = 0; n < r->objects; n++) {
        if (tail - head == RING_CAP) {
            atomic_store_explicit(&r->tail, tail, memory_order_release);
            unsigned spins = 0;
            for (;;) {
                head = atomic_load_explicit(&r->head, memory_order_acquire);
                if (tail - head < RING_CAP)
                    break;
                backoff(&spins);
            }
        }
        atomic_store_explicit(&r->slots[tail % RING_CAP], alloc_touch(OBJECT), memory_order_relaxed);
        tail++;
        if (tail % PUBLISH_EVERY == 0)
            atomic_store_explicit(&r->tail, tail, memory_order_release);
    }
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    count_thread_allocations();
    atomic_store_explicit(&r->done, 1, memory_order_release);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4)
        die("usage: producer_consumer PAIRS OBJECTS REPEAT");
    size_t pairs = arg(argc, argv, 1), objects = arg(argc, argv, 2), repeat = arg(argc, argv, 3);
    struct ring *rings = aligned_alloc(128, pairs * sizeof *rings);
    pthread_t *t = calloc(2 * pairs, sizeof *t);
    if (rings == NULL || t == NULL)
        die("out of memory");
    uint64_t sum = 0;
    for (size_t rep = 0; rep < repeat; rep++) {
        for (size_t i = 0; i < pairs; i++) {
            memset(&rings[i], 0, sizeof rings[i]);
            rings[i].objects = objects / pairs;
            start_thread(&t[2 * i], consume, &rings[i]);
            start_thread(&t[2 * i + 1], produce, &rings[i]);
        }
        for (size_t i = 0; i < 2 * pairs; i++) {
            void *ret;
            pthread_join(t[i], &ret);
            sum += (uintptr_t)ret;
        }
    }
    free(rings);
    free(t);
    report();
    return sum == 0 ? 1 : 0;
}
