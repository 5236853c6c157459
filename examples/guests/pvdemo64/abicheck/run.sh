#!/bin/sh
# Compare pvdemo64's xen.h with Xen's public headers (Debian: apt-get install libxen-dev).
# Prints nothing but "abicheck: N fields and constants identical" when they agree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -f /usr/include/xen/xen.h ] || { echo "abicheck: /usr/include/xen/xen.h missing (libxen-dev)" >&2; exit 2; }
gcc -m64 -std=gnu11 -Wall -Werror -DUSE_XEN_HEADERS -D__XEN_INTERFACE_VERSION__=0x00040e00 -o "$tmp/xen" "$here/layout.c"
gcc -m64 -std=gnu11 -Wall -Werror -o "$tmp/ours" "$here/layout.c"
"$tmp/xen" > "$tmp/xen.txt"
"$tmp/ours" > "$tmp/ours.txt"
if ! diff -u "$tmp/xen.txt" "$tmp/ours.txt"; then
    echo "abicheck: pvdemo64/xen.h differs from /usr/include/xen (- Xen, + ours)" >&2
    exit 1
fi
echo "abicheck: $(wc -l < "$tmp/ours.txt") fields and constants identical"
