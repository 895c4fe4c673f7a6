{{/*
Name of the traffic-manager's objects (Deployment, Service, ServiceAccount,
namespaced Roles). Fixed: clients find the manager by this name.
*/}}
{{- define "tp.name" -}}
traffic-manager
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): unique per
release namespace so that managers in several namespaces can coexist.
*/}}
{{- define "tp.clusterName" -}}
{{- printf "traffic-manager-%s" .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
gRPC port of the manager (container, probes and Service).
*/}}
{{- define "tp.grpcPort" -}}
8081
{{- end }}

{{/*
Version label value: label values allow no "+" and at most 63 characters.
*/}}
{{- define "tp.version" -}}
{{- .Chart.AppVersion | replace "+" "_" | trunc 63 | trimSuffix "-" | trimSuffix "_" | trimSuffix "." }}
{{- end }}

{{/*
Selector labels: stable across upgrades (Deployment selectors are immutable).
*/}}
{{- define "tp.selectorLabels" -}}
app: traffic-manager
app.kubernetes.io/name: traffic-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "tp.labels" -}}
{{ include "tp.selectorLabels" . }}
app.kubernetes.io/version: {{ include "tp.version" . | quote }}
app.kubernetes.io/component: traffic-manager
app.kubernetes.io/part-of: tp
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Image reference: [registry/]name:tag, tag defaulting to the appVersion.
*/}}
{{- define "tp.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if .Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .Values.image.registry) .Values.image.name $tag }}
{{- else -}}
{{ printf "%s:%s" .Values.image.name $tag }}
{{- end }}
{{- end }}

{{/*
Managed namespaces when rbac.namespaced is true; fails the render when the
list is empty. Returns them comma-separated.
*/}}
{{- define "tp.managedNamespaces" -}}
{{- if not .Values.rbac.managedNamespaces -}}
{{- fail "rbac.managedNamespaces must list at least one namespace when rbac.namespaced is true" -}}
{{- end -}}
{{- join "," (uniq .Values.rbac.managedNamespaces) -}}
{{- end }}

{{/*
RBAC rules on namespaced resources: cluster-wide in a ClusterRole by default,
or in a Role per managed namespace when rbac.namespaced is true. Exactly the
calls of the manager's code (manager/): keep both in step, charts/chart_test.go
checks the rendered rules.
*/}}
{{- define "tp.rules.namespaced" -}}
# Which services select a workload (intercepts, ListWorkloads, the webhook's
# port plan); the service CIDR when the API server names none.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list"]
# A workload's pods (pod CIDRs without node access or when nodes carry none);
# a bare ReplicaSet's or an OnDelete StatefulSet's pods are replaced one at a
# time so that they gain or lose the agent, and so is a pod admitted without
# its agent while the webhook was down; an agent's own pod (get) when it
# authenticates.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "delete"]
# Intercepts label the pod template (the webhook then injects the agent);
# uninstalling removes the label.
- apiGroups: ["apps"]
  resources: ["deployments", "replicasets", "statefulsets"]
  verbs: ["get", "list", "patch"]
# CreateIntercept returns once every ready endpoint of the intercepted
# service is a pod whose agent routes the intercept.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
RBAC rules on cluster-scoped resources (always in a ClusterRole). With
rbac.readNodes=false the manager reads nothing cluster-wide but the service
ranges (ServiceCIDRs).
*/}}
{{- define "tp.rules.clusterScoped" -}}
{{- if .Values.rbac.readNodes }}
# Nodes: pod CIDRs to route (watched: a node added later is routed), and the
# node addresses the tunnel's dial policy refuses (listed every 30 s).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end }}
# ServiceCIDRs (where the cluster serves networking.k8s.io/v1): the service
# ranges to route, watched. They name address ranges only.
- apiGroups: ["networking.k8s.io"]
  resources: ["servicecidrs"]
  verbs: ["list", "watch"]
# Traffic-agents authenticate with their pod's ServiceAccount token (audience
# tp), verified by a TokenReview (then the pod is checked with get pods).
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
{{- /* No access to mutatingwebhookconfigurations: the chart installs the
agent-injection webhook (webhook.yaml) with its certificate. */}}
{{- end }}

{{/*
Webhook port of the manager container (TLS; the Service maps 443 to it).
*/}}
{{- define "tp.webhookPort" -}}
8443
{{- end }}

{{- /* The kubelet's probes (plain HTTP, manager.HealthPort). */}}
{{- define "tp.healthPort" -}}
8083
{{- end }}

{{/*
Name of the Secret holding the webhook's serving certificate.
*/}}
{{- define "tp.webhookSecret" -}}
traffic-manager-webhook-tls
{{- end }}

{{/*
Name of the Secret holding the CA (ca.crt, ca.key) that signs the manager's
serving certificate. Not mounted anywhere.
*/}}
{{- define "tp.caSecret" -}}
traffic-manager-ca
{{- end }}

{{/*
TLS of the manager: a CA and a serving certificate for the manager's Service,
used by the agent-injection webhook (port 8443) and the agent port (8082).
Computed once per render (cached in the root context, so pass $) and shared
by the Secrets, the webhooks' caBundle and the Deployment's checksum
annotation.

Both are kept across upgrades, read back from their Secrets with lookup, so
that an upgrade with unchanged values renders the same objects and restarts
nothing:
- the CA (Secret tp.caSecret) always: the traffic-agents carry it in their
  pod spec;
- the serving certificate (Secret tp.webhookSecret) while the annotations the
  chart wrote next to it (tp.certAnnotations) still hold: it is the one they
  describe (tp.run/cert-sha256), for the same DNS names (tp.run/cert-names),
  signed by the kept CA (tp.run/cert-ca-sha256), and valid for more than 30
  days (tp.run/cert-not-after). Otherwise a new one is signed, and the
  checksum annotation restarts the manager.
A render without a cluster (helm template) generates both anew. Returns
YAML: ca, caKey, cert, key (PEM), names, caSha256, notAfter.
*/}}
{{- define "tp.webhookTLS" -}}
{{- if not (hasKey . "tpWebhookTLS") -}}
{{- $name := include "tp.name" . -}}
{{- $svc := printf "%s.%s.svc" $name .Release.Namespace -}}
{{- $dnsNames := list $svc (printf "%s.cluster.local" $svc) (printf "%s.%s" $name .Release.Namespace) $name -}}
{{- $names := join "," $dnsNames -}}
{{- $oldCA := lookup "v1" "Secret" .Release.Namespace (include "tp.caSecret" .) -}}
{{- $ca := "" -}}
{{- if and $oldCA $oldCA.data (index $oldCA.data "ca.crt") (index $oldCA.data "ca.key") -}}
{{- $ca = buildCustomCert (index $oldCA.data "ca.crt") (index $oldCA.data "ca.key") -}}
{{- else -}}
{{- $ca = genCA (printf "tp-webhook-ca.%s" .Release.Namespace) 3650 -}}
{{- end -}}
{{- $caSum := $ca.Cert | sha256sum -}}
{{- $tls := dict "ca" $ca.Cert "caKey" $ca.Key "names" $names "caSha256" $caSum -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "tp.webhookSecret" .) -}}
{{- $keep := false -}}
{{- if and $old $old.data $old.metadata.annotations (index $old.data "tls.crt") (index $old.data "tls.key") -}}
{{- $ann := $old.metadata.annotations -}}
{{- $cert := index $old.data "tls.crt" | b64dec -}}
{{- $notAfter := index $ann "tp.run/cert-not-after" | default "" -}}
{{- if and $notAfter (eq (index $ann "tp.run/cert-sha256" | default "") ($cert | sha256sum)) (eq (index $ann "tp.run/cert-names" | default "") $names) (eq (index $ann "tp.run/cert-ca-sha256" | default "") $caSum) -}}
{{- $renewAt := (toDate "2006-01-02T15:04:05Z07:00" $notAfter).Unix | int64 -}}
{{- if lt (add (now).Unix 2592000) $renewAt -}}
{{- $keep = true -}}
{{- $_ := set $tls "cert" $cert -}}
{{- $_ := set $tls "key" (index $old.data "tls.key" | b64dec) -}}
{{- $_ := set $tls "notAfter" $notAfter -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $keep -}}
{{- /* Recorded before signing: never later than the certificate's own NotAfter. */ -}}
{{- $_ := set $tls "notAfter" (dateInZone "2006-01-02T15:04:05Z07:00" (now | dateModify "+87600h") "UTC") -}}
{{- $cert := genSignedCert $svc nil $dnsNames 3650 $ca -}}
{{- $_ := set $tls "cert" $cert.Cert -}}
{{- $_ := set $tls "key" $cert.Key -}}
{{- end -}}
{{- $_ := set . "tpWebhookTLS" $tls -}}
{{- end -}}
{{- toYaml (get . "tpWebhookTLS") -}}
{{- end }}

{{/*
Annotations of the serving certificate's Secret: what tp.webhookTLS checks
before it keeps the certificate. Pass the result of tp.webhookTLS.
*/}}
{{- define "tp.certAnnotations" -}}
tp.run/cert-sha256: {{ .cert | sha256sum | quote }}
tp.run/cert-names: {{ .names | quote }}
tp.run/cert-ca-sha256: {{ .caSha256 | quote }}
tp.run/cert-not-after: {{ .notAfter | quote }}
{{- end }}

{{/*
Agent port of the manager container and Service (gRPC, TLS with the
certificate above, agents authenticated by their pod's token).
*/}}
{{- define "tp.agentPort" -}}
8082
{{- end }}
