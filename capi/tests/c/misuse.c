/* Misuse that scavalloc's free catches at the free, under LD_PRELOAD.
 *
 *   misuse CASE
 *
 * Each fault case prints "FREEING <address>" (flushed) and then commits the
 * fault; if the process is still alive afterwards it prints "SURVIVED" and
 * exits 0. The "correct" case does everything right and prints
 * "correct done". */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The allocation calls go through volatile pointers, so the compiler
 * cannot see which functions they are: it may otherwise drop a malloc whose
 * block is only freed, or a second free, and the fault would never reach
 * the allocator. (The program is built with the shared flags, no
 * -fno-builtin.) */
static void *(*volatile malloc_fn)(size_t) = malloc;
static void *(*volatile realloc_fn)(void *, size_t) = realloc;
static void (*volatile free_fn)(void *) = free;
#define malloc(n) malloc_fn(n)
#define realloc(p, n) realloc_fn(p, n)
#define free(p) free_fn(p)

static void announce(void *p) {
    printf("FREEING %#lx\n", (unsigned long)(uintptr_t)p);
    fflush(stdout);
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

static void free_on_a_thread(void *p) {
    pthread_t t;
    if (pthread_create(&t, NULL, free_it, p) != 0 || pthread_join(t, NULL) != 0) {
        printf("no thread\n");
        exit(3);
    }
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int freed;

/* Frees `p`, says so, and never returns (the process ends first). */
static void *free_and_stay(void *p) {
    free(p);
    pthread_mutex_lock(&lock);
    freed = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    for (;;) pause();
    return NULL;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed * 31 + i * 7);
}

static int check(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31 + i * 7)) return 0;
    return 1;
}

static void fail(const char *what) {
    printf("FAILED: %s\n", what);
    exit(4);
}

/* A correct program: every way of allocating, realloc across classes and
 * to and from large sizes, frees on other threads, contents checked. */
static void *correct_thread(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    enum { N = 512 };
    unsigned char *p[N] = {0};
    size_t len[N] = {0};
    unsigned x = seed * 2654435761u + 1;
    for (int round = 0; round < 200000; round++) {
        x = x * 1103515245u + 12345u;
        unsigned i = (x >> 8) % N;
        if (p[i]) {
            if (!check(p[i], len[i], i + seed)) fail("contents");
            if ((x >> 20) % 4 == 0) {
                size_t n = (x >> 4) % 9 == 0 ? 40000 + (x % 100000) : 1 + (x >> 12) % 3000;
                unsigned char *q = realloc(p[i], n);
                if (!q) fail("realloc");
                size_t keep = n < len[i] ? n : len[i];
                if (!check(q, keep, i + seed)) fail("realloc contents");
                p[i] = q;
                len[i] = n;
                fill(q, n, i + seed);
            } else {
                free(p[i]);
                p[i] = NULL;
            }
        } else {
            size_t n = (x >> 4) % 13 == 0 ? 33000 + (x % 200000) : 1 + (x >> 12) % 1024;
            void *q = NULL;
            switch ((x >> 16) % 4) {
            case 0: q = malloc(n); break;
            case 1: q = calloc(1, n); if (q && n && ((unsigned char *)q)[n - 1]) fail("calloc"); break;
            case 2: if (posix_memalign(&q, 64, n)) q = NULL; break;
            default: q = aligned_alloc(4096, n); break;
            }
            if (!q) fail("alloc");
            if (malloc_usable_size(q) < n) fail("usable size");
            p[i] = q;
            len[i] = n;
            fill(q, n, i + seed);
        }
    }
    for (int i = 0; i < N; i++) {
        if (p[i] && !check(p[i], len[i], i + seed)) fail("final contents");
        /* Every other block is freed by another thread. */
        if (p[i] && i % 2) free_on_a_thread(p[i]);
        else free(p[i]);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* stdout's buffer is allocated now, not between a case's frees. Each
     * case announces its address before its first free, so that nothing
     * is allocated between the frees (a large object's pages could
     * otherwise be reused for the buffer in between). */
    printf("case %s\n", what);
    if (strcmp(what, "correct") == 0) {
        pthread_t t[3];
        for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, correct_thread, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
        /* A large block shrunk to a small one, then freed. */
        char *big = malloc(100000);
        if (!big) fail("malloc");
        memset(big, 5, 100000);
        char *small = realloc(big, 100);
        if (!small || small[99] != 5) fail("realloc down");
        free(small);
        printf("correct done\n");
        return 0;
    } else if (strcmp(what, "double-small") == 0) {
        char *a = malloc(32), *b = malloc(32);
        announce(a);
        free(a);
        free(b);
        free(a);
    } else if (strcmp(what, "double-threads") == 0) {
        /* A size glibc's thread start-up does not allocate. The second
         * free runs on a thread that stays alive (its cache is never
         * flushed), so only a check at the free itself can see it. */
        char *a = malloc(3000);
        announce(a);
        free_on_a_thread(a);
        pthread_t t;
        pthread_mutex_lock(&lock);
        if (pthread_create(&t, NULL, free_and_stay, a) != 0) fail("thread");
        while (!freed) pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
    } else if (strcmp(what, "double-reused") == 0) {
        /* The first free's object is handed out again; a stale free of the
         * old pointer then frees the new owner's block (not detectable as
         * such), and the real owner's later free is the second one: caught,
         * even with another free in between. */
        char *a = malloc(64);
        free(a);
        char *b = malloc(64), *c = malloc(64);
        if (b != a) fail("not reused");
        announce(b);
        free(a);
        free(c);
        free(b);
    } else if (strcmp(what, "interior-8") == 0) {
        char *a = malloc(48);
        announce(a + 8);
        free(a + 8);
    } else if (strcmp(what, "interior-half") == 0) {
        char *a = malloc(1000);
        size_t size = malloc_usable_size(a);
        announce(a + size / 2);
        free(a + size / 2);
    } else if (strcmp(what, "interior-large") == 0) {
        char *a = malloc(200000);
        announce(a + 16);
        free(a + 16);
    } else if (strcmp(what, "double-large") == 0) {
        char *a = malloc(100000);
        announce(a);
        free(a);
        free(a);
    } else if (strcmp(what, "double-large-cached") == 0) {
        /* 5 to 8 pages: kept in the thread's cache of large objects. */
        char *a = malloc(50000);
        announce(a);
        free(a);
        free(a);
    } else if (strcmp(what, "realloc-freed") == 0) {
        char *a = malloc(40), *b = malloc(40);
        announce(a);
        free(a);
        free(b);
        a = realloc(a, 44);
    } else {
        printf("usage: misuse CASE\n");
        return 2;
    }
    printf("SURVIVED\n");
    return 0;
}
