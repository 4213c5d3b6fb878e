#!/bin/sh
# Assemble the runtime root of the tollgate image: the binary, the shared libraries it loads
# (glibc, libssl3/libcrypto, libgcc_s, as `ldd` resolves them on this Debian), the CA bundle, a
# non-root user and /tmp. Nothing else: no shell, no package manager.
#
# Usage: rootfs.sh BINARY CONFIG OUT
# Run inside a Debian bookworm stage that has libssl3 and ca-certificates installed; both
# Dockerfiles (../../Dockerfile and Dockerfile.runtime) use it, so the two images are the same.
set -eu
bin=$1
config=$2
out=$3

mkdir -p "$out/usr/lib/x86_64-linux-gnu" "$out/usr/lib64" "$out/usr/local/bin" \
  "$out/etc/ssl/certs" "$out/etc/tollgate" "$out/tmp"
# Debian's merged /usr: /lib and /lib64 are links into /usr, as on the build host.
ln -s usr/lib "$out/lib"
ln -s usr/lib64 "$out/lib64"
chmod 1777 "$out/tmp"

install -m 0755 "$bin" "$out/usr/local/bin/tollgate"

# The libraries and the loader, resolved where the binary will find them.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || { echo "rootfs.sh: ldd found no libraries for $bin" >&2; exit 1; }
for lib in $libs; do
  cp -L "$lib" "$out$lib"
done

# CA certificates: the bundle, and the hashed directory OpenSSL's default paths look in
# (/usr/lib/ssl/certs -> /etc/ssl/certs), with the links dereferenced.
cp -L /etc/ssl/certs/* "$out/etc/ssl/certs/"
mkdir -p "$out/usr/lib/ssl"
ln -s /etc/ssl/certs "$out/usr/lib/ssl/certs"

# The user the image runs as (uid/gid 65532, as in distroless' `nonroot`), and name resolution
# from /etc/hosts first (Docker writes it), then DNS.
printf 'root:x:0:0:root:/root:/sbin/nologin\ntollgate:x:65532:65532:tollgate:/nonexistent:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\ntollgate:x:65532:\n' > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"

install -m 0644 "$config" "$out/etc/tollgate/tollgate.yaml"

# It must run: the loader finds every library in the new root.
chroot "$out" /usr/local/bin/tollgate --version
