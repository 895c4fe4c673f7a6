#!/usr/bin/env bash
# tp's main job on the embedded default, from a fresh machine: a local cluster,
# the example app, a connection, and a container joined to it that reaches the
# example by name while the host stays untouched. Run through `make demo`
# (which builds tp and the images and brings up the cluster first).
set -euo pipefail
cd "$(dirname "$0")/.."
export KUBECONFIG=${KUBECONFIG:-/var/lib/tp-cluster/kubeconfig}
TP=${TP:-bin/tp}
# The test bed builds kubectl with the cluster; use it so nothing else is needed.
kubectl() { "${KUBECTL:-.cache/cluster/bin/kubectl}" "$@"; }
NS=${DEMO_NAMESPACE:-demo}
TAG=$(bin/tp version -o json | sed -n 's/.*"client": "\(.*\)".*/\1/p' | tr -c 'A-Za-z0-9_.\n-' '-')

step() { printf '\n==> %s\n' "$*"; }

step "Loading images into the cluster"
hack/cluster/load.sh "tp:$TAG" tp-echo:dev tp-probe:dev tp-shop:dev tp-postgres:dev

step "Deploying the example app (examples/echo) in namespace $NS"
kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
kubectl -n "$NS" apply -f examples/echo/k8s/echo.yaml
kubectl -n "$NS" rollout status deployment/echo --timeout=120s

step "A plain container cannot reach the cluster (as on a laptop)"
if docker run --rm tp-probe:dev http -timeout 3s "http://echo.$NS/" >/dev/null 2>&1; then
  echo "unexpected: a plain container reached the cluster" >&2; exit 1
fi
echo "ok: no route from Docker's network to the cluster"

step "Traffic-manager of this build (tp helm upgrade installs it when missing)"
$TP helm upgrade --namespace tp

step "tp connect -n $NS"
$TP quit >/dev/null 2>&1 || true
$TP connect -n "$NS"
$TP status

step "A container joined to tp reaches the example by name"
docker run --rm --network container:tp tp-echo:dev get "http://echo/hello"
docker run --rm --network container:tp tp-echo:dev get "http://echo.$NS.svc.cluster.local/hello"

step "tp intercept echo: the cluster's requests are answered by a local container with the pod's environment"
docker rm -f tp-demo-local >/dev/null 2>&1 || true
$TP intercept echo -n "$NS" --port 8080:http \
  --docker-run -- -d --name tp-demo-local -e ECHO_COPY=local tp-echo:dev serve
# in_cluster runs the probe as a pod in the cluster and prints what it got.
in_cluster() {
  local pod="demo-client-$RANDOM"
  kubectl -n "$NS" run "$pod" --restart=Never --image=tp-probe:dev --image-pull-policy=Never -- "$@" >/dev/null
  kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$pod" --timeout=60s >/dev/null || true
  kubectl -n "$NS" logs "$pod"
  kubectl -n "$NS" delete pod "$pod" --wait=false >/dev/null
}
# tp intercept returned once every ready endpoint of the service routes to the
# local copy: the very first request from the cluster reaches it.
echo "A client in the cluster asks http://echo.$NS/hello:"
reply=$(in_cluster http "http://echo.$NS/hello")
echo "$reply"
case $reply in
  *'"copy":"local"'*) ;;
  *) echo "unexpected: the first request after \"Intercepted\" was not answered by the local copy" >&2; exit 1 ;;
esac
echo "The local copy got the pod's environment (ConfigMap, Secret, downward API):"
in_cluster http "http://echo.$NS/env?keys=GREETING,API_TOKEN,POD_NAME,TP_INTERCEPT_NAME"
$TP list -n "$NS"

step "tp leave echo: the cluster's copy answers again"
$TP leave echo -n "$NS"
docker rm -f tp-demo-local >/dev/null
in_cluster http "http://echo.$NS/hello"

step "tp compose: the shop example (examples/shop), half local and half in the cluster"
SHOP_NS=${DEMO_SHOP_NAMESPACE:-shop}
kubectl get namespace "$SHOP_NS" >/dev/null 2>&1 || kubectl create namespace "$SHOP_NS"
kubectl -n "$SHOP_NS" apply -f examples/shop/k8s/shop.yaml
for d in db api frontend; do kubectl -n "$SHOP_NS" rollout status "deployment/$d" --timeout=180s; done
NS=$SHOP_NS # in_cluster runs its probe there
echo "Before: the cluster's frontend gets the cluster's API:"
in_cluster http "http://frontend.$SHOP_NS/"
export SHOP_NAMESPACE=$SHOP_NS SHOP_API_PORT=${DEMO_SHOP_PORT:-8081}
shop() { $TP compose -f examples/shop/compose.yaml "$@"; }
shop config | head -20
shop up -d
echo "The cluster's frontend now gets the local API, which reads the cluster's PostgreSQL with the pod's Secret:"
in_cluster http "http://frontend.$SHOP_NS/"
echo "The API's port, published on the host:"
curl -s "http://127.0.0.1:$SHOP_API_PORT/orders"; echo
echo "The local API reaches the local mailer by its compose name, and the mailer the API:"
curl -s "http://127.0.0.1:$SHOP_API_PORT/mailer"; echo
docker exec shop-mailer-1 /shop get http://api:8080/healthz
echo "The worker (connect) reaches the cluster's frontend:"
sleep 3; docker logs --tail 2 shop-worker-1
shop down
echo "After down, the cluster's API answers its frontend again:"
in_cluster http "http://frontend.$SHOP_NS/"
$TP quit --name shop >/dev/null 2>&1 || true

step "Done. Disconnect with: $TP quit"
