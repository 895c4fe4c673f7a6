#!/usr/bin/env bash
# Builds tp-debian:dev, the image of off-the-shelf Debian tools (sh,
# coreutils, curl) that e2e tests run where a user would run their own
# container: a bookworm root filesystem made by debootstrap and imported
# with `docker import` (no registry). Idempotent: the image is tagged with a
# hash of this script and rebuilt only when that tag is missing.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES=curl,ca-certificates,procps
IMAGE=tp-debian

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "$0 must run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is missing: run make deps"

hash=$(sha256sum "$0" | cut -c1-12)
if docker image inspect "$IMAGE:$hash" >/dev/null 2>&1; then
	docker tag "$IMAGE:$hash" "$IMAGE:dev"
	exit 0
fi

root=$(mktemp -d /var/tmp/tp-debian.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap $SUITE (minbase + $PACKAGES) into $root"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >/var/log/tp-debootstrap.log 2>&1 ||
	die "debootstrap failed: see /var/log/tp-debootstrap.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$IMAGE:$hash" >/dev/null
docker tag "$IMAGE:$hash" "$IMAGE:dev"
log "image $IMAGE:dev ($IMAGE:$hash)"
