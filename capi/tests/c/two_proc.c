/* The two processes of a memory cgroup that the cgroup_oom test runs.
 *
 *   two_proc a SECONDS: allocates 600 MiB of 256-byte objects (written),
 *     frees the first 90% of them in allocation order (whole spans free),
 *     prints "freed", idles SECONDS, checks the objects it kept and prints
 *     "A ok".
 *   two_proc b: allocates and writes 450 MiB in one block, checks it and
 *     prints "B ok". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "a") == 0) {
        size_t size = 256, n = ((size_t)600 << 20) / size, kept = n / 10 * 9;
        char **p = malloc(n * sizeof *p);
        if (p == NULL)
            return 2;
        for (size_t i = 0; i < n; i++) {
            p[i] = malloc(size);
            if (p[i] == NULL)
                return 2;
            memset(p[i], (int)(i & 0x7f) | 1, size);
        }
        for (size_t i = 0; i < kept; i++)
            free(p[i]);
        printf("freed\n");
        fflush(stdout);
        sleep(argc >= 3 ? (unsigned)atoi(argv[2]) : 3);
        for (size_t i = kept; i < n; i++)
            for (size_t j = 0; j < size; j++)
                if (p[i][j] != (char)((i & 0x7f) | 1))
                    return 3;
        printf("A ok\n");
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "b") == 0) {
        size_t total = (size_t)450 << 20;
        char *q = malloc(total);
        if (q == NULL)
            return 2;
        memset(q, 2, total);
        for (size_t i = 0; i < total; i += 4096)
            if (q[i] != 2)
                return 3;
        printf("B ok\n");
        return 0;
    }
    fprintf(stderr, "usage: two_proc a SECONDS | b\n");
    return 2;
}
