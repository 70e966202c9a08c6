/* The scavenger thread must be started where starting a thread cannot
 * recurse into an allocation in progress (no allocator lock held, every
 * thread cache consistent). glibc's pthread_create allocates (the new
 * thread's DTV comes from calloc), and under LD_PRELOAD that allocation is
 * scavalloc's. This program stands in for that with a wrapper around
 * pthread_create (exported with -rdynamic, so libscavalloc.so's call binds
 * to it) that allocates and frees many objects of every small size before
 * creating the thread. Started under a class lock, the wrapper's
 * allocations of that class deadlock on it; started while a thread-cache
 * bin is half updated, they take objects the bin no longer owns.
 *
 * The program allocates a burst of small objects and frees them (which
 * starts the scavenger from inside a free), three times, checking every
 * object's contents (its own index, so that an object handed to two
 * owners shows). It prints how many threads the wrapper created: at least
 * one, or the case did not happen.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static create_fn real_create;
static long created;

enum { PER_SIZE = 600 };
static void *held[PER_SIZE];

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
    for (size_t size = 16; size <= 32768; size *= 2) {
        for (int i = 0; i < PER_SIZE; i++) {
            held[i] = malloc(size);
            if (!held[i]) {
                fprintf(stderr, "malloc(%zu) failed inside pthread_create\n", size);
                abort();
            }
            memset(held[i], 0x5a, size < 64 ? size : 64);
        }
        for (int i = 0; i < PER_SIZE; i++) {
            free(held[i]);
        }
    }
    __atomic_add_fetch(&created, 1, __ATOMIC_RELAXED);
    return real_create(thread, attr, start, arg);
}

/* Static, so that no large block is freed before the small ones are: the
 * first start must come from inside a free of small objects. */
enum { OBJECTS = (96 << 20) / 64 };
static unsigned char *objects[OBJECTS];

int main(void) {
    real_create = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
    if (!real_create) {
        fprintf(stderr, "no pthread_create: %s\n", dlerror());
        return 2;
    }
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < OBJECTS; i++) {
            unsigned char *p = malloc(64);
            if (!p) {
                fprintf(stderr, "malloc(64) failed\n");
                return 4;
            }
            /* The object's own index, then a pattern: an object handed to
             * two owners is overwritten by the second. */
            memcpy(p, &i, sizeof i);
            memset(p + sizeof i, (int)((i + round) & 0xff), 64 - sizeof i);
            objects[i] = p;
        }
        for (size_t i = 0; i < OBJECTS; i++) {
            size_t id;
            memcpy(&id, objects[i], sizeof id);
            if (id != i) {
                fprintf(stderr, "round %d: object %zu at %p was handed out again as object %zu\n", round, i,
                        (void *)objects[i], id);
                return 5;
            }
            for (size_t b = sizeof i; b < 64; b++) {
                if (objects[i][b] != (unsigned char)((i + round) & 0xff)) {
                    fprintf(stderr, "round %d: object %zu byte %zu is %#x\n", round, i, b, objects[i][b]);
                    return 6;
                }
            }
        }
        for (size_t i = 0; i < OBJECTS; i++) {
            free(objects[i]);
        }
    }
    printf("threads created through the hook: %ld\n", __atomic_load_n(&created, __ATOMIC_RELAXED));
    return 0;
}
