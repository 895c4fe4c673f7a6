#!/usr/bin/env bash
# Proves that the test bed isolates Docker from the cluster the way a laptop
# is isolated from a remote cluster, and that the cluster itself still works:
#   - a plain `docker run` container (docker0) and one on a user-defined
#     network (br-*) cannot connect to a pod IP, a service IP, kube-dns
#     (10.96.0.10:53) nor the kubernetes service (10.96.0.1:443);
#   - they can connect to the API server on the host (Docker bridge gateway
#     and host.docker.internal, port 6443);
#   - a pod reaches another pod, services by IP and by DNS name.
# Exits non-zero with a message naming every failed check.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
[ -f "$TP_KUBECONFIG" ] || die "no $TP_KUBECONFIG: run hack/cluster/up.sh first"
kubectl_tp --request-timeout=10s get --raw /readyz >/dev/null 2>&1 || die "the API server does not answer: run hack/cluster/up.sh"

NS=tp-netcheck
NET=tp-netcheck
failures=()
passes=0

cleanup() {
	kubectl_tp delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
	docker network rm "$NET" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# expect OUTCOME DESCRIPTION COMMAND...: OUTCOME is "reach" or "blocked".
# Blocked means netcheck itself ran and its dial failed (exit 1), not that
# docker or kubectl failed to run it.
expect() {
	local outcome="$1" what="$2" out rc=0
	shift 2
	out="$("$@" 2>&1)" || rc=$?
	if { [ "$outcome" = reach ] && [ "$rc" = 0 ]; } ||
		{ [ "$outcome" = blocked ] && [ "$rc" = 1 ] && grep -q '^netcheck: dial' <<<"$out"; }; then
		if [ "$outcome" = blocked ]; then
			log "ok: $what blocked (${out##*: })"
		else
			log "ok: $what reached"
		fi
		passes=$((passes + 1))
	else
		log "FAIL: $what: want $outcome, got exit $rc: $(echo "$out" | tail -n 1)"
		failures+=("$what")
	fi
}

if [ "$(docker image inspect -f '{{index .Config.Labels "tp-cluster.hash"}}' "$NETCHECK_IMAGE" 2>/dev/null)" = "" ]; then
	die "Docker has no image $NETCHECK_IMAGE: run hack/cluster/up.sh"
fi

# A previous run's namespace may still be terminating.
kubectl_tp delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null ||
	die "namespace $NS from an earlier run is not gone after 120s"
kubectl_tp apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: $NS, labels: {app: netcheck}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: netcheck
    image: $NETCHECK_IMAGE
    imagePullPolicy: Never
    args: [serve, ":8080"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $NS}
spec:
  selector: {app: netcheck}
  ports: [{port: 80, targetPort: 8080}]
YAML
kubectl_tp -n "$NS" wait --for=condition=Ready pod/server --timeout=120s >/dev/null ||
	die "the netcheck pod did not become ready: $(kubectl_tp -n "$NS" describe pod server | tail -n 10)"

pod_ip="$(kubectl_tp -n "$NS" get pod server -o 'jsonpath={.status.podIP}')"
svc_ip="$(kubectl_tp -n "$NS" get service server -o 'jsonpath={.spec.clusterIP}')"
dns_pod_ip="$(kubectl_tp -n kube-system get pods -l k8s-app=kube-dns -o 'jsonpath={.items[0].status.podIP}')"
gateway="$(docker_gateway)"
log "pod $pod_ip, service $svc_ip, CoreDNS pod $dns_pod_ip, Docker gateway $gateway"

docker network create "$NET" >/dev/null
for network in bridge "$NET"; do
	run=(docker run --rm --network "$network" --add-host host.docker.internal:host-gateway "$NETCHECK_IMAGE")
	gw="$gateway"
	[ "$network" = bridge ] || gw="$(docker network inspect "$NET" -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')"
	expect blocked "docker ($network) -> pod $pod_ip:8080" "${run[@]}" dial "$pod_ip:8080" 3s
	expect blocked "docker ($network) -> service $svc_ip:80" "${run[@]}" dial "$svc_ip:80" 3s
	expect blocked "docker ($network) -> kube-dns $DNS_SERVICE_IP:53" "${run[@]}" dial "$DNS_SERVICE_IP:53" 3s
	expect blocked "docker ($network) -> CoreDNS pod $dns_pod_ip:53" "${run[@]}" dial "$dns_pod_ip:53" 3s
	expect blocked "docker ($network) -> kubernetes service $API_SERVICE_IP:443" "${run[@]}" dial "$API_SERVICE_IP:443" 3s
	expect reach "docker ($network) -> API server $gw:6443" "${run[@]}" dial "$gw:6443" 5s
	expect reach "docker ($network) -> API server host.docker.internal:6443" "${run[@]}" dial host.docker.internal:6443 5s
done

# The API server's certificate holds the names a container uses for it.
for server in "https://$gateway:6443" https://host.docker.internal:6443; do
	expect reach "docker: kubectl --server $server get node (TLS verified)" \
		docker run --rm --add-host host.docker.internal:host-gateway --entrypoint /kubectl \
		-v "$TP_BIN/kubectl:/kubectl:ro" -v "$TP_KUBECONFIG:/kubeconfig:ro" "$NETCHECK_IMAGE" \
		--kubeconfig /kubeconfig --server "$server" --request-timeout 10s get node "$NODE_NAME"
done

in_pod=(kubectl_tp -n "$NS" exec server -- /netcheck)
expect reach "pod -> pod $dns_pod_ip:53" "${in_pod[@]}" dial "$dns_pod_ip:53" 5s
expect reach "pod -> kube-dns $DNS_SERVICE_IP:53" "${in_pod[@]}" dial "$DNS_SERVICE_IP:53" 5s
expect reach "pod -> own service $svc_ip:80 (hairpin)" "${in_pod[@]}" dial "$svc_ip:80" 5s
expect reach "pod -> kubernetes service $API_SERVICE_IP:443" "${in_pod[@]}" dial "$API_SERVICE_IP:443" 5s
expect reach "pod resolves server.$NS.svc.$CLUSTER_DOMAIN" "${in_pod[@]}" resolve "server.$NS.svc.$CLUSTER_DOMAIN" 5s
expect reach "pod resolves kubernetes.default" "${in_pod[@]}" resolve kubernetes.default 5s
expect reach "host -> pod $pod_ip:8080" timeout 5 bash -c "exec 3<>/dev/tcp/$pod_ip/8080"

if [ "${#failures[@]}" -gt 0 ]; then
	die "isolation check failed (${#failures[@]} of $((passes + ${#failures[@]}))): ${failures[*]}"
fi
log "isolation check passed ($passes checks)"
