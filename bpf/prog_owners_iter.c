// Linnix BPF program owners iterator (iter/task_file, kernel 5.8+).
//
// Reading an iterator fd made from this program's link runs linnix_owner_iter once per
// open file of every process on the host (threads that share their leader's file
// table are skipped by the kernel). For each file that is a BPF program fd or a BPF
// link fd, it appends ONE record (struct rec, 24 bytes): the holder's tgid, the id of
// the program behind the fd, and the holder's command name. Every other file is
// dropped in the kernel, so a host with 200,000 fds costs one read() that returns a
// few hundred bytes instead of 200,000 readlink() calls from userspace
// (kernel/progstats.py scan_owners, the fallback). Link-only holders count, as in
// scan_owners (bpftool's pid iterator looks at program fds only).
//
// A file is a program or link fd when it is an anonymous inode named "bpf-prog" or
// "bpf_link" (kernel/bpf/syscall.c: anon_inode_getfd("bpf-prog", ...) and
// anon_inode_getfile("bpf_link", ...); readlink shows them as anon_inode:bpf-prog and
// anon_inode:bpf_link). bpftool compares file->f_op with &bpf_prog_fops instead, but
// that data symbol is not in this kernel's kallsyms (no CONFIG_KALLSYMS_ALL). Both
// names are 8 bytes long, so the test is one length compare for most files and one
// 8-byte read and compare for the few anonymous inodes of that length.
//
// Compile-time parameters (-D cflags from kernel/owner_iter.py), all from the running
// kernel's BTF (bcc compiles against another kernel's headers, see prog_stats_iter.c):
//   FILE_DENTRY_OFF       struct file: f_path.dentry
//   FILE_PRIVATE_OFF      struct file: private_data (struct bpf_prog * or bpf_link *)
//   DENTRY_HASH_LEN_OFF   struct dentry: d_name.hash_len (u32 hash, u32 len)
//   DENTRY_NAME_OFF       struct dentry: d_name.name
//   LINK_PROG_OFF         struct bpf_link: prog
//   PROG_AUX_OFF          struct bpf_prog: aux
//   AUX_ID_OFF            struct bpf_prog_aux: id
//   TASK_TGID_OFF, TASK_GROUP_LEADER_OFF, TASK_COMM_OFF   struct task_struct
//
// Loads straight from ctx->task and ctx->file (and the pointers reached from them) are
// checked by the verifier against the kernel's BTF; private_data and d_name.name are
// plain pointers to it (void *, char *), so what lies behind them is read with
// bpf_probe_read_kernel.

#if !defined(FILE_DENTRY_OFF) || !defined(FILE_PRIVATE_OFF)
#error "struct file offsets must come from the running kernel's BTF"
#endif
#if !defined(DENTRY_HASH_LEN_OFF) || !defined(DENTRY_NAME_OFF)
#error "struct dentry offsets must come from the running kernel's BTF"
#endif
#if !defined(LINK_PROG_OFF) || !defined(PROG_AUX_OFF) || !defined(AUX_ID_OFF)
#error "struct bpf_link/bpf_prog/bpf_prog_aux offsets must come from the running kernel's BTF"
#endif
#if !defined(TASK_TGID_OFF) || !defined(TASK_GROUP_LEADER_OFF) || !defined(TASK_COMM_OFF)
#error "struct task_struct offsets must come from the running kernel's BTF"
#endif

#include "iter_common.h"

// The iterator context (kernel/bpf/task_iter.c struct bpf_iter__task_file); its
// layout is ABI for iterators (each pointer in an 8-byte slot).
struct bpf_iter__task_file {
    struct linnix_iter_meta *meta;
    void *task;
    u32 fd;
    void *file;
};

// One record; kernel/owner_iter.py reads it as struct "<II16s".
struct rec {
    u32 tgid;
    u32 prog_id;
    u64 comm[2];  // char[16] of the thread-group leader
};

// "bpf-prog" and "bpf_link" as little-endian u64s.
#define NAME_PROG 0x676f72702d667062ULL
#define NAME_LINK 0x6b6e696c5f667062ULL

static __always_inline u32 prog_id_of(u64 prog) {
    u64 aux = 0;
    u32 id = 0;
    if (!prog || bpf_probe_read_kernel(&aux, sizeof(aux), (void *)(prog + PROG_AUX_OFF)) || !aux)
        return 0;
    bpf_probe_read_kernel(&id, sizeof(id), (void *)(aux + AUX_ID_OFF));
    return id;
}

BPF_ITER(task_file) {
    struct linnix_iter_meta *meta = ctx->meta;
    void *task = ctx->task;
    void *file = ctx->file;
    if (!task || !file)
        return 0;

    void *dentry = AT(file, FILE_DENTRY_OFF, void *);
    if (!dentry)
        return 0;
    u64 hash_len = AT(dentry, DENTRY_HASH_LEN_OFF, u64);
    if ((hash_len >> 32) != 8)
        return 0;
    u64 name_ptr = AT(dentry, DENTRY_NAME_OFF, u64);
    u64 name = 0;
    if (bpf_probe_read_kernel(&name, sizeof(name), (void *)name_ptr))
        return 0;
    if (name != NAME_PROG && name != NAME_LINK)
        return 0;

    u64 priv = AT(file, FILE_PRIVATE_OFF, u64);
    if (name == NAME_LINK) {
        u64 prog = 0;
        if (!priv || bpf_probe_read_kernel(&prog, sizeof(prog), (void *)(priv + LINK_PROG_OFF)))
            return 0;
        priv = prog;  // NULL for links without a program (struct_ops): skipped below
    }
    u32 id = prog_id_of(priv);
    if (!id)
        return 0;

    struct rec r = {};
    r.tgid = AT(task, TASK_TGID_OFF, u32);
    r.prog_id = id;
    void *leader = AT(task, TASK_GROUP_LEADER_OFF, void *);
    if (leader) {
        r.comm[0] = AT(leader, TASK_COMM_OFF, u64);
        r.comm[1] = AT(leader, TASK_COMM_OFF + 8, u64);
    }
    bpf_seq_write(meta->seq, &r, sizeof(r));
    return 0;
}
