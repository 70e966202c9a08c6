/* Larson's server simulation with thread churn.
 *
 *   larson_churn THREADS LIVE STEPS GENERATIONS REPEAT
 *
 * THREADS lanes run side by side. A lane's thread takes over the objects
 * its predecessor left (LIVE/THREADS of 8-1000 B; the first allocates
 * them), replaces STEPS/(THREADS*GENERATIONS) random ones, then starts its
 * successor with them and exits: objects are freed by a thread other than
 * the one that allocated them, which no longer exists, and every new
 * thread starts with an empty cache. GENERATIONS threads in turn per lane. */
#include "common.h"

struct lane {
    uint64_t rng;
    void **objects;
    size_t live, steps, generations_left;
};

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static size_t lanes_done;

static void *lane_thread(void *arg) {
    struct lane *l = arg;
    if (l->objects == NULL) {
        l->objects = malloc(l->live * sizeof(void *));
        if (l->objects == NULL)
            die("out of memory");
        for (size_t i = 0; i < l->live; i++)
            l->objects[i] = alloc_touch(rng_between(&l->rng, 8, 1000));
    }
    for (size_t s = 0; s < l->steps; s++) {
        size_t i = rng_below(&l->rng, l->live);
        free(l->objects[i]);
        l->objects[i] = alloc_touch(rng_between(&l->rng, 8, 1000));
    }
    count_thread_allocations();
    if (--l->generations_left > 0) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, lane_thread, l) != 0)
            die("pthread_create failed");
        pthread_attr_destroy(&attr);
        return NULL;
    }
    for (size_t i = 0; i < l->live; i++)
        free(l->objects[i]);
    free(l->objects);
    l->objects = NULL;
    pthread_mutex_lock(&done_lock);
    lanes_done++;
    pthread_cond_signal(&done_cond);
    pthread_mutex_unlock(&done_lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6)
        die("usage: larson_churn THREADS LIVE STEPS GENERATIONS REPEAT");
    size_t threads = arg(argc, argv, 1), live = arg(argc, argv, 2), steps = arg(argc, argv, 3),
           generations = arg(argc, argv, 4), repeat = arg(argc, argv, 5);
    struct lane *lanes = calloc(threads, sizeof *lanes);
    if (lanes == NULL)
        die("out of memory");
    for (size_t rep = 0; rep < repeat; rep++) {
        lanes_done = 0;
        for (size_t i = 0; i < threads; i++) {
            lanes[i] = (struct lane){0x9e3779b97f4a7c15ull ^ (i + 1), NULL, live / threads,
                                     steps / (threads * generations), generations};
            pthread_t t;
            start_thread(&t, lane_thread, &lanes[i]);
            pthread_detach(t);
        }
        pthread_mutex_lock(&done_lock);
        while (lanes_done < threads)
            pthread_cond_wait(&done_cond, &done_lock);
        pthread_mutex_unlock(&done_lock);
    }
    free(lanes);
    report();
    return 0;
}
