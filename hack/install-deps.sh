#!/usr/bin/env bash
# Installs the Debian packages tp's builds and test bed need and makes sure a
# Docker engine answers. Idempotent and fast when everything is already there:
# apt-get update runs only when a package is missing, dockerd is started only
# when `docker info` fails.
set -euo pipefail

PACKAGES=(ca-certificates docker.io containerd containernetworking-plugins iptables conntrack openssl socat iproute2 protobuf-compiler debootstrap)
DOCKERD_LOG=/var/log/tp-dockerd.log
CLUSTER_SOCK=/run/containerd/containerd.sock

die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "hack/install-deps.sh must run as root (apt-get, dockerd); try: sudo $0"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing: tp's daemon container needs a TUN device (modprobe tun, or give this machine /dev/net/tun)"

missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Packages must not start services themselves (there is no init system to
	# own them here); dockerd is started below, containerd by up.sh.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq || die "apt-get update failed"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
fi

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

if ! docker_ok; then
	# dockerd uses an already running containerd at /run/containerd instead of
	# starting its own when that socket exists. That path belongs to the test
	# bed's containerd (hack/cluster/up.sh), which must not carry Docker's
	# containers, so hide it while dockerd starts, or drop it when stale.
	hidden=""
	if [ -S "$CLUSTER_SOCK" ]; then
		if timeout 5 ctr -a "$CLUSTER_SOCK" version >/dev/null 2>&1; then
			hidden="$CLUSTER_SOCK.hidden-from-dockerd"
			mv -f "$CLUSTER_SOCK" "$hidden"
		else
			rm -f "$CLUSTER_SOCK"
		fi
	fi
	if ! pgrep -x dockerd >/dev/null; then
		log "starting dockerd (log: $DOCKERD_LOG)"
		setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
	fi
	deadline=$((SECONDS + 60))
	until docker_ok; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			[ -n "$hidden" ] && mv -f "$hidden" "$CLUSTER_SOCK"
			tail -n 20 "$DOCKERD_LOG" >&2 || true
			die "dockerd did not answer within 60s; see $DOCKERD_LOG"
		fi
		sleep 0.5
	done
	[ -n "$hidden" ] && mv -f "$hidden" "$CLUSTER_SOCK"
	log "dockerd is up"
fi
exit 0
