#!/usr/bin/env bash
# Tests lift_hidden_netns (lib.sh) in a mount namespace of its own, so the
# host's /run/netns is never touched: two network namespaces mounted, then a
# shared bind mount of the directory over itself (what `ip netns add` does)
# hides them, one more is mounted, a second cover (whose parent is shared)
# hides that, and a last one is mounted on top. After the lift all four must
# be mount points where containerd looks, under one shared cover, and
# unmountable and removable there.
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
visible() { is_netns "$dir/$1"; }

add_ns cni-old-1
add_ns cni-old-2
mount --bind "$dir" "$dir"
mount --make-shared "$dir"
add_ns cni-new
mount --bind "$dir" "$dir"
add_ns cni-newest
for ns in cni-old-1 cni-old-2 cni-new; do
	! visible "$ns" || fail "$ns is visible before the lift: the test set-up hid nothing"
	! rm -f "$dir/$ns" 2>/dev/null || fail "$ns could be removed while hidden: the test set-up is wrong"
done

lift_hidden_netns "$dir"

for ns in cni-old-1 cni-old-2 cni-new cni-newest; do
	mounted "$ns" && visible "$ns" || fail "$ns is not a network namespace at $dir/$ns after the lift"
done
[ "$(awk -v p="$dir/cni-" 'index($5, p) == 1' /proc/self/mountinfo | wc -l)" = 4 ] ||
	fail "the lift left more or fewer than 4 namespace mounts: $(grep "$dir" /proc/self/mountinfo)"
covers="$(awk -v p="$dir" '$5 == p' /proc/self/mountinfo)"
[ "$(wc -l <<<"$covers")" = 1 ] && grep -q ' shared:' <<<"$covers" ||
	fail "after the lift $dir is not one shared cover: $covers"
for ns in cni-old-1 cni-old-2 cni-new cni-newest; do
	umount "$dir/$ns" && rm "$dir/$ns" || fail "$ns cannot be unmounted and removed after the lift"
done
lift_hidden_netns "$dir" # nothing hidden: does nothing
[ -z "$(ls -A "$dir")" ] || fail "left in $dir: $(ls -A "$dir")"
echo "ok: lift_hidden_netns lifts hidden network namespaces"
