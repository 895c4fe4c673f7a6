# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the test bed scripts (sourced, not run).

TP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TP_CLUSTER_SRC="$TP_ROOT/hack/cluster"

# Build outputs (kept by down.sh).
TP_CACHE="$TP_ROOT/.cache/cluster"
TP_BIN="$TP_CACHE/bin"

# Runtime state (removed by down.sh).
TP_DATA=/var/lib/tp-cluster
TP_PKI="$TP_DATA/pki"
TP_LOGS="$TP_DATA/logs"
TP_RUN="$TP_DATA/run"
TP_CONF="$TP_DATA/conf"
TP_KUBECONFIG="$TP_DATA/kubeconfig"
TP_KUBELET_ROOT="$TP_DATA/kubelet"

K8S_VERSION=v1.32.0
COREDNS_VERSION=v1.11.3
NODE_NAME=tp-node
CONTEXT_NAME=tp-local
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/12
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
CNI_BRIDGE=tpcni0
CNI_NETWORK=tp-pods
CONTAINERD_SOCK=/run/containerd/containerd.sock
PAUSE_IMAGE=registry.k8s.io/pause:3.6
# The test bed's image registry (hack/registry.sh) and the directory of
# containerd's per-registry hosts.toml files (its CRI registry config_path).
TP_REGISTRY=127.0.0.1:5000
TP_REGISTRY_HOSTS="$TP_CONF/certs.d"
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:$COREDNS_VERSION
NETCHECK_IMAGE=tp-cluster/netcheck:v1
EXEC_TOKEN=tp-exec-plugin-test-token
EXEC_USER=exec-user

# Processes started by up.sh, in start order (down.sh stops them in reverse).
TP_COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (it starts containerd, the kubelet and changes iptables); try: sudo $0"
}

require_tun() {
	[ -c /dev/net/tun ] || die "/dev/net/tun is missing: tp's daemon container needs a TUN device (modprobe tun, or give this machine /dev/net/tun)"
}

# pid_of NAME: the pid of our running NAME process, or nothing. A pid file
# counts only while its process still runs our binary (pids are reused after
# a reboot).
pid_of() {
	local name="$1" pid exe
	[ -f "$TP_RUN/$name.pid" ] || return 0
	pid="$(cat "$TP_RUN/$name.pid" 2>/dev/null)" || return 0
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 0
	exe="${exe% (deleted)}"
	case "$(basename "$exe")" in
	"$name") echo "$pid" ;;
	esac
}

running() { [ -n "$(pid_of "$1")" ]; }

# TP_NOFILE is the open-file limit we give every component, as systemd
# gives containerd and the kubelet (LimitNOFILE=infinity), or the hard limit
# when that is lower and cannot be raised (no CAP_SYS_RESOURCE). containerd
# serves each port-forwarded connection with about four descriptors: at
# 20000 it runs out near 5000 connections, and then cannot create a pod
# sandbox either ("too many open files") until they have closed.
TP_NOFILE=1048576

# nofile_limit: TP_NOFILE, or this shell's hard limit if that is lower.
nofile_limit() {
	local hard
	hard="$(ulimit -Hn)"
	if [ "$hard" = unlimited ] || [ "$hard" -ge "$TP_NOFILE" ]; then echo "$TP_NOFILE"; else echo "$hard"; fi
}

# raise_nofile NAME: give a running component nofile_limit open files (one
# started before the limit was set keeps running).
raise_nofile() {
	local pid limit
	pid="$(pid_of "$1")"
	[ -n "$pid" ] || return 0
	limit="$(nofile_limit)"
	[ "$(prlimit --pid "$pid" --nofile --output SOFT --noheadings 2>/dev/null)" -ge "$limit" ] 2>/dev/null ||
		prlimit --pid "$pid" --nofile="$limit:$limit" 2>/dev/null ||
		log "warning: cannot raise the open-file limit of $1 (pid $pid) to $limit"
}

# start_bg NAME BINARY ARGS...: start a component in its own session, logging
# to $TP_LOGS/NAME.log, and record its pid.
start_bg() {
	local name="$1"
	shift
	mkdir -p "$TP_LOGS" "$TP_RUN"
	log "starting $name"
	printf '\n==== %s starting %s\n' "$(date -Is)" "$name" >>"$TP_LOGS/$name.log"
	(ulimit -n "$(nofile_limit)" && exec setsid nohup "$@") >>"$TP_LOGS/$name.log" 2>&1 </dev/null 9>&- &
	local pid=$!
	echo "$pid" >"$TP_RUN/$name.pid"
	# Until the child has exec'd the binary (through nohup), pid_of would
	# take it for dead.
	for _ in $(seq 1 100); do
		running "$name" && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	running "$name" || { tail_log "$name"; die "$name did not start; see $TP_LOGS/$name.log"; }
}

# stop_pid NAME PID: SIGTERM, then SIGKILL after a grace period.
stop_pid() {
	local name="$1" pid="$2"
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$name ($pid) ignored SIGTERM for 10s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

# tail_log NAME: the end of a component's log, for error messages.
tail_log() {
	echo "---- last lines of $TP_LOGS/$1.log ----" >&2
	tail -n "${2:-25}" "$TP_LOGS/$1.log" >&2 2>/dev/null || true
	echo "----" >&2
}

# wait_for NAME SECONDS COMMAND...: poll COMMAND until it succeeds; on timeout
# or when component NAME died, fail with the end of its log.
wait_for() {
	local name="$1" seconds="$2" deadline
	shift 2
	deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		if [ -f "$TP_RUN/$name.pid" ] && ! running "$name"; then
			tail_log "$name"
			die "$name exited; see $TP_LOGS/$name.log"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			tail_log "$name"
			die "$name not healthy within ${seconds}s; see $TP_LOGS/$name.log"
		fi
		sleep 0.5
	done
}

# port_pids PORT: pids of the processes listening on TCP PORT.
port_pids() {
	ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# check_port NAME PORT: fail unless PORT is free or held by our NAME.
check_port() {
	local name="$1" port="$2" pid ours
	ours="$(pid_of "$name")"
	for pid in $(port_pids "$port"); do
		[ "$pid" = "$ours" ] && continue
		die "port $port (needed by $name) is taken by pid $pid ($(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-120)); stop it or run hack/cluster/down.sh"
	done
}

# lock_cluster: one up.sh or down.sh at a time (tests may call up.sh in
# parallel); the lock is released when the script exits.
lock_cluster() {
	exec 9>/run/tp-cluster.lock
	if ! flock -n 9; then
		log "waiting for another hack/cluster/up.sh or down.sh to finish"
		flock -w 1800 9 || die "another hack/cluster/up.sh or down.sh still holds /run/tp-cluster.lock after 30 minutes"
	fi
}

kubectl_tp() { "$TP_BIN/kubectl" --kubeconfig "$TP_KUBECONFIG" "$@"; }

# node_ip: the IPv4 address of the interface holding the default route.
node_ip() {
	local dev ip
	dev="$(ip -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')"
	if [ -n "$dev" ]; then
		ip="$(ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]; exit}')"
	fi
	if [ -z "${ip:-}" ]; then
		ip="$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}')"
	fi
	[ -n "$ip" ] || die "cannot find this machine's IPv4 address (no default route, no global address)"
	echo "$ip"
}

# docker_gateway: the gateway of Docker's default bridge network.
docker_gateway() {
	local gw
	gw="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)"
	echo "${gw:-172.17.0.1}"
}

# top_mount DIR: the mount ID of the topmost mount at DIR, or nothing.
top_mount() { awk -v dir="$1" '$5 == dir { id = $1 } END { print id }' /proc/self/mountinfo; }

# is_netns FILE: FILE is a network namespace (an nsfs mount) from here.
is_netns() { [ "$(stat -f -c %T "$1" 2>/dev/null)" = nsfs ]; }

# Pod network namespaces are bind mounts at /run/netns/cni-*. `ip netns add`
# bind-mounts /run/netns over itself (to make it shared) and so hides every
# namespace mounted before it: containerd can then neither unmount nor remove
# those ("remove netns: unlinkat ...: device or resource busy"), their pods
# never finish and a restarted kubelet waits on them for ever (CoreDNS among
# them). lift_hidden_netns [DIR] keeps a bind of every namespace, visible or
# hidden, aside, peels off the covering bind mounts of DIR (a cover has its
# parent's device), puts one shared cover back if there was any, and binds
# the namespaces into it: every namespace, live or stale, is then where
# containerd looks for it. Nothing is done when nothing is hidden.
# hack/cluster/test-netns.sh tests it in a mount namespace of its own.
lift_hidden_netns() {
	local dir="${1:-/run/netns}" top keep f name covers=0
	local -a hidden
	top="$(top_mount "$dir")"
	[ -n "$top" ] || return 0
	mapfile -t hidden < <(awk -v dir="$dir/cni-" -v top="$top" \
		'index($5, dir) == 1 && $2 != top { print $5 }' /proc/self/mountinfo | sort -u)
	[ "${#hidden[@]}" -gt 0 ] || return 0
	log "lifting ${#hidden[@]} pod network namespace(s) hidden under a bind mount of $dir"
	keep="$(mktemp -d "$(dirname "$dir")/tp-netns-keep.XXXXXX")"
	while :; do
		for f in "$dir"/cni-*; do
			name="${f##*/}"
			[ -e "$keep/$name" ] || ! is_netns "$f" && continue
			touch "$keep/$name" && mount --bind "$f" "$keep/$name"
		done
		top="$(top_mount "$dir")"
		[ -n "$top" ] || break
		awk -v top="$top" '
			{ dev[$1] = $3; parent[$1] = $2 }
			END { exit !(top in dev && dev[top] == dev[parent[top]]) }' /proc/self/mountinfo ||
			break # a file system of its own at DIR, not a cover
		umount -l "$dir" || die "cannot unmount the cover of $dir"
		covers=$((covers + 1))
	done
	for f in "$dir"/cni-*; do
		while is_netns "$f"; do umount -l "$f" || break; done
	done
	if [ "$covers" -gt 0 ]; then
		mount --bind "$dir" "$dir" && mount --make-shared "$dir" ||
			die "cannot put the bind mount of $dir back"
	fi
	for f in "$keep"/*; do
		[ -e "$f" ] || continue
		name="${f##*/}"
		[ -e "$dir/$name" ] || touch "$dir/$name"
		mount --bind "$f" "$dir/$name" || log "warning: cannot bind $name back into $dir; it is gone"
		umount "$f" && rm -f "$f"
	done
	rmdir "$keep"
}
