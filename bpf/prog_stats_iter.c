// Linnix BPF program stats iterator (iter/bpf_prog, kernel 5.9+).
//
// Reading an iterator fd made from this program's link runs linnix_prog_iter once per
// loaded program; each run appends ONE fixed-size record (struct rec, 64 bytes) to the
// read() buffer with bpf_seq_write. Userspace (kernel/prog_iter.py) thus gets every
// program's bpf_prog_info stats from a few read() calls instead of 3-4 bpf() syscalls
// per program.
//
// The record carries exactly what BPF_OBJ_GET_INFO_BY_FD reports (kernel/bpf/syscall.c,
// bpf_prog_get_info_by_fd and bpf_prog_get_stats):
//   type      prog->type
//   id        prog->aux->id
//   tag       prog->tag[8]
//   load_time prog->aux->load_time (boot-time ns, reported as-is)
//   name      prog->aux->name[16]
//   run_time_ns, run_cnt, recursion_misses: prog->stats->{nsecs,cnt,misses} summed over
//             the possible CPUs.
//
// Compile-time parameters (-D cflags from kernel/prog_iter.py), all from the running
// kernel's BTF: bcc compiles against another kernel's headers (Debian's 6.1 on a 6.18
// kernel), whose struct layouts are wrong here, so no kernel struct is named below;
// fields are read at BTF offsets from the bpf_prog pointer the iterator hands us.
//   PROG_TYPE_OFF, PROG_TAG_OFF, PROG_STATS_OFF, PROG_AUX_OFF   struct bpf_prog
//   AUX_ID_OFF, AUX_LOAD_TIME_OFF, AUX_NAME_OFF                 struct bpf_prog_aux
//   STATS_CNT_OFF, STATS_NSECS_OFF, STATS_MISSES_OFF            struct bpf_prog_stats
//   ARRAY_PPTRS_OFF                                             struct bpf_array
//   NCPUS        number of possible CPUs (cpu ids 0..NCPUS-1 must all be possible)
//   PCPU_MAP_FD  fd of a 1-element BPF_MAP_TYPE_PERCPU_ARRAY created by the loader
//
// Per-CPU stats. prog->stats is a __percpu pointer; per_cpu_ptr(p, cpu) is
// p + __per_cpu_offset[cpu]. bpf_per_cpu_ptr() would do that, but the verifier only
// accepts it on pointers it knows are per-CPU (a __percpu BTF type tag, which a
// GCC-built kernel's BTF does not carry: prog->stats is a plain pointer to the
// verifier here), or on per-CPU ksyms (which need CONFIG_KALLSYMS_ALL).
// __per_cpu_offset itself is not in kallsyms either. So the per-CPU offsets are
// measured: bpf_map_lookup_percpu_elem(map, 0, cpu) (5.19+) returns
// per_cpu_ptr(pptr, cpu) for the percpu array's element, whose __percpu pointer pptr
// is struct bpf_array.pptrs[0]; the difference is __per_cpu_offset[cpu], the same for
// every per-CPU allocation. They never change after boot: they are measured on the
// first record and cached in `offsets`.
// Pointers become integers through bpf_probe_read_kernel from the stack (a privileged
// loader may pass pointers as plain arguments to helpers; arithmetic on a map
// pointer is refused even then).
// u64_stats_sync is empty on 64-bit kernels (no seqcount to retry on): each counter
// is one 8-byte load, as in bpf_prog_get_stats.

#ifndef PCPU_MAP_FD
#error "PCPU_MAP_FD must be the fd of a 1-element percpu array map"
#endif
#ifndef NCPUS
#error "NCPUS must be the number of possible CPUs"
#endif
#if !defined(PROG_TYPE_OFF) || !defined(PROG_TAG_OFF) || !defined(PROG_STATS_OFF) || \
    !defined(PROG_AUX_OFF)
#error "struct bpf_prog offsets must come from the running kernel's BTF"
#endif
#if !defined(AUX_ID_OFF) || !defined(AUX_LOAD_TIME_OFF) || !defined(AUX_NAME_OFF)
#error "struct bpf_prog_aux offsets must come from the running kernel's BTF"
#endif
#if !defined(STATS_CNT_OFF) || !defined(STATS_NSECS_OFF) || !defined(STATS_MISSES_OFF)
#error "struct bpf_prog_stats offsets must come from the running kernel's BTF"
#endif
#ifndef ARRAY_PPTRS_OFF
#error "ARRAY_PPTRS_OFF must come from the running kernel's BTF"
#endif

#include "iter_common.h"

// The iterator context (include/linux/bpf.h struct bpf_iter_meta and
// kernel/bpf/prog_iter.c struct bpf_iter__bpf_prog); the verifier checks accesses
// against the kernel's own BTF of these, and their layout is ABI for iterators.
struct bpf_iter__bpf_prog {
    struct linnix_iter_meta *meta;
    void *prog;
};

// One record; kernel/prog_iter.py reads it as struct "<II8sQ16sQQQ" (RawProg order).
struct rec {
    u32 type;
    u32 id;
    u64 tag;  // u8[8], copied as one load
    u64 load_time;
    u64 name[2];  // char[16]
    u64 run_time_ns;
    u64 run_cnt;
    u64 recursion_misses;
};

struct percpu_offsets {
    u64 ready;
    u64 off[NCPUS];
};
BPF_ARRAY(offsets, struct percpu_offsets, 1);

#define PCPU_MAP ((void *)bpf_pseudo_fd(1, PCPU_MAP_FD))

// A pointer's value as an integer (see the header).
static __always_inline u64 addr_of(void *p) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), &p);
    return v;
}

static __always_inline int measure_offsets(struct percpu_offsets *o) {
    u64 map = addr_of(PCPU_MAP);
    u64 pptr = 0;
    u32 zero = 0;
    if (bpf_probe_read_kernel(&pptr, sizeof(pptr), (void *)(map + ARRAY_PPTRS_OFF)) || !pptr)
        return -1;
    for (u32 cpu = 0; cpu < NCPUS; cpu++) {
        void *v = bpf_map_lookup_percpu_elem(PCPU_MAP, &zero, cpu);
        if (!v)
            return -1;
        o->off[cpu] = addr_of(v) - pptr;
    }
    o->ready = 1;
    return 0;
}

BPF_ITER(bpf_prog) {
    struct linnix_iter_meta *meta = ctx->meta;
    void *prog = ctx->prog;
    if (!prog)
        return 0;  // the end-of-iteration call

    int zero = 0;
    struct percpu_offsets *o = offsets.lookup(&zero);
    if (!o)
        return 0;
    if (!o->ready && measure_offsets(o))
        return 1;  // cannot sum the stats: read() fails with EAGAIN

    struct rec r = {};
    void *aux = AT(prog, PROG_AUX_OFF, void *);
    r.type = AT(prog, PROG_TYPE_OFF, u32);
    r.tag = AT(prog, PROG_TAG_OFF, u64);
    r.id = AT(aux, AUX_ID_OFF, u32);
    r.load_time = AT(aux, AUX_LOAD_TIME_OFF, u64);
    r.name[0] = AT(aux, AUX_NAME_OFF, u64);
    r.name[1] = AT(aux, AUX_NAME_OFF + 8, u64);

    u64 stats = addr_of(AT(prog, PROG_STATS_OFF, void *));
    if (stats) {
        for (u32 cpu = 0; cpu < NCPUS; cpu++) {
            u64 st[3] = {};
            bpf_probe_read_kernel(st, sizeof(st), (void *)(stats + o->off[cpu]));
            r.run_cnt += st[STATS_CNT_OFF / 8];
            r.run_time_ns += st[STATS_NSECS_OFF / 8];
            r.recursion_misses += st[STATS_MISSES_OFF / 8];
        }
    }
    bpf_seq_write(meta->seq, &r, sizeof(r));
    return 0;
}
