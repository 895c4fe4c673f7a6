#!/usr/bin/env bash
# Pushes tp's image to a registry a cluster pulls from, so that
# `tp connect --image-registry REGISTRY` (or `tp helm install
# --image-registry REGISTRY`) can run the traffic-manager and the agents
# there (`make image-push REGISTRY=...` builds the image first).
#
#   hack/image-push.sh REGISTRY IMAGE...
#
# Each IMAGE (e.g. tp:v1.2.3) is tagged REGISTRY/IMAGE and pushed, and the
# pushed digest printed. REGISTRY is a host[:port] with an optional path,
# e.g. ghcr.io/me, registry.example.com:5000/team or 127.0.0.1:5000 (Docker
# pushes to 127.0.0.0/8 over plain HTTP; other plain-HTTP registries need
# "insecure-registries" in Docker's daemon.json). Log in first
# (`docker login HOST`) for a registry that asks for credentials.
set -euo pipefail

die() { printf 'ERROR: image-push: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] image-push: %s\n' "$(date +%T)" "$*" >&2; }

[ "$#" -ge 2 ] || die "usage: $0 REGISTRY IMAGE... (e.g. $0 127.0.0.1:5000 tp:dev; make image-push REGISTRY=host:port)"
registry="${1%/}"
shift
case "$registry" in
*://*) die "REGISTRY $registry: give host[:port][/path] without a scheme, e.g. ${registry#*://}" ;;
"" | /* | *' '*) die "REGISTRY '$registry' is not host[:port][/path], e.g. ghcr.io/me or 127.0.0.1:5000" ;;
esac

for image in "$@"; do
	docker image inspect "$image" >/dev/null 2>&1 || die "Docker has no image $image; build it first (make image)"
	target="$registry/${image##*/}"
	docker tag "$image" "$target"
	log "pushing $target"
	if ! out="$(timeout 600 docker push "$target" 2>&1)"; then
		printf '%s\n' "$out" >&2
		docker rmi "$target" >/dev/null 2>&1 || true
		case "$out" in
		*"server gave HTTP response to HTTPS client"*)
			die "pushing $target: $registry speaks plain HTTP; add it to \"insecure-registries\" in /etc/docker/daemon.json (Docker allows plain HTTP only for 127.0.0.0/8) or serve it with TLS" ;;
		*"no basic auth credentials"* | *"unauthorized"* | *"denied"*)
			die "pushing $target: the registry refused the credentials; run docker login ${registry%%/*}" ;;
		*"connection refused"* | *"no such host"* | *"i/o timeout"*)
			die "pushing $target: cannot reach $registry (for the test bed's registry: hack/registry.sh up)" ;;
		esac
		die "pushing $target failed"
	fi
	digest="$(printf '%s\n' "$out" | grep -o 'digest: sha256:[0-9a-f]*' | head -1 | cut -d' ' -f2)"
	echo "$target${digest:+@$digest}"
done
