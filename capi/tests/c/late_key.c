/* A program that makes many pthread keys before its first allocation: the
 * allocator's own key (for flushing thread caches at thread exit) is then
 * past glibc's first 32, and pthread_setspecific gets the block that holds
 * it from calloc, that is, from the allocator attaching its cache. That
 * nested allocation must not attach again (before the fix it recursed
 * until the stack ran out). Threads then allocate, with contents checked. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    for (size_t round = 0; round < 1000; round++) {
        size_t size = 16 + (round * 37 + id) % 3000;
        unsigned char *p = malloc(size);
        if (!p) {
            return (void *)1;
        }
        memset(p, (int)(round & 0xff), size);
        for (size_t i = 0; i < size; i++) {
            if (p[i] != (unsigned char)(round & 0xff)) {
                return (void *)2;
            }
        }
        free(p);
    }
    return NULL;
}

int main(void) {
    pthread_key_t key;
    for (int i = 0; i < 64; i++) {
        if (pthread_key_create(&key, NULL) != 0) {
            fprintf(stderr, "pthread_key_create failed\n");
            return 2;
        }
    }
    char *first = malloc(32);
    if (!first) {
        return 3;
    }
    memset(first, 7, 32);
    pthread_t threads[4];
    for (size_t t = 0; t < 4; t++) {
        if (pthread_create(&threads[t], NULL, worker, (void *)t) != 0) {
            return 4;
        }
    }
    for (size_t t = 0; t < 4; t++) {
        void *r;
        pthread_join(threads[t], &r);
        if (r != NULL) {
            fprintf(stderr, "thread %zu failed: %p\n", t, r);
            return 5;
        }
    }
    free(first);
    puts("ok late-key");
    return 0;
}
