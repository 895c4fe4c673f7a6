#!/usr/bin/env bash
# A second Docker engine on this machine, for the e2e tests of engine
# discovery (test/e2e/engines_test.go): tp must find it through DOCKER_HOST
# or a docker context, as the docker CLI does, and put nothing on the main
# engine.
#
#   hack/docker2.sh up      start it (idempotent): prints its DOCKER_HOST
#   hack/docker2.sh down    stop it (idempotent); its images stay
#   hack/docker2.sh load IMAGE...   copy images from the main engine
#   hack/docker2.sh host    print its DOCKER_HOST
#
# It never touches the main dockerd. It runs its own containerd (the cluster's
# is at /run/containerd, the main engine's under /var/run/docker), its own
# socket, data root, exec root and pid files, and its own bridge
# br-tpdocker2 with 198.18.213.1/24 (RFC 2544 space: no clash with Docker's
# pools, the node or the cluster). It runs with --iptables=false: a second
# dockerd that manages iptables flushes the DOCKER chains of the first on
# start. Its containers reach the host (the API server on :6443 through the
# bridge address, as host.docker.internal), not beyond; the bridge's name
# matches the test bed's isolation rules (TP-ISOLATION: -i br-+), so pods and
# services are blocked from it as from the main engine's networks.
set -euo pipefail

NAME=tp-docker2
SOCK=/run/$NAME.sock
HOST=unix://$SOCK
DATA=/var/lib/$NAME
EXEC=/run/$NAME
LOGS=/var/log/$NAME
BRIDGE=br-tpdocker2
BRIDGE_ADDR=198.18.213.1
BRIDGE_CIDR=$BRIDGE_ADDR/24
CONTAINERD_SOCK=$EXEC/containerd/containerd.sock

log() { printf '[%s] docker2: %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'ERROR: docker2: %s\n' "$*" >&2; exit 1; }

# pid_of NAME BINARY: the pid in $EXEC/NAME.pid while it runs BINARY.
pid_of() {
	local pid exe
	pid="$(cat "$EXEC/$1.pid" 2>/dev/null)" || return 0
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 0
	[ "$(basename "${exe% (deleted)}")" = "$2" ] && echo "$pid"
	return 0
}

answers() { docker -H "$HOST" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# wait_until WHAT SECONDS LOG COMMAND...: poll COMMAND; fail early when the
# process started last ($launched) died.
launched=
wait_until() {
	local what="$1" seconds="$2" log="$3"
	shift 3
	for _ in $(seq 1 $((seconds * 10))); do
		"$@" && return 0
		if [ -n "$launched" ] && ! kill -0 "$launched" 2>/dev/null; then
			tail -n 20 "$log" >&2 || true
			die "$what exited; see $log"
		fi
		sleep 0.1
	done
	tail -n 20 "$log" >&2 || true
	die "$what not ready after ${seconds}s; see $log"
}

start_bg() { # start_bg NAME LOG BINARY ARGS...: in its own session
	local name="$1" logf="$2"
	shift 2
	log "starting $name"
	printf '\n==== %s starting %s\n' "$(date -Is)" "$name" >>"$logf"
	setsid nohup "$@" >>"$logf" 2>&1 </dev/null &
	launched=$!
}

stop() { # stop NAME BINARY
	local pid
	pid="$(pid_of "$1" "$2")"
	[ -n "$pid" ] || return 0
	log "stopping $1 ($pid)"
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$1 ($pid) ignored SIGTERM for 20s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

up() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (it starts dockerd); try: sudo $0 up"
	if answers; then
		echo "$HOST"
		return 0
	fi
	mkdir -p "$DATA" "$EXEC/containerd" "$LOGS"

	ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
	ip addr replace "$BRIDGE_CIDR" dev "$BRIDGE"
	ip link set "$BRIDGE" up

	if [ -z "$(pid_of containerd containerd)" ]; then
		cat >"$EXEC/containerd.toml" <<EOF
version = 2
root = "$DATA/containerd"
state = "$EXEC/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[debug]
  address = "$EXEC/containerd/debug.sock"
EOF
		rm -f "$CONTAINERD_SOCK"
		start_bg containerd "$LOGS/containerd.log" containerd --config "$EXEC/containerd.toml"
		echo "$launched" >"$EXEC/containerd.pid"
	fi
	wait_until containerd 30 "$LOGS/containerd.log" test -S "$CONTAINERD_SOCK"

	if [ -z "$(pid_of dockerd dockerd)" ]; then
		echo '{}' >"$EXEC/daemon.json" # not the main engine's /etc/docker/daemon.json
		rm -f "$SOCK" "$EXEC/dockerd.pid"
		start_bg dockerd "$LOGS/dockerd.log" dockerd \
			--config-file "$EXEC/daemon.json" \
			-H "$HOST" \
			--data-root "$DATA/docker" \
			--exec-root "$EXEC/docker" \
			--pidfile "$EXEC/dockerd.pid" \
			--containerd "$CONTAINERD_SOCK" \
			--bridge "$BRIDGE" \
			--host-gateway-ip "$BRIDGE_ADDR" \
			--iptables=false --ip6tables=false --ip-masq=false \
			--cgroup-parent /$NAME
		# dockerd writes its own pid file.
	fi
	wait_until dockerd 60 "$LOGS/dockerd.log" answers
	log "up: $HOST (bridge $BRIDGE $BRIDGE_CIDR)"
	echo "$HOST"
}

down() {
	stop dockerd dockerd
	stop containerd containerd
	rm -f "$SOCK"
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link delete "$BRIDGE"
	fi
	log "down"
}

load() {
	[ $# -gt 0 ] || die "load: name the images"
	answers || die "the second engine is not up: run $0 up"
	log "loading $* from the main engine"
	docker save "$@" | docker -H "$HOST" load -q >/dev/null
}

case "${1:-}" in
up) up ;;
down) down ;;
load)
	shift
	load "$@"
	;;
host) echo "$HOST" ;;
*) die "usage: $0 up|down|load IMAGE...|host" ;;
esac
