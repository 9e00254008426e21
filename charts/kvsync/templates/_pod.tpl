{{/*
The pod template of kvsync's workload: the Deployment (one index shard: every replica subscribes
to every pod) or, with shards > 1, the StatefulSet whose ordinal is each pod's shard index.
*/}}
{{- define "kvsync.podTemplate" -}}
{{- $watchesPods := include "kvsync.watchesPods" . -}}
metadata:
  {{- if or .Values.config.apiToken .Values.podAnnotations }}
  annotations:
    {{- if .Values.config.apiToken }}
    # Roll the pods when the token changes: env from a Secret is read at start only.
    checksum/api-token: {{ .Values.config.apiToken | toString | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  labels:
    {{- include "kvsync.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "kvsync.serviceAccountName" . }}
  # The token is needed only to watch pods.
  automountServiceAccountToken: {{ eq $watchesPods "true" }}
  terminationGracePeriodSeconds: {{ include "kvsync.gracePeriod" . }}
  # Service links would inject KVSYNC_PORT, KVSYNC_SERVICE_HOST… for a Service named kvsync,
  # and for one named e.g. kvsync-replay a KVSYNC_REPLAY_PORT=tcp://… the daemon would read
  # as its setting.
  enableServiceLinks: false
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: kvsync
      image: {{ include "kvsync.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      env:
        {{- include "kvsync.env" . | trim | nindent 8 }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.config.httpPort }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /livez
          port: http
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        # The root filesystem is read-only; libraries that need scratch files get /tmp.
        - name: tmp
          mountPath: /tmp
        {{- if .Values.apiTokenSecret.name }}
        - name: api-token
          mountPath: /etc/kvsync/api-token
          readOnly: true
        {{- end }}
        {{- if include "kvsync.redisSecret" . }}
        - name: redis-secret
          mountPath: {{ include "kvsync.redisSecretDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if .Values.apiTokenSecret.name }}
    - name: api-token
      secret:
        secretName: {{ .Values.apiTokenSecret.name }}
        items:
          - key: {{ .Values.apiTokenSecret.key }}
            path: {{ .Values.apiTokenSecret.key }}
    {{- end }}
    {{- if include "kvsync.redisSecret" . }}
    # The Redis password (and a private CA's certificate) as files, never as env values.
    - name: redis-secret
      secret:
        secretName: {{ .Values.redis.existingSecret }}
        items:
          - key: password
            path: password
          {{- if .Values.redis.caCert }}
          - key: ca.crt
            path: ca.crt
          {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
