#!/usr/bin/env bash
# Loads Docker images into the test bed's containerd (namespace k8s.io), so
# that pods can run them with imagePullPolicy Never (or IfNotPresent and a
# tag other than latest); nothing can be pulled on this machine.
#
#   hack/cluster/load.sh IMAGE...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
[ "$#" -gt 0 ] || die "usage: $0 IMAGE..."
[ -S "$CONTAINERD_SOCK" ] || die "the test bed's containerd is not running ($CONTAINERD_SOCK); run hack/cluster/up.sh"
# loaded prints the image ID (config digest) of the image containerd has
# under the name $1, nothing when it has none.
loaded() {
	local ref=$1 manifest
	[[ $ref == */* ]] || ref=docker.io/library/$ref
	manifest=$(ctr -n k8s.io -a "$CONTAINERD_SOCK" images ls -q "name==$ref" 2>/dev/null | head -1)
	[ -n "$manifest" ] || return 0
	manifest=$(ctr -n k8s.io -a "$CONTAINERD_SOCK" images ls "name==$ref" 2>/dev/null | awk 'NR==2 {print $3}')
	ctr -n k8s.io -a "$CONTAINERD_SOCK" content get "$manifest" 2>/dev/null |
		grep -o '"config":{[^}]*"digest":"sha256:[0-9a-f]*"' | grep -o 'sha256:[0-9a-f]*' || true
}
for image in "$@"; do
	id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null) || die "Docker has no image $image; build it first"
	if [ "$(loaded "$image")" = "$id" ]; then
		log "$image already loaded"
		continue
	fi
	docker save "$image" | timeout 300 ctr -n k8s.io -a "$CONTAINERD_SOCK" images import - >/dev/null ||
		die "importing $image into containerd failed"
	log "loaded $image"
done
