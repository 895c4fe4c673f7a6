#!/usr/bin/env bash
# Builds the test bed's binaries from the Go module proxy into .cache/cluster/bin:
# Kubernetes v1.32.0 (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubectl), etcd 3.5, CoreDNS and the tiny pause and
# netcheck programs. Each group is rebuilt only when its inputs change (a stamp
# file holds their hash); the Go build cache makes a rebuild incremental.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$TP_BIN"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=32 -X $pkg.gitTreeState=clean"
done

# build_group NAME MODULE_DIR LDFLAGS OUT=PKG...: build PKGs of the module in
# MODULE_DIR into $TP_BIN/OUT unless the stamp says they are up to date.
build_group() {
	local name="$1" dir="$2" ldflags="$3" stamp hash spec out pkg missing=0
	shift 3
	hash="$({
		go version
		echo "$ldflags" "$@"
		cd "$dir" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 | sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-16)"
	stamp="$TP_BIN/.stamp-$name"
	for spec in "$@"; do
		[ -x "$TP_BIN/${spec%%=*}" ] || missing=1
	done
	if [ "$missing" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
		return 0
	fi
	log "building $name (${*%%=*})"
	local tmp="$TP_BIN/.tmp-$name" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	for spec in "$@"; do
		out="${spec%%=*}" pkg="${spec#*=}"
		(cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$out" "$pkg") ||
			die "go build of $pkg failed (module $dir)"
	done
	for spec in "$@"; do
		mv -f "$tmp/${spec%%=*}" "$TP_BIN/"
	done
	rmdir "$tmp"
	echo "$hash" >"$stamp"
	log "built $name in $((SECONDS - start))s"
}

build_group images "$TP_CLUSTER_SRC/images" "-s -w" \
	pause=./pause netcheck=./netcheck
build_group etcd "$TP_CLUSTER_SRC/k8s" "-s -w" \
	etcd=go.etcd.io/etcd/server/v3
build_group kubernetes "$TP_CLUSTER_SRC/k8s" "$K8S_LDFLAGS" \
	kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
	kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
	kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
	kubelet=k8s.io/kubernetes/cmd/kubelet \
	kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
	kubectl=k8s.io/kubernetes/cmd/kubectl
build_group coredns "$TP_CLUSTER_SRC/coredns" "-s -w" \
	coredns=github.com/coredns/coredns
