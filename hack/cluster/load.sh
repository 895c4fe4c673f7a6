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
for image in "$@"; do
	docker image inspect "$image" >/dev/null 2>&1 || die "Docker has no image $image; build it first"
	docker save "$image" | timeout 300 ctr -n k8s.io -a "$CONTAINERD_SOCK" images import - >/dev/null ||
		die "importing $image into containerd failed"
	log "loaded $image"
done
