#!/usr/bin/env bash
# Run in the Dockerfile's build stage: assemble in $1 the root filesystem of the image,
# i.e. only what the exporter runs with (the image is FROM scratch plus this tree).
#
#   - Python (interpreter, standard library with its compiled .pyc, extension modules)
#     and the virtualenv /opt/linnix-exporter with the exporter and its dependencies;
#   - Debian's bcc (the python3-bpfcc package, pure Python) and every shared library it
#     and Python load: libbcc pulls LLVM and clang, which compile the probes on the node
#     at start-up (their offsets come from the node's BTF, so they cannot be compiled
#     here);
#   - bpftool, the user's cross-check (kubectl exec ... bpftool prog);
#   - the kernel header files bcc reads when it compiles bpf/*.c, listed in
#     deploy/image/kernel-headers.txt (python -m deploy.image_headers writes it), out
#     of the ~60 MB the two Debian header packages hold;
#   - Debian's CA bundle (ca-certificates) where OpenSSL looks by default, so OTLP over
#     https:// verifies a collector's public certificate without a mounted file;
#   - /etc/passwd, group, nsswitch.conf, the dynamic linker's cache, and the dpkg
#     status and copyright files of every Debian package a file was taken from (image
#     scanners read the status file to know what is inside).
# No shell, apt, dpkg, compilers, documentation, manual pages or translations.
set -euo pipefail
out=$1
here=$(dirname "$0")
list=$(mktemp)

mkdir -p "$out"/usr/{bin,sbin,lib,lib64} "$out"/etc "$out"/tmp "$out"/root "$out"/var/lib/dpkg
chmod 1777 "$out/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$out/$d"; done # Debian's merged /usr

# A path with its directory resolved (/lib/x86_64-linux-gnu/x ->
# /usr/lib/x86_64-linux-gnu/x) and the file itself left as is, symlink or not.
canon() { echo "$(realpath "$(dirname "$1")")/$(basename "$1")"; }
# A file, and if it is a symlink, each link of the chain to the file it ends at (a
# library's soname link, say).
add() {
    local p t
    p=$(canon "$1")
    echo "$p" >>"$list"
    while [ -L "$p" ]; do
        t=$(readlink "$p")
        [ "${t#/}" = "$t" ] && t=$(dirname "$p")/$t
        p=$(canon "$t")
        echo "$p" >>"$list"
    done
}
tree() { find "$@" \( -type f -o -type l \) -print >>"$list"; }

py=$(readlink -f /usr/bin/python3) # /usr/bin/python3.11
add /usr/bin/python3
add "$py"
stdlib=/usr/lib/$(basename "$py")
# The standard library but what Debian packages apart and only the build used
# (python3-venv's ensurepip, and distutils and lib2to3 that it pulls).
tree "$stdlib" -path "$stdlib/ensurepip" -prune -o -path "$stdlib/distutils" -prune \
    -o -path "$stdlib/lib2to3" -prune -o
tree /etc/"$(basename "$py")" /usr/lib/python3/dist-packages/bcc /opt/linnix-exporter
add /usr/sbin/bpftool
# OpenSSL's default CA file; the link ends at /etc/ssl/certs/ca-certificates.crt, which
# ca-certificates' postinst wrote from its package's certificates.
add /usr/lib/ssl/cert.pem
[ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "rootfs: no CA bundle" >&2; exit 1; }

# Kernel headers: amd64/... and common/... name files of the two Debian directories.
amd64=$(echo /usr/src/linux-headers-*-amd64)
common=$(echo /usr/src/linux-headers-*-common)
if [ ! -d "$amd64" ] || [ ! -d "$common" ]; then
    echo "rootfs: no Debian kernel headers" >&2
    exit 1
fi
while read -r entry; do
    case $entry in
        '#'* | '') continue ;;
        amd64/*) f=$amd64/${entry#amd64/} ;;
        common/*) f=$common/${entry#common/} ;;
        *) echo "rootfs: bad entry $entry in kernel-headers.txt" >&2 && exit 1 ;;
    esac
    [ -f "$f" ] || { echo "rootfs: $f is missing" >&2; exit 1; }
    echo "$f" >>"$list"
done <"$here/kernel-headers.txt"

# Shared libraries: what the ELF files above link (ldd), and what Python code loads
# with ctypes by name (bcc: libbcc.so.0, librt.so.1; bcc and the exporter: libc.so.6).
elves=("$py" /usr/sbin/bpftool /usr/lib/x86_64-linux-gnu/libbcc.so.0
    /usr/lib/x86_64-linux-gnu/librt.so.1 /usr/lib/x86_64-linux-gnu/libc.so.6)
while read -r f; do
    elves+=("$f")
done < <(find "$stdlib/lib-dynload" /opt/linnix-exporter -name '*.so*' -type f)
for f in "${elves[@]}"; do
    add "$f"
    ldd "$f" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p'
done | sort -u | while read -r lib; do add "$lib"; done
add /lib64/ld-linux-x86-64.so.2

sort -u "$list" -o "$list"
sed 's|^/||' "$list" | tar -C / --no-recursion -cf - -T - | tar -C "$out" --keep-directory-symlink -xf -

# Debian packages the files came from: their status entries and copyright files.
# dpkg knows some files by their unmerged path (/lib/... for /usr/lib/...): ask for both.
pkgs=$(grep -v '^/opt/' "$list" | sed 'p; s#^/usr/\(lib\|lib64\|bin\|sbin\)/#/\1/#' | sort -u \
    | { xargs dpkg -S 2>/dev/null || true; } | sed -n 's/: \/.*//p' | sed 's/, /\n/g; s/:amd64//g' | sort -u)
# The CA bundle is generated, so dpkg -S knows no package for it: name its source.
pkgs=$(printf '%s\nca-certificates\n' "$pkgs" | sort -u)
# shellcheck disable=SC2086
dpkg-query -s $pkgs >"$out/var/lib/dpkg/status"
for p in $pkgs; do
    c=/usr/share/doc/$p/copyright
    [ -f "$c" ] && mkdir -p "$out/usr/share/doc/$p" && cp "$c" "$out/usr/share/doc/$p/"
done

printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\n' >"$out/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$out/etc/nsswitch.conf"
cp -a /etc/ld.so.conf "$out/etc/" && cp -a /etc/ld.so.conf.d "$out/etc/"
ldconfig -r "$out"
rm "$list"
echo "rootfs: $(du -sx --block-size=1M "$out" | cut -f1) MiB from $(echo "$pkgs" | wc -w) packages"
