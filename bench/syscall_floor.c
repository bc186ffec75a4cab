// The floor of the syscall read path (bench/crowded_node.py, issue 20): what reading
// every program's bpf_prog_info costs in C, with no Python at all. Per program the
// same calls as kernel/bpf_syscall.ProgReader.records(): BPF_PROG_GET_FD_BY_ID,
// BPF_OBJ_GET_INFO_BY_FD, close (ids walked once with BPF_PROG_GET_NEXT_ID, outside
// the timed part, as the reader re-reads known ids). Thread CPU per round
// (CLOCK_THREAD_CPUTIME_ID), each round after IDLE seconds asleep (cold), then WARM
// rounds back to back.
//
// Usage: syscall_floor ROUNDS IDLE WARM
// Prints one line per round: "cold|warm <programs> <ns>".
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *attr) {
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static long long thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int ids[1 << 16];

static int walk(void) {
    union bpf_attr a;
    int n = 0;
    __u32 id = 0;
    for (;;) {
        memset(&a, 0, sizeof(a));
        a.start_id = id;
        if (bpf(BPF_PROG_GET_NEXT_ID, &a) < 0 || n == (int)(sizeof(ids) / sizeof(ids[0])))
            return n;
        id = a.next_id;
        ids[n++] = (int)id;
    }
}

static int read_all(int n, unsigned long long *sink) {
    union bpf_attr a;
    struct bpf_prog_info info;
    int got = 0;
    for (int i = 0; i < n; i++) {
        memset(&a, 0, sizeof(a));
        a.prog_id = (__u32)ids[i];
        int fd = (int)bpf(BPF_PROG_GET_FD_BY_ID, &a);
        if (fd < 0)
            continue;
        memset(&info, 0, sizeof(info));
        memset(&a, 0, sizeof(a));
        a.info.bpf_fd = (__u32)fd;
        a.info.info_len = sizeof(info);
        a.info.info = (__u64)(unsigned long)&info;
        if (bpf(BPF_OBJ_GET_INFO_BY_FD, &a) == 0) {
            *sink += info.run_cnt;
            got++;
        }
        close(fd);
    }
    return got;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s ROUNDS IDLE WARM\n", argv[0]);
        return 2;
    }
    int rounds = atoi(argv[1]), warm = atoi(argv[3]);
    double idle = atof(argv[2]);
    unsigned long long sink = 0;
    for (int r = 0; r < rounds + warm; r++) {
        int n = walk();
        if (r < rounds) {
            struct timespec s = {(time_t)idle, (long)((idle - (long)idle) * 1e9)};
            nanosleep(&s, NULL);
        }
        long long t0 = thread_ns();
        int got = read_all(n, &sink);
        long long t1 = thread_ns();
        printf("%s %d %lld\n", r < rounds ? "cold" : "warm", got, t1 - t0);
        fflush(stdout);
    }
    return sink == 42 ? 1 : 0;  // keeps the reads from being optimised away
}
