#!/usr/bin/env bash
# A plain-HTTP image registry on 127.0.0.1:5000 for the test bed: Debian's
# docker-registry package (the distribution registry, v2 API), so that
# `make image-push REGISTRY=127.0.0.1:5000` has somewhere to push and the
# local cluster has a registry to pull tp's image from (test/e2e:
# TestConnectFromRegistry). Docker pushes to 127.0.0.0/8 over plain HTTP
# without any daemon.json setting; the cluster's containerd is told by
# hack/cluster/up.sh (hosts.toml under its config_path).
#
#   hack/registry.sh up     start it (idempotent; installs the package when missing)
#   hack/registry.sh down   stop it (idempotent); the stored images stay
#   hack/registry.sh gc     garbage-collect the storage: blobs of deleted or
#                           untagged manifests go (it stops the registry
#                           meanwhile and starts it again when it ran)
#   hack/registry.sh addr   print its address (127.0.0.1:5000)
#
# It listens on 127.0.0.1 only, without authentication: nothing outside this
# machine reaches it. Storage: /var/cache/tp-registry (machine-wide, as the
# port is; `down` keeps it, rm -rf it to start empty). Log:
# /var/log/tp-registry.log.
set -euo pipefail

ADDR=127.0.0.1:5000
STORE=/var/cache/tp-registry
CONF=$STORE/config.yml
PIDFILE=/run/tp-registry.pid
LOGF=/var/log/tp-registry.log
BIN=/usr/bin/docker-registry

log() { printf '[%s] registry: %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'ERROR: registry: %s\n' "$*" >&2; exit 1; }

# pid: the pid in $PIDFILE while it runs $BIN, else nothing.
pid() {
	local p exe
	p="$(cat "$PIDFILE" 2>/dev/null)" || return 0
	[[ "$p" =~ ^[0-9]+$ ]] || return 0
	exe="$(readlink "/proc/$p/exe" 2>/dev/null)" || return 0
	[ "${exe% (deleted)}" = "$BIN" ] && echo "$p"
	return 0
}

# answers: the registry's API root answers 200 (plain HTTP, no curl needed).
answers() {
	(
		exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}" || exit 1
		printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$ADDR" >&3
		timeout 5 head -n 1 <&3 | grep -q ' 200 '
	) 2>/dev/null
}

config() {
	cat <<EOF
# Written by hack/registry.sh: tp's test registry, plain HTTP on $ADDR only.
version: 0.1
log:
  level: info
  fields:
    service: tp-registry
storage:
  filesystem:
    rootdirectory: $STORE/data
  delete:
    enabled: true
http:
  addr: $ADDR
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
}

stop() {
	local p
	p="$(pid)"
	[ -n "$p" ] || return 0
	log "stopping pid $p"
	kill "$p" 2>/dev/null || true
	for _ in $(seq 1 50); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$p" 2>/dev/null || true
	rm -f "$PIDFILE"
}

up() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, /run, /var/cache); try: sudo $0 up"
	if [ ! -x "$BIN" ]; then
		log "installing Debian's docker-registry"
		export DEBIAN_FRONTEND=noninteractive
		# The package must not start its own service (port 5000 on every address).
		local rc_added=
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod +x /usr/sbin/policy-rc.d
			rc_added=1
		fi
		apt-get install -y -qq --no-install-recommends docker-registry >/dev/null ||
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry >/dev/null; } ||
			die "apt-get install docker-registry failed"
		[ -z "$rc_added" ] || rm -f /usr/sbin/policy-rc.d
	fi
	mkdir -p "$STORE/data"
	local tmp
	tmp="$(mktemp "$CONF.XXXXXX")"
	config >"$tmp"
	if cmp -s "$tmp" "$CONF" && [ -n "$(pid)" ] && answers; then
		rm -f "$tmp"
		return 0
	fi
	mv -f "$tmp" "$CONF"
	stop
	if answers; then
		die "something that is not hack/registry.sh's registry already answers on $ADDR; stop it first"
	fi
	log "starting $BIN on $ADDR (log: $LOGF)"
	printf '\n==== %s starting\n' "$(date -Is)" >>"$LOGF"
	setsid nohup "$BIN" serve "$CONF" >>"$LOGF" 2>&1 </dev/null 9>&- &
	local p=$!
	echo "$p" >"$PIDFILE"
	for _ in $(seq 1 100); do
		answers && return 0
		if ! kill -0 "$p" 2>/dev/null; then
			tail -n 20 "$LOGF" >&2 || true
			die "docker-registry exited; see $LOGF"
		fi
		sleep 0.1
	done
	tail -n 20 "$LOGF" >&2 || true
	die "docker-registry does not answer on $ADDR after 10s; see $LOGF"
}

# gc: the registry's garbage collection must not run beside the registry.
gc() {
	[ "$(id -u)" -eq 0 ] || die "must run as root; try: sudo $0 gc"
	[ -f "$CONF" ] || return 0
	local was_running=
	[ -z "$(pid)" ] || was_running=1
	stop
	"$BIN" garbage-collect --delete-untagged "$CONF" >>"$LOGF" 2>&1 || die "garbage-collect failed; see $LOGF"
	[ -z "$was_running" ] || up
}

case "${1:-}" in
up) up ;;
down) stop ;;
gc) gc ;;
addr) echo "$ADDR" ;;
*) die "usage: $0 up|down|gc|addr" ;;
esac
