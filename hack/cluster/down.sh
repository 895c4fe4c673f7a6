#!/usr/bin/env bash
# Tears down the test bed that hack/cluster/up.sh brought up: its processes,
# pods (containers, network namespaces, veths, cgroups), mounts, the CNI
# bridge, its iptables chains (TP-*, kube-proxy's and the kubelet's KUBE-*,
# the CNI plugins' CNI-*) and /var/lib/tp-cluster. Docker, its networks and
# rules stay as they are; so does the build cache in .cache/cluster.
#
#   hack/cluster/down.sh [--keep-data]
#
# --keep-data stops and cleans up everything as a reboot would, but keeps
# /var/lib/tp-cluster (etcd's state, PKI, images): the next up.sh restarts
# the same cluster.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

require_root
keep_data=false
case "${1:-}" in
"") ;;
--keep-data) keep_data=true ;;
*) die "usage: $0 [--keep-data]" ;;
esac
lock_cluster

# Our containerd's shims: each serves one pod sandbox of the k8s.io namespace.
shim_pids() {
	local dir cmd
	for dir in /proc/[0-9]*; do
		cmd="$({ tr '\0' ' ' <"$dir/cmdline"; } 2>/dev/null)" || continue
		case "$cmd" in
		*containerd-shim*"-address $CONTAINERD_SOCK"*) echo "${dir#/proc/}" ;;
		esac
	done
}

# The kubelet's pod cgroups (cgroupfs driver; v1 per controller, or v2),
# children first.
kubepods_cgroups() {
	find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d 2>/dev/null || true
}

# Processes of our components still alive without (or despite) a pid file.
component_pids() {
	local dir exe name
	for dir in /proc/[0-9]*; do
		exe="$(readlink "$dir/exe" 2>/dev/null)" || continue
		exe="${exe% (deleted)}"
		for name in "${TP_COMPONENTS[@]}"; do
			[ "$(basename "$exe")" = "$name" ] || continue
			if [[ "$exe" == "$TP_BIN/"* ]] || tr '\0' ' ' 2>/dev/null <"$dir/cmdline" | grep -q "$TP_CONF/"; then
				echo "${dir#/proc/}"
			fi
		done
	done
}

stop_components() {
	local i name pid
	for ((i = ${#TP_COMPONENTS[@]} - 1; i >= 0; i--)); do
		name="${TP_COMPONENTS[$i]}"
		pid="$(pid_of "$name")"
		if [ -n "$pid" ]; then
			log "stopping $name ($pid)"
			stop_pid "$name" "$pid"
		fi
		# Containers first, while containerd still answers.
		if [ "$name" = kube-scheduler ] && running containerd; then
			remove_containers
		fi
	done
}

remove_containers() {
	local ids id
	ids="$(timeout 30 ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null || true)"
	[ -z "$ids" ] && return 0
	log "killing $(echo "$ids" | wc -l) pod containers"
	for id in $ids; do
		timeout 30 ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	for id in $ids; do
		timeout 30 ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
	done
}

kill_leftovers() {
	local pid cg
	for pid in $(shim_pids); do
		log "killing leftover shim $pid"
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Anything still running in a pod cgroup.
	for cg in $(kubepods_cgroups); do
		for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
	done
	sleep 0.5
	for cg in $(kubepods_cgroups); do
		rmdir "$cg" 2>/dev/null || true
	done
}

# Mounts of the kubelet, containerd and pod network namespaces.
our_mounts() {
	findmnt -rn -o TARGET 2>/dev/null | sed 's/\\x20/ /g' |
		grep -E "^($TP_DATA(/|\$)|/run/netns/cni-|/var/run/netns/cni-|/run/containerd/io\.containerd)" |
		sort -u -r || true
}

unmount_all() {
	local target
	lift_hidden_netns # else what it hides cannot be unmounted by path
	for _ in 1 2 3; do
		while read -r target; do
			[ -n "$target" ] || continue
			umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
		done < <(our_mounts)
		[ -z "$(our_mounts)" ] && break
	done
	rm -f /run/netns/cni-* 2>/dev/null || true
}

# remove_iptables CMD: delete every rule that jumps to or lives in a TP-*,
# KUBE-* or CNI-* chain, then those chains, in every table of CMD.
remove_iptables() {
	local cmd="$1" table rule chain
	command -v "$cmd" >/dev/null || return 0
	for table in filter nat mangle raw; do
		"$cmd-save" -t "$table" >/dev/null 2>&1 || continue
		while read -r rule; do
			[ -n "$rule" ] || continue
			eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null || true
		done < <("$cmd-save" -t "$table" | grep -E -- '^-A ' |
			grep -E -- '-j (TP|KUBE|CNI)-' | grep -vE -- '^-A (TP|KUBE|CNI)-')
		while read -r chain; do
			"$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
		done < <("$cmd-save" -t "$table" | sed -nE 's/^:((TP|KUBE|CNI)-[^ ]*) .*/\1/p')
		while read -r chain; do
			"$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
		done < <("$cmd-save" -t "$table" | sed -nE 's/^:((TP|KUBE|CNI)-[^ ]*) .*/\1/p')
	done
}

remove_links() {
	local link
	if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
		for link in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
			ip link delete "$link" 2>/dev/null || true
		done
		ip link delete "$CNI_BRIDGE" 2>/dev/null || true
	fi
}

stop_components
for pid in $(component_pids); do
	log "stopping leftover $(basename "$(readlink "/proc/$pid/exe")") ($pid)"
	stop_pid leftover "$pid"
done
kill_leftovers
unmount_all
remove_iptables iptables
remove_iptables ip6tables
remove_links
conntrack -D -d "$POD_CIDR" >/dev/null 2>&1 || true
conntrack -D --orig-dst "$SERVICE_CIDR" >/dev/null 2>&1 || true

left="$(our_mounts)"
[ -z "$left" ] || die "still mounted, not removing $TP_DATA: $left"
if [ "$keep_data" = true ]; then
	rm -rf "$TP_RUN"
else
	rm -rf --one-file-system "$TP_DATA"
fi
rm -f "$CONTAINERD_SOCK" "$CONTAINERD_SOCK.ttrpc" "$CONTAINERD_SOCK.hidden-from-dockerd"
rm -rf /run/containerd/runc/k8s.io
# Directories our containerd created; rmdir keeps them while anyone else
# (another containerd's shims) still uses them.
rmdir /run/containerd/runc /run/containerd/s /run/containerd /run/netns 2>/dev/null || true
# Paths the kubelet and libcni use whatever their configuration says: links
# to container logs (kept in $TP_DATA/pod-logs), the device plugin socket,
# cached CNI results of our network and of containerd's loopback.
find /var/log/containers -maxdepth 1 -type l -lname "$TP_DATA/*" -delete 2>/dev/null || true
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* /var/lib/cni/results/cni-loopback-*
rmdir /var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet \
	/var/lib/cni/results /var/lib/cni 2>/dev/null || true

# Prove it.
problems=()
pids="$(component_pids | tr '\n' ' ')"
[ -z "${pids% }" ] || problems+=("processes $pids")
[ -z "$(shim_pids)" ] || problems+=("containerd shims $(shim_pids | tr '\n' ' ')")
ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && problems+=("bridge $CNI_BRIDGE")
for cmd in iptables ip6tables; do
	chains="$("$cmd-save" 2>/dev/null | grep -cE '^:(TP|KUBE|CNI)-' || true)"
	[ "$chains" = 0 ] || problems+=("$chains $cmd chains")
done
[ -z "$(our_mounts)" ] || problems+=("mounts")
[ "$keep_data" = false ] && [ -e "$TP_DATA" ] && problems+=("$TP_DATA")
if [ "${#problems[@]}" -gt 0 ]; then
	die "left behind: ${problems[*]}"
fi
if [ "$keep_data" = true ]; then
	log "test bed stopped; its state stays in $TP_DATA for the next up.sh"
else
	log "test bed removed (build cache kept in $TP_CACHE)"
fi
