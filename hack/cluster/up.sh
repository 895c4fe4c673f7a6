#!/usr/bin/env bash
# Brings up (or repairs) tp's real single-node Kubernetes v1.32.0 test bed on
# this machine: containerd (its own instance, not Docker's), etcd 3.5,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# a bridge CNI and CoreDNS, plus iptables rules that keep Docker's networks
# away from pod and service addresses, as on a laptop.
#
# Idempotent: on a healthy cluster it checks and returns in seconds; after a
# reboot it restarts what is missing; on a fresh machine it does everything.
# The admin kubeconfig is written to /var/lib/tp-cluster/kubeconfig (context
# tp-local). hack/cluster/down.sh removes it all again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

require_root
require_tun

# Components whose configuration or certificates changed during this run;
# ensure_started restarts them.
CHANGED=" "

# write_conf PATH COMPONENT: write stdin to PATH when it differs from the
# current content, and mark COMPONENT for a restart.
write_conf() {
	local path="$1" component="${2:-}" tmp
	tmp="$(mktemp "$path.XXXXXX")"
	cat >"$tmp"
	if cmp -s "$tmp" "$path"; then
		rm -f "$tmp"
		return 0
	fi
	mv -f "$tmp" "$path"
	[ -n "$component" ] && CHANGED+="$component "
	return 0
}

# stamp_group NAME: the build.sh group that builds component NAME.
stamp_group() {
	case "$1" in
	etcd) echo etcd ;;
	kube*) echo kubernetes ;;
	*) echo none ;;
	esac
}

# ensure_started NAME BINARY ARGS...: start NAME unless it already runs the
# current binary with the same arguments and unchanged configuration.
ensure_started() {
	local name="$1" pid spec
	shift
	# The build stamp tells whether our binary changed (a new work tree
	# rebuilds identical binaries: no restart then); for containerd, a
	# package upgrade shows as a deleted executable.
	spec="$* $(cat "$TP_BIN/.stamp-$(stamp_group "$name")" 2>/dev/null || true)"
	pid="$(pid_of "$name")"
	if [ -n "$pid" ]; then
		if [ "$(cat "$TP_RUN/$name.spec" 2>/dev/null)" = "$spec" ] &&
			[[ "$CHANGED" != *" $name "* ]] &&
			{ [ "$name" != containerd ] || [[ "$(readlink "/proc/$pid/exe")" != *"(deleted)" ]]; }; then
			raise_nofile "$name"
			return 0
		fi
		log "restarting $name (binary, flags or configuration changed)"
		stop_pid "$name" "$pid"
	fi
	start_bg "$name" "$@"
	echo "$spec" >"$TP_RUN/$name.spec"
}

# http_ok HOST PORT PATH: plain HTTP GET answered with 200 (no curl needed).
http_ok() {
	(
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
		timeout 5 head -n 1 <&3 | grep -q ' 200 '
	) 2>/dev/null
}

# https_ok PORT PATH: anonymous HTTPS GET on 127.0.0.1 answered with 200
# (the components' self-signed serving certificates are not verified).
https_ok() {
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" |
		timeout 5 openssl s_client -quiet -connect "127.0.0.1:$1" 2>/dev/null | head -n 1 | grep -q ' 200 '
}

apiserver_ready() { [ "$(kubectl_tp --request-timeout=5s get --raw /readyz 2>/dev/null)" = ok ]; }

# ---------------------------------------------------------------- host setup

prepare_host() {
	if [ ! -d /proc/sys/net/bridge ]; then
		modprobe br_netfilter 2>/dev/null || true
		[ -d /proc/sys/net/bridge ] ||
			die "the br_netfilter kernel module is missing (/proc/sys/net/bridge): kube-proxy cannot see bridged pod traffic"
	fi
	local key
	for key in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
		[ "$(sysctl -n "$key")" = 1 ] || sysctl -qw "$key=1"
	done
	[ -x /usr/lib/cni/bridge ] || die "CNI plugins missing in /usr/lib/cni; run hack/install-deps.sh"
	mkdir -p "$TP_DATA" "$TP_PKI" "$TP_LOGS" "$TP_RUN" "$TP_CONF" "$TP_KUBELET_ROOT" \
		"$TP_DATA/cni/net.d" "$TP_DATA/cni/networks" "$TP_DATA/images"
	chmod 700 "$TP_DATA"
	lift_hidden_netns
}

# Fail early, before anything starts, when a port we need is held by a
# process that is not ours.
check_ports() {
	check_port etcd 2379
	check_port etcd 2380
	check_port kube-apiserver 6443
	check_port kube-controller-manager 10257
	check_port kube-scheduler 10259
	check_port kubelet 10248
	check_port kubelet 10250
	check_port kube-proxy 10249
	check_port kube-proxy 10256
	if [ -S "$CONTAINERD_SOCK" ] && ! running containerd &&
		timeout 5 ctr -a "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
		die "another containerd already serves $CONTAINERD_SOCK (not the test bed's); stop it first"
	fi
}

# ---------------------------------------------------------------------- PKI

# new_cert NAME SUBJECT USAGE [SANS]: key + certificate signed by the CA.
new_cert() {
	local name="$1" subject="$2" usage="$3" sans="${4:-}" ext
	ext="$(mktemp)"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		[ -n "$sans" ] && echo "subjectAltName=$sans"
	} >"$ext"
	new_key "$name"
	openssl req -new -key "$TP_PKI/$name.key" -subj "$subject" -out "$TP_PKI/$name.csr" 2>/dev/null
	openssl x509 -req -in "$TP_PKI/$name.csr" -CA "$TP_PKI/${5:-ca}.crt" -CAkey "$TP_PKI/${5:-ca}.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$ext" -out "$TP_PKI/$name.crt" 2>/dev/null
	rm -f "$ext" "$TP_PKI/$name.csr"
	chmod 600 "$TP_PKI/$name.key"
}

# new_key NAME: an ECDSA P-256 key (RSA keys take seconds each on a busy
# 2-core machine).
new_key() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TP_PKI/$1.key" 2>/dev/null
	chmod 600 "$TP_PKI/$1.key"
}

new_ca() {
	new_key "$1"
	openssl req -x509 -new -key "$TP_PKI/$1.key" -subj "/CN=$2" -days 3650 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$TP_PKI/$1.crt" 2>/dev/null
	chmod 600 "$TP_PKI/$1.key"
}

ensure_pki() {
	local sans
	if [ ! -f "$TP_PKI/ca.crt" ] || [ ! -f "$TP_PKI/ca.key" ]; then
		log "creating PKI in $TP_PKI"
		rm -f "$TP_PKI"/*
		new_ca ca tp-cluster-ca
	fi
	[ -f "$TP_PKI/front-proxy-ca.crt" ] || new_ca front-proxy-ca tp-cluster-front-proxy-ca
	# The API server's names: in-cluster service names and IP, loopback, this
	# machine and the Docker bridge gateway, so that a container reaches it as
	# host.docker.internal or 172.17.0.1.
	sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
	sans+=",DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:host.docker.internal,DNS:$NODE_NAME"
	sans+=",IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP,IP:172.17.0.1"
	[ "$DOCKER_GW" = 172.17.0.1 ] || sans+=",IP:$DOCKER_GW"
	if [ "$(cat "$TP_PKI/apiserver.sans" 2>/dev/null)" != "$sans" ] || [ ! -f "$TP_PKI/apiserver.crt" ]; then
		log "issuing the API server certificate for $sans"
		new_cert apiserver "/CN=kube-apiserver" serverAuth "$sans"
		echo "$sans" >"$TP_PKI/apiserver.sans"
		CHANGED+="kube-apiserver "
	fi
	[ -f "$TP_PKI/apiserver-kubelet-client.crt" ] ||
		new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	[ -f "$TP_PKI/front-proxy-client.crt" ] ||
		new_cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
	[ -f "$TP_PKI/admin.crt" ] || new_cert admin "/O=system:masters/CN=tp-admin" clientAuth
	[ -f "$TP_PKI/controller-manager.crt" ] ||
		new_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
	[ -f "$TP_PKI/scheduler.crt" ] || new_cert scheduler "/CN=system:kube-scheduler" clientAuth
	[ -f "$TP_PKI/kubelet.crt" ] || new_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
	[ -f "$TP_PKI/kube-proxy.crt" ] || new_cert kube-proxy "/CN=system:kube-proxy" clientAuth
	if [ ! -f "$TP_PKI/sa.key" ]; then
		new_key sa
		openssl pkey -in "$TP_PKI/sa.key" -pubout -out "$TP_PKI/sa.pub" 2>/dev/null
	fi
}

# kubeconfig CERT [SERVER] [CONTEXT]: a kubeconfig with the CA and the
# client certificate CERT embedded.
kubeconfig() {
	local cert="$1" server="${2:-https://127.0.0.1:6443}" context="${3:-$CONTEXT_NAME}"
	cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $context
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$TP_PKI/ca.crt")
users:
- name: $context
  user:
    client-certificate-data: $(base64 -w0 "$TP_PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$TP_PKI/$cert.key")
contexts:
- name: $context
  context:
    cluster: $context
    user: $context
current-context: $context
EOF
}

write_kubeconfigs() {
	kubeconfig admin | write_conf "$TP_KUBECONFIG"
	chmod 600 "$TP_KUBECONFIG"
	kubeconfig controller-manager | write_conf "$TP_CONF/controller-manager.kubeconfig" kube-controller-manager
	kubeconfig scheduler | write_conf "$TP_CONF/scheduler.kubeconfig" kube-scheduler
	kubeconfig kubelet | write_conf "$TP_CONF/kubelet.kubeconfig" kubelet
	kubeconfig kube-proxy | write_conf "$TP_CONF/kube-proxy.kubeconfig" kube-proxy
	# Static token for tests of exec credential plugins (user exec-user).
	echo "$EXEC_TOKEN,$EXEC_USER,$EXEC_USER,\"system:masters\"" |
		write_conf "$TP_CONF/tokens.csv" kube-apiserver
	chmod 600 "$TP_CONF"/*.kubeconfig "$TP_CONF/tokens.csv"
}

# --------------------------------------------------------------- containerd

start_containerd() {
	write_conf "$TP_CONF/containerd.toml" containerd <<EOF
# The test bed's own containerd; Docker runs its own under /var/run/docker.
version = 2
root = "$TP_DATA/containerd"
state = "$TP_DATA/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$TP_DATA/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE every sandbox fails otherwise with "runc create
  # failed: can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$TP_DATA/cni/net.d"
  # Per-registry hosts.toml files, read at each pull (no restart when they
  # change): the test bed's registry (hack/registry.sh) below.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$TP_REGISTRY_HOSTS"
EOF
	# The test bed's registry (hack/registry.sh: Debian's docker-registry on
	# $TP_REGISTRY, plain HTTP), for images pushed with `make image-push
	# REGISTRY=$TP_REGISTRY`. No restart of containerd when this changes.
	mkdir -p "$TP_REGISTRY_HOSTS/$TP_REGISTRY"
	write_conf "$TP_REGISTRY_HOSTS/$TP_REGISTRY/hosts.toml" <<EOF
# The test bed's registry (hack/registry.sh), plain HTTP on 127.0.0.1 only.
server = "http://$TP_REGISTRY"

[host."http://$TP_REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
	# A socket hidden by install-deps.sh while dockerd started (interrupted run).
	[ -S "$CONTAINERD_SOCK.hidden-from-dockerd" ] && [ ! -e "$CONTAINERD_SOCK" ] &&
		mv "$CONTAINERD_SOCK.hidden-from-dockerd" "$CONTAINERD_SOCK"
	if ! running containerd; then
		rm -f "$CONTAINERD_SOCK" "$CONTAINERD_SOCK.ttrpc"
	fi
	ensure_started containerd /usr/bin/containerd --config "$TP_CONF/containerd.toml"
	wait_for containerd 60 timeout 5 ctr -a "$CONTAINERD_SOCK" version
}

ctr_k8s() { timeout 120 ctr -a "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# ensure_image REF BINARY: a FROM-scratch image holding BINARY as its
# entrypoint, built with Docker and imported into containerd's k8s.io
# namespace (nothing can be pulled on this machine).
ensure_image() {
	local ref="$1" bin="$2" name hash ctx stamp out
	name="$(basename "$bin")"
	hash="$(sha256sum "$bin" | cut -c1-16)"
	stamp="$TP_DATA/images/$name.imported"
	if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] &&
		ctr_k8s images ls -q | grep -qE "^(docker\.io/(library/)?)?$ref\$"; then
		return 0
	fi
	if [ "$(docker image inspect -f '{{index .Config.Labels "tp-cluster.hash"}}' "$ref" 2>/dev/null)" != "$hash" ]; then
		log "building image $ref"
		ctx="$(mktemp -d)"
		cp "$bin" "$ctx/$name"
		printf 'FROM scratch\nCOPY %s /%s\nLABEL tp-cluster.hash=%s\nENTRYPOINT ["/%s"]\n' \
			"$name" "$name" "$hash" "$name" >"$ctx/Dockerfile"
		if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$ref" "$ctx" 2>&1)"; then
			echo "$out" >&2
			die "docker build of $ref failed"
		fi
		rm -rf "$ctx"
	fi
	log "importing $ref into containerd"
	docker save "$ref" | ctr_k8s images import - >/dev/null || die "importing $ref into containerd failed"
	echo "$hash" >"$stamp"
}

# ---------------------------------------------------------- control plane

start_etcd() {
	ensure_started etcd "$TP_BIN/etcd" \
		--name tp --data-dir "$TP_DATA/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster tp=http://127.0.0.1:2380 --log-level warn
	wait_for etcd 60 http_ok 127.0.0.1 2379 /health
}

start_apiserver() {
	ensure_started kube-apiserver "$TP_BIN/kube-apiserver" \
		--advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
		--etcd-servers=http://127.0.0.1:2379 \
		--client-ca-file="$TP_PKI/ca.crt" \
		--tls-cert-file="$TP_PKI/apiserver.crt" --tls-private-key-file="$TP_PKI/apiserver.key" \
		--kubelet-client-certificate="$TP_PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$TP_PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP \
		--service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
		--service-account-key-file="$TP_PKI/sa.pub" \
		--service-account-signing-key-file="$TP_PKI/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction \
		--allow-privileged=true \
		--token-auth-file="$TP_CONF/tokens.csv" \
		--requestheader-client-ca-file="$TP_PKI/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-username-headers=X-Remote-User \
		--proxy-client-cert-file="$TP_PKI/front-proxy-client.crt" \
		--proxy-client-key-file="$TP_PKI/front-proxy-client.key"
	wait_for kube-apiserver 180 apiserver_ready
}

start_controller_manager() {
	local kc="$TP_CONF/controller-manager.kubeconfig"
	ensure_started kube-controller-manager "$TP_BIN/kube-controller-manager" \
		--kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--client-ca-file="$TP_PKI/ca.crt" --requestheader-client-ca-file="$TP_PKI/front-proxy-ca.crt" \
		--root-ca-file="$TP_PKI/ca.crt" \
		--service-account-private-key-file="$TP_PKI/sa.key" --use-service-account-credentials=true \
		--cluster-signing-cert-file="$TP_PKI/ca.crt" --cluster-signing-key-file="$TP_PKI/ca.key" \
		--allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--controllers='*,bootstrapsigner,tokencleaner'
	wait_for kube-controller-manager 120 https_ok 10257 /healthz
}

start_scheduler() {
	local kc="$TP_CONF/scheduler.kubeconfig"
	ensure_started kube-scheduler "$TP_BIN/kube-scheduler" \
		--kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
		--bind-address=127.0.0.1 --leader-elect=false
	wait_for kube-scheduler 120 https_ok 10259 /healthz
}

# ------------------------------------------------------------------- node

write_cni_config() {
	# host-local keeps its leases under the test bed's directory, not /var/lib/cni.
	write_conf "$TP_DATA/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$TP_DATA/cni/networks",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

node_ready() {
	[ "$(kubectl_tp --request-timeout=5s get node "$NODE_NAME" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

start_kubelet() {
	write_conf "$TP_CONF/kubelet.yaml" kubelet <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$TP_PKI/ca.crt"}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: ["$DNS_SERVICE_IP"]
clusterDomain: $CLUSTER_DOMAIN
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
resolvConf: /etc/resolv.conf
podLogsDir: $TP_DATA/pod-logs
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
serializeImagePulls: false
# Images here are imported, never pulled: never garbage-collect them, and do
# not evict pods because other builds fill the shared disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
EOF
	ensure_started kubelet "$TP_BIN/kubelet" \
		--config="$TP_CONF/kubelet.yaml" --kubeconfig="$TP_CONF/kubelet.kubeconfig" \
		--root-dir="$TP_KUBELET_ROOT" --cert-dir="$TP_KUBELET_ROOT/pki" \
		--hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
	wait_for kubelet 120 http_ok 127.0.0.1 10248 /healthz
	wait_for kubelet 120 node_ready
}

start_kube_proxy() {
	write_conf "$TP_CONF/kube-proxy.yaml" kube-proxy <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: "$TP_CONF/kube-proxy.kubeconfig"
mode: iptables
clusterCIDR: "$POD_CIDR"
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
	ensure_started kube-proxy "$TP_BIN/kube-proxy" --config="$TP_CONF/kube-proxy.yaml"
	wait_for kube-proxy 120 http_ok 127.0.0.1 10256 /healthz
	# Its first sync puts KUBE-FORWARD into FORWARD; ours must come first.
	wait_for kube-proxy 60 kube_forward_present
}

# ------------------------------------------------------------------ iptables

kube_forward_present() { iptables -w -S FORWARD | grep -q -- '-j KUBE-FORWARD'; }

# ensure_first CHAIN TARGET: CHAIN's first rule jumps to TARGET.
ensure_first() {
	local chain="$1" target="$2"
	[ "$(iptables -w -S "$chain" 2>/dev/null | sed -n 2p)" = "-A $chain -j $target" ] && return 0
	while iptables -w -D "$chain" -j "$target" 2>/dev/null; do :; done
	iptables -w -I "$chain" 1 -j "$target"
}

# ensure_chain CHAIN RULE...: CHAIN (filter table) holds exactly RULEs.
ensure_chain() {
	local chain="$1" want have rule
	shift
	want="-N $chain"
	for rule in "$@"; do want+=$'\n'"-A $chain $rule"; done
	have="$(iptables -w -S "$chain" 2>/dev/null || true)"
	[ "$have" = "$want" ] && return 0
	iptables -w -N "$chain" 2>/dev/null || iptables -w -F "$chain"
	for rule in "$@"; do
		# shellcheck disable=SC2086
		iptables -w -A "$chain" $rule
	done
}

ensure_iptables() {
	# Pods talk to each other and to services through the CNI bridge; Docker
	# set the FORWARD policy to DROP.
	ensure_chain TP-CLUSTER-FORWARD "-i $CNI_BRIDGE -j ACCEPT" "-o $CNI_BRIDGE -j ACCEPT"
	iptables -w -C FORWARD -j TP-CLUSTER-FORWARD 2>/dev/null || iptables -w -A FORWARD -j TP-CLUSTER-FORWARD

	# Isolation like a laptop: nothing on Docker's networks (docker0, br-*)
	# reaches a pod or service address directly, also not after kube-proxy's
	# DNAT (conntrack's original destination) nor when a service's endpoint is
	# this host (INPUT). The API server port on the host stays reachable.
	local rules=() dev cidr
	for dev in docker0 br-+; do
		for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
			rules+=("-i $dev -d $cidr -j REJECT --reject-with icmp-net-unreachable")
			rules+=("-i $dev -m conntrack --ctorigdst $cidr -j REJECT --reject-with icmp-net-unreachable")
		done
	done
	ensure_chain TP-ISOLATION "${rules[@]}"
	ensure_first FORWARD TP-ISOLATION
	ensure_first INPUT TP-ISOLATION
	# Docker re-inserts its own jumps at the top of FORWARD when it restarts,
	# but always evaluates DOCKER-USER first.
	iptables -w -S DOCKER-USER >/dev/null 2>&1 && ensure_first DOCKER-USER TP-ISOLATION
	return 0
}

# ------------------------------------------------------------------ CoreDNS

coredns_manifest() {
	cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        prometheus :9153
        forward . /etc/resolv.conf {
            max_concurrent 1000
        }
        cache 30
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations:
      - {key: CriticalAddonsOnly, operator: Exists}
      - {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        resources:
          requests: {cpu: 50m, memory: 70Mi}
          limits: {memory: 170Mi}
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 60
          timeoutSeconds: 5
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $DNS_SERVICE_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
EOF
}

# coredns_ready: the Deployment says so and kube-dns answers on TCP (the
# status alone may be stale right after the kubelet restarted).
coredns_ready() {
	[ "$(kubectl_tp --request-timeout=5s -n kube-system get deployment coredns \
		-o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" = 1 ] &&
		timeout 2 bash -c "exec 3<>/dev/tcp/$DNS_SERVICE_IP/53" 2>/dev/null
}

ensure_coredns() {
	local manifest="$TP_CONF/coredns.yaml" applied="$TP_RUN/coredns.applied"
	coredns_manifest | write_conf "$manifest"
	# Apply when the manifest changed or an object is missing (an unchanged
	# apply would change nothing either, but costs a second).
	if ! cmp -s "$manifest" "$applied" || ! kubectl_tp -n kube-system get deployment/coredns service/kube-dns >/dev/null 2>&1; then
		log "deploying CoreDNS"
		kubectl_tp apply -f "$manifest" >/dev/null || die "kubectl apply of $manifest failed"
		cp "$manifest" "$applied"
	fi
	local deadline=$((SECONDS + 180))
	until coredns_ready; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			kubectl_tp -n kube-system get pods -l k8s-app=kube-dns -o wide >&2 || true
			kubectl_tp -n kube-system describe pods -l k8s-app=kube-dns 2>&1 | tail -n 20 >&2 || true
			tail_log kubelet
			die "CoreDNS not ready within 180s"
		fi
		sleep 1
	done
}

# -------------------------------------------------------------------- main

main() {
	start=$SECONDS
	lock_cluster
	"$TP_ROOT/hack/install-deps.sh" 9>&- # dockerd must not inherit the lock
	check_ports
	[ "$(nofile_limit)" = "$TP_NOFILE" ] ||
		log "open files are limited to $(nofile_limit) here (the hard limit; raising it needs CAP_SYS_RESOURCE): containerd serves about $(($(nofile_limit) / 4)) port-forwarded connections at once"
	"$TP_CLUSTER_SRC/build.sh"

	NODE_IP="$(node_ip)"
	DOCKER_GW="$(docker_gateway)"
	prepare_host
	ensure_pki
	write_kubeconfigs
	write_cni_config

	start_containerd
	ensure_image "$PAUSE_IMAGE" "$TP_BIN/pause"
	ensure_image "$COREDNS_IMAGE" "$TP_BIN/coredns"
	ensure_image "$NETCHECK_IMAGE" "$TP_BIN/netcheck"

	start_etcd
	start_apiserver
	start_controller_manager
	start_scheduler
	ensure_iptables
	start_kubelet
	start_kube_proxy
	ensure_iptables
	ensure_coredns

	log "cluster up in $((SECONDS - start))s: node $NODE_NAME ($NODE_IP), Kubernetes $K8S_VERSION"
	log "kubeconfig: $TP_KUBECONFIG (context $CONTEXT_NAME); kubectl: $TP_BIN/kubectl"
}

# Sourcing this file (for debugging) defines the functions only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	main "$@"
fi
