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
{{- end }}

{{/* Whole seconds, rounded up, of a number of seconds that may be fractional. */}}
{{- define "kvsync.ceilSeconds" -}}
{{- if kindIs "invalid" . }}0{{ else }}{{ ceil (float64 .) | int64 }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the pod must outlive kvsync's shutdown, or the kubelet kills it
midway. Shutdown is the drain, then three components (discovery, HTTP, ingest) stopped in turn,
each within stopTimeoutSeconds.
*/}}
{{- define "kvsync.gracePeriod" -}}
{{- $stop := mul 3 (include "kvsync.ceilSeconds" .Values.config.stopTimeoutSeconds | int64) }}
{{- $budget := add (include "kvsync.ceilSeconds" .Values.config.drainSeconds | int64) $stop }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $budget (include "kvsync.ceilSeconds" .Values.terminationGraceMarginSeconds | int64) }}
{{- else if lt (int64 .Values.terminationGracePeriodSeconds) $budget }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least config.drainSeconds + 3 x config.stopTimeoutSeconds (%d)" .Values.terminationGracePeriodSeconds $budget) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Watching pods through the API needs RBAC; static discovery needs none. */}}
{{- define "kvsync.watchesPods" -}}
{{- if eq (toString .Values.config.discovery) "kubernetes" }}true{{ end }}
{{- end }}
