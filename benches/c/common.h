/* Shared by the C workloads of the comparison harness: the random numbers
 * (the Rust workloads' xorshift64), argument parsing, and a checked malloc.
 * Each program runs one workload `repeat` times and exits; the harness
 * times whole runs under each allocator (LD_PRELOAD). Objects are written
 * and read through volatile pointers so that no allocation is dead code. */
#ifndef SCAVALLOC_BENCH_COMMON_H
#define SCAVALLOC_BENCH_COMMON_H

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Uniform in 0..n for n < 2^32, by multiplication. */
static inline size_t rng_below(uint64_t *s, size_t n) {
    return (size_t)((((rng_next(s) >> 32) * (uint64_t)n)) >> 32);
}

static inline size_t rng_between(uint64_t *s, size_t lo, size_t hi) {
    return lo + rng_below(s, hi - lo + 1);
}

static inline void die(const char *what) {
    fprintf(stderr, "%s\n", what);
    exit(1);
}

/* The workload's allocations (`alloc_touch` calls), for the harness to
 * give lock figures per million allocations: each thread counts its own
 * (no atomic per allocation) and adds them to the total with
 * `count_thread_allocations` before it ends or signals that it is done. */
static __thread uint64_t thread_allocations;
static _Atomic uint64_t total_allocations;

static inline void count_thread_allocations(void) {
    atomic_fetch_add_explicit(&total_allocations, thread_allocations, memory_order_relaxed);
    thread_allocations = 0;
}

/* malloc that writes the first byte, as a program uses a new object. */
static inline void *alloc_touch(size_t size) {
    volatile char *p = malloc(size);
    if (p == NULL)
        die("out of memory");
    p[0] = 1;
    thread_allocations++;
    return (void *)p;
}

static inline size_t arg(int argc, char **argv, int i) {
    if (i >= argc)
        die("missing argument");
    char *end;
    unsigned long long v = strtoull(argv[i], &end, 10);
    if (*end != '\0' || v == 0)
        die("arguments are positive numbers");
    return (size_t)v;
}

static inline void start_thread(pthread_t *t, void *(*f)(void *), void *a) {
    if (pthread_create(t, NULL, f, a) != 0)
        die("pthread_create failed");
}

/* Prints the process's peak RSS (`VmHWM`, in KiB) for the harness, read
 * without allocating. The harness cannot take it from `wait4`: a child
 * started with vfork semantics keeps its parent's high-water mark in
 * `ru_maxrss` across exec. */
static inline void report_peak_rss(void) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        die("open /proc/self/status");
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        die("read /proc/self/status");
    buf[n] = '\0';
    char *line = strstr(buf, "VmHWM:");
    if (line == NULL)
        die("no VmHWM in /proc/self/status");
    printf("peak_rss_kib %llu\n", strtoull(line + 6, NULL, 10));
}

/* What the harness reads at exit: the allocations of every thread (each
 * has counted its own by now; the main thread's are added here) and the
 * peak RSS. */
static inline void report(void) {
    count_thread_allocations();
    printf("allocations %llu\n", (unsigned long long)atomic_load_explicit(&total_allocations, memory_order_relaxed));
    report_peak_rss();
}

#endif
