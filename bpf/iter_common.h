// Shared by the BPF iterators (prog_stats_iter.c, prog_owners_iter.c).
//
// struct bpf_iter_meta (include/linux/bpf.h), the first member of every iterator's
// context: the verifier checks accesses against the kernel's own BTF of it, and its
// layout is ABI for iterators.
struct seq_file;
struct linnix_iter_meta {
    struct seq_file *seq;
    u64 session_id;
    u64 seq_num;
};

// A field at a byte offset from the running kernel's BTF (bcc compiles against another
// kernel's headers, whose struct layouts are wrong here: no kernel struct is named).
#define AT(base, off, type) (*(type *)((char *)(base) + (off)))
