{{/*
Names and labels, the settings-to-env mapping, and the grace-period arithmetic.
*/}}

{{- define "kvsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvsync.fullname" -}}
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

{{- define "kvsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvsync.labels" -}}
helm.sh/chart: {{ include "kvsync.chart" . }}
{{ include "kvsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
One setting value as env text. YAML numbers reach templates as float64, so whole numbers are
printed as integers (16777216, not 1.6777216e+07). Lists join with ",", maps become sorted
"key=value" pairs joined with ",". Static endpoint specs contain commas themselves, so
config.endpoint joins with ";" (see kvsync.env).
*/}}
{{- define "kvsync.envText" -}}
{{- $v := . }}
{{- if kindIs "map" $v }}
{{- $pairs := list }}
{{- range $k := keys $v | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $k (include "kvsync.envText" (get $v $k))) }}
{{- end }}
{{- join "," $pairs }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}
{{- $items = append $items (include "kvsync.envText" .) }}
{{- end }}
{{- join "," $items }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- int64 $v }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
The KVSYNC_* env vars: one per key of .Values.config that is set (not null, "" or empty).
apiToken never appears in clear: it comes from the chart's Secret.
*/}}
{{- define "kvsync.env" -}}
{{- $config := .Values.config }}
{{- range $key := keys $config | sortAlpha }}
{{- $value := get $config $key }}
{{- $name := printf "KVSYNC_%s" ($key | snakecase | upper) }}
{{- if eq $key "apiToken" }}
{{- if $value }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "kvsync.fullname" $ }}-api-token
      key: token
{{- end }}
{{- else if eq $key "apiTokenFile" }}
{{- if $.Values.apiTokenSecret.name }}
- name: {{ $name }}
  value: {{ printf "/etc/kvsync/api-token/%s" $.Values.apiTokenSecret.key | quote }}
{{- else if $value }}
- name: {{ $name }}
  value: {{ include "kvsync.envText" $value | quote }}
{{- end }}
{{- else if eq $key "endpoint" }}
{{- if $value }}
- name: {{ $name }}
  value: {{ join ";" $value | quote }}
{{- end }}
{{- else if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value "")) (and (or (kindIs "slice" $value) (kindIs "map" $value)) (empty $value))) }}
- name: {{ $name }}
  value: {{ include "kvsync.envText" $value | quote }}
{{- end }}
{{- end }}
{{ include "kvsync.indexEnv" . }}
{{- end }}

{{/*
The settings the chart's structure decides rather than `config`: the index backend and its
Redis connection (index.*, redis.*), and each pod's shard (shards; the StatefulSet's ordinal,
from the pod-index label the StatefulSet controller sets on Kubernetes 1.28+).
*/}}
{{- define "kvsync.indexEnv" -}}
- name: KVSYNC_INDEX_BACKEND
  value: {{ .Values.index.backend | quote }}
{{- if eq (toString .Values.index.backend) "redis" }}
- name: KVSYNC_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- if include "kvsync.redisSecret" . }}
- name: KVSYNC_REDIS_PASSWORD_FILE
  value: {{ printf "%s/password" (include "kvsync.redisSecretDir" .) | quote }}
{{- if .Values.redis.caCert }}
- name: KVSYNC_REDIS_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" (include "kvsync.redisSecretDir" .) | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if gt (int .Values.shards) 1 }}
- name: KVSYNC_SHARD_COUNT
  value: {{ .Values.shards | int | quote }}
- name: KVSYNC_SHARD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
{{- end }}
{{- end }}

{{/* The Redis Secret is mounted only where the Redis backend is used. */}}
{{- define "kvsync.redisSecret" -}}
{{- if and (eq (toString .Values.index.backend) "redis") .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{- define "kvsync.redisSecretDir" -}}
/etc/kvsync/redis
{{- end }}

{{/*
Values that contradict each other fail the render with the reason (both workloads include it).
*/}}
{{- define "kvsync.validate" -}}
{{- $tokenSources := compact (list .Values.config.apiToken .Values.config.apiTokenFile .Values.apiTokenSecret.name) }}
{{- if gt (len $tokenSources) 1 }}
{{- fail "give one of config.apiToken, config.apiTokenFile, apiTokenSecret.name" }}
{{- end }}
{{- if and (ne (toString .Values.config.discovery) "static") (or .Values.config.endpoint .Values.config.endpointsFile) }}
{{- fail "config.endpoint / config.endpointsFile need config.discovery: static" }}
{{- end }}
{{- $redis := eq (toString .Values.index.backend) "redis" }}
{{- if and (gt (int .Values.shards) 1) (not $redis) }}
{{- fail (printf "shards: %v needs index.backend: redis. With the memory backend each shard would hold only its own pods' blocks and answer for those alone; with Redis every shard answers for all" .Values.shards) }}
{{- end }}
{{- if and (gt (int .Values.shards) 1) (ne (int .Values.replicaCount) 1) }}
{{- fail "replicaCount is the unsharded Deployment's; with shards > 1 the StatefulSet runs one pod per shard (leave replicaCount at 1)" }}
{{- end }}
{{- if and $redis (not .Values.redis.url) }}
{{- fail "index.backend: redis needs redis.url (redis://host:port of a cluster node or a single node; rediss:// for TLS)" }}
{{- end }}
{{- if and .Values.redis.caCert (not .Values.redis.existingSecret) }}
{{- fail "redis.caCert reads ca.crt from redis.existingSecret: name that Secret" }}
{{- end }}
{{- if and $redis .Values.redis.caCert (not (hasPrefix "rediss://" (toString .Values.redis.url))) }}
{{- fail "redis.caCert verifies TLS: redis.url must be a rediss:// URL" }}
{{- end }}
{{- end }}

{{/* Whole seconds, rounded up, of a number of seconds that may be fractional. */}}
{{- define "kvsync.ceilSeconds" -}}
{{- if kindIs "invalid" . }}0{{ else }}{{ ceil (float64 .) | int64 }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the pod must outlive kvsync's shutdown, or the kubelet kills it
midway. Shutdown is the drain, then four components (discovery, HTTP, load, ingest) stopped in
turn,
each within stopTimeoutSeconds.
*/}}
{{- define "kvsync.gracePeriod" -}}
{{- $stop := mul 4 (include "kvsync.ceilSeconds" .Values.config.stopTimeoutSeconds | int64) }}
{{- $budget := add (include "kvsync.ceilSeconds" .Values.config.drainSeconds | int64) $stop }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $budget (include "kvsync.ceilSeconds" .Values.terminationGraceMarginSeconds | int64) }}
{{- else if lt (int64 .Values.terminationGracePeriodSeconds) $budget }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least config.drainSeconds + 4 x config.stopTimeoutSeconds (%d)" .Values.terminationGracePeriodSeconds $budget) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Watching pods through the API needs RBAC; static discovery needs none. */}}
{{- define "kvsync.watchesPods" -}}
{{- if eq (toString .Values.config.discovery) "kubernetes" }}true{{ end }}
{{- end }}
