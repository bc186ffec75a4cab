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
// Compile-time parameters (-D cflags from the loader):
//   COMM_SLOTS              capacity of the per-comm map
//   TASK_START_TIME_OFF     offsetof(struct task_struct, start_time), from BTF
//   TASK_SUM_EXEC_OFF       offsetof(struct task_struct, se.sum_exec_runtime), from BTF
//   TASK_COMM_OFF           offsetof(struct task_struct, comm), from BTF
// The offsets must come from the running kernel's BTF: the headers bcc compiles
// against may be another kernel's, whose task_struct layout is wrong here.

#ifndef COMM_SLOTS
#define COMM_SLOTS 1024
#endif
#ifndef TASK_START_TIME_OFF
#error "TASK_START_TIME_OFF must come from the running kernel's BTF"
#endif
#ifndef TASK_SUM_EXEC_OFF
#error "TASK_SUM_EXEC_OFF must come from the running kernel's BTF"
#endif
#ifndef TASK_COMM_OFF
#error "TASK_COMM_OFF must come from the running kernel's BTF"
#endif

#define LIFETIME_SLOTS 64

// Node-wide totals. Per-CPU, so increments are plain adds (no atomics, no shared
// cache line); userspace sums the CPUs.
struct totals {
    u64 forks;
    u64 execs;
    u64 exits;
    u64 exited_cpu_ns;    // final se.sum_exec_runtime of every freed task (linnix_free)
    u64 lifetime_sum_ns;  // sum over the lifetimes counted in lifetime_hist
};
BPF_PERCPU_ARRAY(totals, struct totals, 1);

// Slot i counts thread-group lifetimes with floor(log2(ns)) == i.
BPF_PERCPU_ARRAY(lifetime_hist, u64, LIFETIME_SLOTS);

struct comm_key {
    char comm[16];  // TASK_COMM_LEN; NUL-padded (a key's padding is part of the key)
};
struct comm_val {
    u64 forks;
    u64 execs;
    u64 exits;
    u64 exited_cpu_ns;
};
// LRU so that a new comm always gets a slot (the least recently used comm is evicted
// instead of the update failing); per-CPU so the hot path never contends. The counts
// are cumulative: an evicted comm only loses what it gained since userspace last read
// it, and an idle comm is the one that gets evicted.
BPF_TABLE("lru_percpu_hash", struct comm_key, struct comm_val, comm_counts, COMM_SLOTS);

// The comm's counters on this CPU, creating the entry when the comm is new. `init` is
// inserted as is, so the caller passes its first increment in it and skips the update.
// Returns NULL when `init` was inserted (nothing left to add).
static __always_inline struct comm_val *comm_slot(struct comm_key *key, struct comm_val *init)
{
    struct comm_val *v = comm_counts.lookup(key);
    if (v)
        return v;
    // BPF_NOEXIST: if another CPU inserted the comm since our lookup, its entry has a
    // zero slot for this CPU, which we then look up and add to.
    if (comm_counts.insert(key, init) == 0)
        return NULL;
    return comm_counts.lookup(key);
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

// sched_process_fork fires in the parent (current) for every new task, threads
// included, which is what /proc/stat "processes" counts too.
int linnix_fork(void *ctx)
{
    u32 zero = 0;
    struct totals *t = totals.lookup(&zero);
    if (t)
        t->forks++;

    struct comm_key key;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    struct comm_val init = {.forks = 1};
    struct comm_val *v = comm_slot(&key, &init);
    if (v)
        v->forks++;
    return 0;
}

// At sched_process_exec current->comm is already the new program's name.
int linnix_exec(void *ctx)
{
    u32 zero = 0;
    struct totals *t = totals.lookup(&zero);
    if (t)
        t->execs++;

    struct comm_key key;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    struct comm_val init = {.execs = 1};
    struct comm_val *v = comm_slot(&key, &init);
    if (v)
        v->execs++;
    return 0;
}

// sched_process_exit runs in the exiting task for every thread. The lifetime is counted
// once per thread group, when the leader exits. CPU time is NOT read here (see
// linnix_free): at this point the task's runtime is far from final.
int linnix_exit(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 life = 0;
    int leader = (u32)id == (u32)(id >> 32);
    if (leader) {
        u64 task = bpf_get_current_task();
        u64 start = 0;
        bpf_probe_read_kernel(&start, sizeof(start), (void *)(task + TASK_START_TIME_OFF));
        u64 now = bpf_ktime_get_ns();
        life = now > start ? now - start : 0;  // start_time is CLOCK_MONOTONIC too
        u32 slot = log2_u64(life) & (LIFETIME_SLOTS - 1);
        u64 *n = lifetime_hist.lookup(&slot);
        if (n)
            (*n)++;
    }

    u32 zero = 0;
    struct totals *t = totals.lookup(&zero);
    if (t) {
        t->exits++;
        if (leader)
            t->lifetime_sum_ns += life;
    }

    struct comm_key key;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    struct comm_val init = {.exits = 1};
    struct comm_val *v = comm_slot(&key, &init);
    if (v)
        v->exits++;
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
// It fires an RCU grace period after the reap (milliseconds; up to ~10 s where RCU
// callbacks are lazy, i.e. rcu_nocbs CPUs with CONFIG_RCU_LAZY), so a reader right
// after wait4() may not see the CPU yet, and exits and their CPU can land in
// different ticks.
int linnix_free(struct bpf_raw_tracepoint_args *ctx)
{
    void *task = (void *)ctx->args[0];
    u64 cpu_ns = 0;
    bpf_probe_read_kernel(&cpu_ns, sizeof(cpu_ns), task + TASK_SUM_EXEC_OFF);

    u32 zero = 0;
    struct totals *t = totals.lookup(&zero);
    if (t)
        t->exited_cpu_ns += cpu_ns;

    // Zeroed, then a string read: the key is NUL-padded whatever lies after the
    // terminator in task->comm (bpf_probe_read_kernel_str does not pad).
    struct comm_key key = {};
    bpf_probe_read_kernel_str(&key.comm, sizeof(key.comm), task + TASK_COMM_OFF);
    struct comm_val init = {.exited_cpu_ns = cpu_ns};
    struct comm_val *v = comm_slot(&key, &init);
    if (v)
        v->exited_cpu_ns += cpu_ns;
    return 0;
}
