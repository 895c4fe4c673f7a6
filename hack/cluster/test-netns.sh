#!/usr/bin/env bash
# Tests lift_hidden_netns (lib.sh) in a mount namespace of its own, so the
# host's /run/netns is never touched: two network namespaces mounted, then a
# bind mount of the directory over itself (what `ip netns add` does) hides
# them, then one more mounted on top. After the lift all three must be
# mount points where containerd looks, and unmountable and removable there.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

if [ "${1:-}" != --inside ]; then
	exec unshare --mount --propagation private "$0" --inside
fi

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
base="$(mktemp -d)"
dir="$base/netns"
mount -t tmpfs tp-netns-test "$base"
mkdir "$dir"
add_ns() { touch "$dir/$1" && mount --bind /proc/self/ns/net "$dir/$1"; }
mounted() { awk -v p="$dir/$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }
visible() { [ "$(stat -f -c %T "$dir/$1")" = nsfs ]; }

add_ns cni-old-1
add_ns cni-old-2
mount --bind "$dir" "$dir"
mount --make-shared "$dir"
add_ns cni-new
for ns in cni-old-1 cni-old-2; do
	! visible "$ns" || fail "$ns is visible before the lift: the test set-up hid nothing"
	! rm -f "$dir/$ns" 2>/dev/null || fail "$ns could be removed while hidden: the test set-up is wrong"
done

lift_hidden_netns "$dir"

for ns in cni-old-1 cni-old-2 cni-new; do
	mounted "$ns" && visible "$ns" || fail "$ns is not a network namespace at $dir/$ns after the lift"
done
[ "$(awk -v p="$dir/cni-" 'index($5, p) == 1' /proc/self/mountinfo | wc -l)" = 3 ] ||
	fail "the lift left more or fewer than 3 namespace mounts: $(grep "$dir" /proc/self/mountinfo)"
for ns in cni-old-1 cni-old-2 cni-new; do
	umount "$dir/$ns" && rm "$dir/$ns" || fail "$ns cannot be unmounted and removed after the lift"
done
lift_hidden_netns "$dir" # nothing hidden: does nothing
[ -z "$(ls -A "$dir")" ] || fail "left in $dir: $(ls -A "$dir")"
echo "ok: lift_hidden_netns lifts hidden network namespaces"
