{{/* Chart name, overridable. */}}
{{- define "push0.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already holds the chart name. */}}
{{- define "push0.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "push0.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of one component's objects. Call with (dict "root" $ "component" "ingest").
Truncated to leave room for the pod-template and pod hash suffixes.
*/}}
{{- define "push0.componentName" -}}
{{- printf "%s-%s" (include "push0.fullname" .root) .component | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. Call with (dict "root" $ "component" "x"). */}}
{{- define "push0.labels" -}}
helm.sh/chart: {{ include "push0.chart" .root }}
{{ include "push0.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: push0
{{- end }}

{{/* Selector labels: immutable once a Deployment exists. */}}
{{- define "push0.selectorLabels" -}}
app.kubernetes.io/name: {{ include "push0.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Every Deployment's component, as a JSON list: the three core services, the reporter when
enabled, then one gateway-<team> per team. Read with
(include "push0.components" . | fromJsonArray).
*/}}
{{- define "push0.components" -}}
{{- $components := list "ingest" "scheduler" "aggregator" }}
{{- if .Values.reporter.enabled }}
{{- $components = append $components "reporter" }}
{{- end }}
{{- range .Values.teams }}
{{- $components = append $components (printf "gateway-%s" .name) }}
{{- end }}
{{- toJson $components }}
{{- end }}

{{/*
Prometheus job name of a component's targets: push0-<binary without its push0- prefix>, the
names deploy/prometheus/alerts.yml and the dashboard expect (every team's gateways share
push0-prover-gateway). The metrics Services carry it as the push0.io/scrape-job label, which
the ServiceMonitor names as its jobLabel. Call with the component name.
*/}}
{{- define "push0.scrapeJob" -}}
{{- if hasPrefix "gateway-" . }}push0-prover-gateway{{ else }}{{ printf "push0-%s" . }}{{ end }}
{{- end }}

{{/*
A team's KEDA settings, as JSON: .Values.keda with the team's own keda values over it.
Call with (dict "root" $ "team" $team); read with fromJson.
*/}}
{{- define "push0.teamKeda" -}}
{{- toJson (mergeOverwrite (deepCopy .root.Values.keda) (deepCopy (default (dict) .team.keda))) }}
{{- end }}

{{- define "push0.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "push0.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference; call with (dict "root" $ "image" $override) where $override may be empty. */}}
{{- define "push0.image" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (default (dict) .image) }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "push0.imagePullPolicy" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (default (dict) .image) }}
{{- $img.pullPolicy }}
{{- end }}

{{/*
Full name of the bundled NATS chart, mirroring its own naming: fullnameOverride, else the
release name (when it contains the chart name) or "<release>-<nameOverride|nats>".
*/}}
{{- define "push0.natsFullname" -}}
{{- $nats := .Values.nats }}
{{- if $nats.fullnameOverride }}
{{- $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Service name of the bundled NATS chart: its service.name, else its full name. */}}
{{- define "push0.natsServiceName" -}}
{{- $nats := .Values.nats }}
{{- if and $nats.service $nats.service.name }}
{{- $nats.service.name }}
{{- else }}
{{- include "push0.natsFullname" . }}
{{- end }}
{{- end }}

{{/*
Monitoring URLs the scheduler reads JetStream storage from (/jsz), comma-separated, or empty:
scheduler.natsMonitorUrls when set; else, with the bundled NATS, one per server of its
StatefulSet through its headless Service, as the nats chart names them (statefulSet.name,
headlessService.name, config.cluster.replicas when clustered, config.monitor.port). None when
its monitoring is off or served over TLS.
*/}}
{{- define "push0.natsMonitorUrls" -}}
{{- if .Values.scheduler.natsMonitorUrls }}
{{- join "," .Values.scheduler.natsMonitorUrls }}
{{- else if .Values.nats.enabled }}
{{- $nats := .Values.nats }}
{{- $monitor := dig "config" "monitor" (dict) $nats }}
{{- if and (dig "enabled" true $monitor) (not (dig "tls" "enabled" false $monitor)) }}
{{- $full := include "push0.natsFullname" . }}
{{- $sts := dig "statefulSet" "name" "" $nats | default $full }}
{{- $headless := dig "headlessService" "name" "" $nats | default (printf "%s-headless" $full) }}
{{- $replicas := 1 }}
{{- if dig "config" "cluster" "enabled" false $nats }}
{{- $replicas = int (dig "config" "cluster" "replicas" 3 $nats) }}
{{- end }}
{{- $port := int (dig "port" 8222 $monitor) }}
{{- $urls := list }}
{{- range $i := until $replicas }}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:%d" $sts $i $headless $.Release.Namespace $port) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}
{{- end }}

{{/*
NATS URL(s) the services connect to: the bundled server (tls:// with tls.enabled), or natsUrl.
With the bundled server, push0's TLS (tls.enabled) and the server's (nats.config.nats.tls) must
be on together: a client without TLS cannot talk to a server that requires it, and a tls://
client refuses a server without it.
*/}}
{{- define "push0.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $serverTls := dig "config" "nats" "tls" (dict) .Values.nats }}
{{- if and .Values.tls.enabled (not (and (dig "enabled" false $serverTls) (dig "secretName" "" $serverTls))) }}
{{- fail "tls.enabled=true with the bundled NATS needs its TLS too: nats.config.nats.tls.enabled=true and nats.config.nats.tls.secretName (values.yaml, above nats)" }}
{{- end }}
{{- if and (dig "enabled" false $serverTls) (not .Values.tls.enabled) }}
{{- fail "nats.config.nats.tls.enabled=true needs tls.enabled=true and tls.secretName: the services would connect without TLS" }}
{{- end }}
{{- printf "%s://%s.%s.svc:4222" (ternary "tls" "nats" .Values.tls.enabled) (include "push0.natsServiceName" .) .Release.Namespace }}
{{- else }}
{{- required "natsUrl is required when nats.enabled=false" .Values.natsUrl }}
{{- end }}
{{- end }}

{{/* Environment common to every service container. */}}
{{- define "push0.commonEnv" -}}
- name: PUSH0_NATS_URL
  value: {{ include "push0.natsUrl" . | quote }}
- name: PUSH0_PREFIX
  value: {{ .Values.prefix | quote }}
- name: PUSH0_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- name: PUSH0_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: PUSH0_REPLICAS
  value: {{ .Values.topology.replicas | quote }}
- name: PUSH0_TOPOLOGY_WAIT
  value: {{ .Values.topology.serviceWait | quote }}
- name: PUSH0_TRACES
  value: {{ .Values.traces | quote }}
{{- with include "push0.tlsEnv" . }}
{{ . }}
{{- end }}
{{- end }}

{{/*
Client TLS of every push0 container (tls.enabled): the Secret tls.secretName mounted read-only
at /etc/push0/tls (push0.tlsVolumeMount, push0.tlsVolume), and PUSH0_TLS_CA, PUSH0_TLS_CERT and
PUSH0_TLS_KEY naming its files: the CA that signed the server's certificate, and the client
certificate and key a server with `verify: true` asks for. Each renders nothing while
tls.enabled is false.
*/}}
{{- define "push0.tlsEnv" -}}
{{- if .Values.tls.enabled -}}
- name: PUSH0_TLS_CA
  value: {{ printf "/etc/push0/tls/%s" .Values.tls.caKey | quote }}
- name: PUSH0_TLS_CERT
  value: {{ printf "/etc/push0/tls/%s" .Values.tls.certKey | quote }}
- name: PUSH0_TLS_KEY
  value: {{ printf "/etc/push0/tls/%s" .Values.tls.keyKey | quote }}
{{- end }}
{{- end }}

{{- define "push0.tlsVolumeMount" -}}
{{- if .Values.tls.enabled -}}
- name: nats-tls
  mountPath: /etc/push0/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Only the three keys are projected: a Secret lacking one fails the pod's start, by name. */}}
{{- define "push0.tlsVolume" -}}
{{- if .Values.tls.enabled -}}
- name: nats-tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled=true" .Values.tls.secretName | quote }}
    items:
      {{- range $key := uniq (list .Values.tls.caKey .Values.tls.certKey .Values.tls.keyKey) }}
      - key: {{ $key | quote }}
        path: {{ $key | quote }}
      {{- end }}
{{- end }}
{{- end }}

{{/*
Credentials of one push0 container (auth.enabled): the seed file `<identity>.nk` of Secret
auth.secretName (made from the folder `push0 auth --keys` writes) mounted read-only at
/etc/push0/creds, only that one key per pod, and PUSH0_NATS_CREDS naming it. Identities:
admin (the topology Job), ingest, scheduler, aggregator, reporter, team-<name> (a team's
gateways). Each renders nothing while auth.enabled is false.
*/}}
{{- define "push0.credsEnv" -}}
{{- if .root.Values.auth.enabled -}}
- name: PUSH0_NATS_CREDS
  value: {{ printf "/etc/push0/creds/%s.nk" .identity | quote }}
{{- end }}
{{- end }}

{{- define "push0.credsVolumeMount" -}}
{{- if .root.Values.auth.enabled -}}
- name: nats-creds
  mountPath: /etc/push0/creds
  readOnly: true
{{- end }}
{{- end }}

{{- define "push0.credsVolume" -}}
{{- if .root.Values.auth.enabled -}}
- name: nats-creds
  secret:
    secretName: {{ required "auth.secretName is required when auth.enabled=true" .root.Values.auth.secretName | quote }}
    items:
      - key: {{ printf "%s.nk" .identity | quote }}
        path: {{ printf "%s.nk" .identity | quote }}
{{- end }}
{{- end }}

{{/*
OpenTelemetry environment of a service container, as a YAML list (empty when there is none):
the sampler whenever values set one (it also governs spans recorded with `traces` alone), and
with otlp.endpoint the OTLP exporter, its headers from a Secret, and resource attributes naming
the namespace, the pod and, for a gateway, its team. POD_NAME comes first: Kubernetes expands
$(POD_NAME) only from variables listed before. Call with (dict "root" $ "team" $team.name),
team empty for the core services.
*/}}
{{- define "push0.otlpEnv" -}}
{{- $otlp := .root.Values.otlp }}
{{- $env := list }}
{{- with $otlp.sampler }}
{{- $env = append $env (dict "name" "OTEL_TRACES_SAMPLER" "value" .) }}
{{- end }}
{{- if ne (toString $otlp.samplerArg) "" }}
{{- $env = append $env (dict "name" "OTEL_TRACES_SAMPLER_ARG" "value" (toString $otlp.samplerArg)) }}
{{- end }}
{{- if $otlp.endpoint }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "value" $otlp.endpoint) }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_PROTOCOL" "value" $otlp.protocol) }}
{{- with $otlp.headersSecret.name }}
{{- $ref := dict "name" . "key" $otlp.headersSecret.key }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_HEADERS" "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- $env = append $env (dict "name" "POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) }}
{{- $attrs := list }}
{{- range $k, $v := $otlp.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
{{- $attrs = append $attrs (printf "k8s.namespace.name=%s" .root.Release.Namespace) }}
{{- $attrs = append $attrs "k8s.pod.name=$(POD_NAME)" }}
{{- with .team }}
{{- $attrs = append $attrs (printf "push0.team=%s" .) }}
{{- end }}
{{- $env = append $env (dict "name" "OTEL_RESOURCE_ATTRIBUTES" "value" (join "," $attrs)) }}
{{- end }}
{{- with $env }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations: user ones plus Prometheus scrape hints; empty when none. */}}
{{- define "push0.podAnnotations" -}}
{{- $a := deepCopy (default (dict) .Values.podAnnotations) }}
{{- if .Values.metrics.podAnnotations }}
{{- $_ := set $a "prometheus.io/scrape" "true" }}
{{- $_ := set $a "prometheus.io/port" (toString .Values.metrics.port) }}
{{- $_ := set $a "prometheus.io/path" "/metrics" }}
{{- end }}
{{- if $a }}
{{- toYaml $a }}
{{- end }}
{{- end }}

{{/* Metrics port and HTTP probes (/readyz, /healthz), identical for every container. */}}
{{- define "push0.metricsPortAndProbes" -}}
ports:
  - name: metrics
    containerPort: {{ .Values.metrics.port }}
    protocol: TCP
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 6
{{- end }}
