// Linnix process probes: fork/exec/exit counting done entirely in the kernel.
//
// Userspace only reads the maps on its own schedule (once per tick), so the cost of
// these probes is what the kernel reports as their run_time_ns: there is no perf
// buffer and no per-event wakeup to account for elsewhere.
//
// The programs are plain functions attached by name (kernel/_loader.py) rather than
// TRACEPOINT_PROBE: none reads the tracepoint record (on 6.18 the comm fields are
// __data_loc strings, and current is the task we want at fork/exec/exit), and named
// functions show up as linnix_fork/linnix_exec/linnix_exit/linnix_free in bpftool
// instead of programs all truncated to "tracepoint__sch".
//
// Four programs:
//   linnix_fork  tracepoint sched:sched_process_fork       forks
//   linnix_exec  tracepoint sched:sched_process_exec       execs
//   linnix_exit  tracepoint sched:sched_process_exit       exits, lifetime histogram
//   linnix_free  raw tracepoint sched_process_free         exited-task CPU
//
// What a run costs here is mostly cache misses: under a fork storm every cache line a
// probe touches is cold again by its next run (35-110 ns each on this project's VMs,
// next to ~70 ns for an empty program; bench/probe_cost.py measures each part). So the
// hot path touches as few lines as it can:
//  - every counter of a CPU lives in ONE array, a region of 64-byte lines per CPU
//    (`counters`, BPF_F_MMAPABLE: its values start page-aligned, so a line is a cache
//    line, and userspace reads it through mmap without a bpf() call);
//  - a command's counters sit in the same line as its name: a direct-mapped cache of
//    COMM_CACHE_SLOTS lines per CPU, indexed by a hash of the 16-byte comm. A fork,
//    exec or exit whose comm owns its line touches that line and nothing else (a claim
//    of a free line also counts itself in the totals line, once). Only a comm whose
//    line another comm owns falls back to the LRU per-CPU hash `comm_counts` (helper
//    call, jhash, bucket, element and value lines: 40-140 ns more here) and to the
//    CPU's fallback totals line;
//  - task fields are plain loads from bpf_get_current_task_btf() (a BTF pointer: the
//    verifier allows direct reads) instead of helper calls (bpf_get_current_comm,
//    bpf_get_current_pid_tgid, bpf_probe_read_kernel), at offsets from the running
//    kernel's BTF.
// Every event is counted exactly once: in a cache line, or in the fallback totals and
// the LRU hash. Node totals are the sum of both (userspace adds them up), so they stay
// exact when the LRU evicts a comm.
// Cache lines are reused by a second-chance rule (CLOCK, an approximation of least
// recently seen): every hit marks its line seen; a comm that finds its line held by
// another comm clears that mark and takes the fallback path, or, when the mark was
// already clear (the holder was not seen since the last such miss), takes the line
// over. A takeover moves the holder's counts into the fallback totals and into the
// holder's LRU hash entry, zeroes the line, bumps the line's generation and the CPU's
// claim count (kernel/probes.py then re-reads the line's key and counts it from zero;
// its last reading of the old holder is taken back, as the whole of it is in the hash
// now). So counts stay exact, and a comm that runs often keeps or regains a line.
//
// Compile-time parameters (-D cflags from the loader):
//   COMM_SLOTS              capacity of the LRU per-comm map (the fallback)
//   COMM_CACHE_SLOTS        comm cache lines per CPU (a power of two; 0: no cache)
//   NR_CPU_IDS              highest possible CPU id + 1 (regions in `counters`)
//   TASK_START_TIME_OFF     offsetof(struct task_struct, start_time), from BTF
//   TASK_SUM_EXEC_OFF       offsetof(struct task_struct, se.sum_exec_runtime), from BTF
//   TASK_COMM_OFF           offsetof(struct task_struct, comm), from BTF
//   TASK_PID_OFF            offsetof(struct task_struct, pid), from BTF
//   TASK_TGID_OFF           offsetof(struct task_struct, tgid), from BTF
// The offsets must come from the running kernel's BTF: the headers bcc compiles
// against may be another kernel's, whose task_struct layout is wrong here.

#ifndef COMM_SLOTS
#define COMM_SLOTS 1024
#endif
#ifndef COMM_CACHE_SLOTS
#define COMM_CACHE_SLOTS 256
#endif
#if COMM_CACHE_SLOTS & (COMM_CACHE_SLOTS - 1)
#error "COMM_CACHE_SLOTS must be a power of two (or 0)"
#endif
#if !defined(NR_CPU_IDS) || !defined(TASK_START_TIME_OFF) || !defined(TASK_SUM_EXEC_OFF) \
    || !defined(TASK_COMM_OFF) || !defined(TASK_PID_OFF) || !defined(TASK_TGID_OFF)
#error "NR_CPU_IDS and the TASK_*_OFF offsets (from the running kernel's BTF) must be set"
#endif

// Bench switches: bench/probe_cost.py compiles variants with a part left out
// (-DCOUNT_COMM=0 ...) to show what each costs. The loader never sets them.
#ifndef COUNT_COMM
#define COUNT_COMM 1  // 0: count totals only (every event in the fallback totals line)
#endif
#ifndef COUNT_LIFETIME
#define COUNT_LIFETIME 1
#endif
#ifndef EMPTY
#define EMPTY 0  // 1: every program returns at once (the floor: entry, stats clock, exit)
#endif

// The layout of one CPU's region, in 64-byte lines (kernel/probes.py mirrors it):
//   line 0                      fallback totals: forks, execs, exits, exited_cpu_ns,
//                               lifetime_sum_ns of events not counted in a cache line;
//                               then the number of cache lines claimed on this CPU,
//                               and of LRU hash updates started and finished
//   lines 1..8                  lifetime histogram: slot i (floor(log2(ns)) == i) is
//                               word i % 8 of line 1 + i / 8
//   lines 9..9+CACHE_SLOTS-1    comm cache: key0, key1 | MARK, forks, execs, exits,
//                               exited_cpu_ns, lifetime_sum_ns, then SEEN (bit 0) |
//                               generation << 1 (takeovers of this line)
#define LIFETIME_SLOTS 64
#define LINE_TOTALS 0
#define LINE_HIST 1
#define LINE_CACHE 9
#define LINES (LINE_CACHE + COMM_CACHE_SLOTS)
// Word indexes: a cache line's counters are at 2 + F, the fallback totals line's at F.
#define F_FORKS 0
#define F_EXECS 1
#define F_EXITS 2
#define F_CPU 3
#define F_LIFE 4
#define F_CLAIMS 5  // totals line only: cache lines claimed on this CPU
#define F_LRU_STARTED 6  // totals line only: LRU hash updates started on this CPU
#define F_LRU_DONE 7  // and finished
#define W_SEEN 7  // cache line word: bit 0 seen since the last miss, then the generation

struct line {
    u64 w[8];
};
BPF_F_TABLE("array", u32, struct line, counters, NR_CPU_IDS * LINES, BPF_F_MMAPABLE);

// Byte 15 of task->comm is always NUL (the kernel sets comm with strscpy_pad to 16
// bytes), so a claimed line stores its key's second word with bit 56 set: an unclaimed
// line (all zero) then never matches a comm, not even the empty one.
#define CLAIMED (1ULL << 56)

struct comm_key {
    u64 k[2];  // task->comm as read: NUL-padded (strscpy_pad)
};
struct comm_val {
    u64 forks;
    u64 execs;
    u64 exits;
    u64 exited_cpu_ns;
};
// LRU so that a comm that missed the cache always gets a slot (the least recently used
// comm is evicted instead of the update failing); per-CPU so it never contends. The
// counts are cumulative: an evicted comm loses what it gained since userspace last
// read it (the node totals do not: they are counted in the fallback totals line).
BPF_TABLE("lru_percpu_hash", struct comm_key, struct comm_val, comm_counts, COMM_SLOTS);

static __always_inline struct line *line_at(u32 region, u32 line)
{
    u32 i = region + line;
    return counters.lookup(&i);
}

// floor(log2(v)), 0 for v <= 1. Branch-free halving: bounded, verifier-friendly.
static __always_inline u32 log2_u64(u64 v)
{
    u32 r = 0, s;
    s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
    s = (v > 0xFFFF) << 4;        v >>= s; r |= s;
    s = (v > 0xFF) << 3;          v >>= s; r |= s;
    s = (v > 0xF) << 2;           v >>= s; r |= s;
    s = (v > 0x3) << 1;           v >>= s; r |= s;
    return r | (u32)(v >> 1);
}

// Adds `n` to field f of the comm's entry in the LRU hash, creating it when new.
static __always_inline void comm_hash_add(u64 k0, u64 k1, u32 f, u64 n)
{
    struct comm_key key = {.k = {k0, k1}};
    struct comm_val *cv = comm_counts.lookup(&key);
    if (!cv) {
        // Inserted with the first increment in it. BPF_NOEXIST: if this comm was
        // inserted since our lookup (by another CPU), its entry has a zero slot for
        // this CPU, which we look up and add to.
        struct comm_val init = {};
        ((u64 *)&init)[f & 3] = n;
        if (comm_counts.insert(&key, &init) == 0)
            return;
        cv = comm_counts.lookup(&key);
        if (!cv)
            return;
    }
    ((u64 *)cv)[f & 3] += n;
}

// Adds a whole line's counts (forks, execs, exits, exited_cpu_ns) to the comm's entry.
static __always_inline void comm_hash_move(u64 k0, u64 k1, struct line *c)
{
    struct comm_key key = {.k = {k0, k1}};
    struct comm_val add = {c->w[2 + F_FORKS], c->w[2 + F_EXECS], c->w[2 + F_EXITS],
                           c->w[2 + F_CPU]};
    struct comm_val *cv = comm_counts.lookup(&key);
    if (!cv) {
        if (comm_counts.insert(&key, &add) == 0)
            return;
        cv = comm_counts.lookup(&key);
        if (!cv)
            return;
    }
    cv->forks += add.forks;
    cv->execs += add.execs;
    cv->exits += add.exits;
    cv->exited_cpu_ns += add.exited_cpu_ns;
}

// Moves the line's holder out (see the header): its counts to the fallback totals and
// its hash entry; the line is left unclaimed, zeroed, one generation on. Only fork,
// exec and exit do this; linnix_free (a softirq that may interrupt them) finds no key
// from the first store on, and one that ran before has finished: the counts read here
// are final.
static __always_inline int take_over(u32 region, struct line *c)
{
    struct line *t = line_at(region, LINE_TOTALS);
    if (!t)
        return -1;
    u64 k0 = c->w[0], k1 = c->w[1] & ~CLAIMED;
    c->w[1] = 0;
    t->w[F_FORKS] += c->w[2 + F_FORKS];
    t->w[F_EXECS] += c->w[2 + F_EXECS];
    t->w[F_EXITS] += c->w[2 + F_EXITS];
    t->w[F_CPU] += c->w[2 + F_CPU];
    t->w[F_LIFE] += c->w[2 + F_LIFE];
    __sync_fetch_and_add(&t->w[F_LRU_STARTED], 1);
    comm_hash_move(k0, k1, c);
    __sync_fetch_and_add(&t->w[F_LRU_DONE], 1);
    c->w[2 + F_FORKS] = 0;
    c->w[2 + F_EXECS] = 0;
    c->w[2 + F_EXITS] = 0;
    c->w[2 + F_CPU] = 0;
    c->w[2 + F_LIFE] = 0;
    c->w[W_SEEN] = (c->w[W_SEEN] | 1) + 1;  // generation + 1, seen bit clear
    c->w[0] = 0;
    return 0;
}

// Adds `n` to field f (F_FORKS...) of the comm, and `life` to its lifetime sum.
// `claim`: may take an unclaimed cache line. linnix_free never claims: it can run in a
// softirq that interrupted a fork/exec/exit on this CPU between the two key stores of
// a claim; it only adds to lines whose full key it reads, and to a word no other
// program writes, so an interrupted claim or increment loses nothing.
static __always_inline void count_comm(u32 region, u64 k0, u64 k1, u32 f, u64 n, u64 life,
                                       int claim)
{
    if (COUNT_COMM && COMM_CACHE_SLOTS) {
        // A multiplicative hash of both words: comms often share their first 8 bytes.
        u64 h = (k0 ^ (k1 * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
        struct line *c = line_at(region, LINE_CACHE + ((u32)(h >> 40) & (COMM_CACHE_SLOTS - 1)));
        if (!c)
            return;  // never: region + line < NR_CPU_IDS * LINES
        if (c->w[1] != (k1 | CLAIMED) || c->w[0] != k0) {
            if (!claim)
                goto fallback;
            if (c->w[1] != 0) {  // another comm holds the line
                if (c->w[W_SEEN] & 1) {  // seen since the last miss: a second chance
                    c->w[W_SEEN] &= ~1ULL;
                    goto fallback;
                }
                if (take_over(region, c))
                    goto fallback;
            }
            c->w[0] = k0;
            c->w[1] = k1 | CLAIMED;
            // Last: a reader that sees the new claim count finds the whole key.
            struct line *t = line_at(region, LINE_TOTALS);
            if (t)
                t->w[F_CLAIMS]++;
        }
        c->w[2 + f] += n;
        if (life)
            c->w[2 + F_LIFE] += life;
        if (claim)  // linnix_free's runs (softirq) do not count as seen
            c->w[W_SEEN] |= 1;
        return;
    }
fallback:;
    struct line *t = line_at(region, LINE_TOTALS);
    if (!t)
        return;
    t->w[f] += n;
    if (life)
        t->w[F_LIFE] += life;
    if (!COUNT_COMM)
        return;
    // Started/done marks around the LRU update let the reader skip reading the LRU
    // hash while it cannot have changed (no update done since its last read, none in
    // flight). Atomic adds: unlike the other words of this line, every program writes
    // these, and linnix_free can interrupt another program on this CPU.
    __sync_fetch_and_add(&t->w[F_LRU_STARTED], 1);
    comm_hash_add(k0, k1, f, n);
    __sync_fetch_and_add(&t->w[F_LRU_DONE], 1);
}

static __always_inline u32 this_region(void)
{
    return bpf_get_smp_processor_id() * LINES;
}

#define COMM0(task) (*(u64 *)((task) + TASK_COMM_OFF))
#define COMM1(task) (*(u64 *)((task) + TASK_COMM_OFF + 8))

// sched_process_fork fires in the parent (current) for every new task, threads
// included, which is what /proc/stat "processes" counts too.
int linnix_fork(void *ctx)
{
    if (EMPTY)
        return 0;
    char *task = (char *)bpf_get_current_task_btf();
    count_comm(this_region(), COMM0(task), COMM1(task), F_FORKS, 1, 0, 1);
    return 0;
}

// At sched_process_exec current->comm is already the new program's name.
int linnix_exec(void *ctx)
{
    if (EMPTY)
        return 0;
    char *task = (char *)bpf_get_current_task_btf();
    count_comm(this_region(), COMM0(task), COMM1(task), F_EXECS, 1, 0, 1);
    return 0;
}

// sched_process_exit runs in the exiting task for every thread. The lifetime is counted
// once per thread group, when the leader exits. CPU time is NOT read here (see
// linnix_free): at this point the task's runtime is far from final.
int linnix_exit(void *ctx)
{
    if (EMPTY)
        return 0;
    char *task = (char *)bpf_get_current_task_btf();
    u32 region = this_region();
    u64 life = 0;
    if (COUNT_LIFETIME && *(u32 *)(task + TASK_PID_OFF) == *(u32 *)(task + TASK_TGID_OFF)) {
        u64 start = *(u64 *)(task + TASK_START_TIME_OFF);
        u64 now = bpf_ktime_get_ns();
        life = now > start ? now - start : 0;  // start_time is CLOCK_MONOTONIC too
        u32 slot = log2_u64(life) & (LIFETIME_SLOTS - 1);
        struct line *h = line_at(region, LINE_HIST + slot / 8);
        if (h)
            h->w[slot % 8]++;
    }
    count_comm(region, COMM0(task), COMM1(task), F_EXITS, 1, life, 1);
    return 0;
}

// Exited-task CPU is read when the task_struct is freed, not at sched_process_exit:
//  - at sched_process_exit se.sum_exec_runtime lacks the slice the task is running
//    (update_curr folds it in only at the next scheduler event), and
//  - everything do_exit() does after that tracepoint is missing: exit_mm() (tearing
//    down the address space; recent kernels, 6.18 included, fire sched_process_exit
//    before it), exit_files(), exit_notify()... For a short-lived process that is most
//    of its CPU: `true` shows ~17 us at exit out of the ~570 us wait4() reports.
// sched_process_free fires from delayed_put_task_struct(), the RCU callback queued when
// the last of the task's two rcu_users is dropped: one by release_task() (the parent's
// wait, or self-reaping for threads), one by finish_task_switch() after the task's
// final switch away, whose put_prev_task() has folded in its last slice. Nothing runs
// the task after that, so this is its whole runtime: what wait4() reports, or a few us
// more when the parent reaped the zombie before that final switch.
//
// It is a raw tracepoint (TP_PROTO(struct task_struct *p)): the regular tracepoint's
// record has no task pointer, and the freeing CPU's `current` is unrelated (often
// ksoftirqd or whoever ran the RCU callbacks), so the comm is read from the task too.
// The pointer is an untyped argument here, so the reads are bpf_probe_read_kernel.
// It fires an RCU grace period after the reap (milliseconds; up to ~10 s where RCU
// callbacks are lazy, i.e. rcu_nocbs CPUs with CONFIG_RCU_LAZY), so a reader right
// after wait4() may not see the CPU yet, and exits and their CPU can land in
// different ticks.
int linnix_free(struct bpf_raw_tracepoint_args *ctx)
{
    if (EMPTY)
        return 0;
    char *task = (char *)ctx->args[0];
    u64 cpu_ns = 0;
    bpf_probe_read_kernel(&cpu_ns, sizeof(cpu_ns), task + TASK_SUM_EXEC_OFF);
    struct comm_key key = {};
    bpf_probe_read_kernel(&key, sizeof(key), task + TASK_COMM_OFF);
    count_comm(this_region(), key.k[0], key.k[1], F_CPU, cpu_ns, 0, 0);
    return 0;
}
