{{/*
Names.
*/}}
{{- define "suifang.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "suifang.fullname" -}}
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

{{- define "suifang.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels. Call with (dict "root" $ "component" "web").
*/}}
{{- define "suifang.selectorLabels" -}}
app.kubernetes.io/name: {{ include "suifang.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "suifang.labels" -}}
helm.sh/chart: {{ include "suifang.chart" .root }}
{{ include "suifang.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: suifang
{{- end }}

{{/*
Image reference: digest wins over tag; tag defaults to appVersion.
*/}}
{{- define "suifang.imageRef" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .default $img.tag) -}}
{{- end -}}
{{- end }}

{{- define "suifang.image" -}}
{{- include "suifang.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end }}

{{/*
Secret-looking names that must never be set through values (env / extraEnv).
*/}}
{{- define "suifang.forbiddenEnv" -}}
SECRET_KEY PII_ENCRYPTION_KEYS PII_HASH_KEY POOLING_SECRET DATABASE_URL REDIS_URL SENTRY_DSN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN EMAIL_HOST_PASSWORD CELERY_BROKER_URL CELERY_RESULT_BACKEND STRIPE_SECRET_KEY STRIPE_WEBHOOK_SECRET DEMO_PASSWORD
{{- end }}

{{/*
Validation, included once from the ConfigMap template.
*/}}
{{- define "suifang.validate" -}}
{{- if not .Values.baseDomain }}
{{- fail "baseDomain is required (e.g. --set baseDomain=suifang.example.org)" }}
{{- end }}
{{- if or (hasPrefix "*" .Values.baseDomain) (hasPrefix "." .Values.baseDomain) (contains "/" .Values.baseDomain) }}
{{- fail "baseDomain is a bare host name such as suifang.example.org (no scheme, no wildcard, no leading dot)" }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- fail "existingSecret is required: the name of a Secret holding SECRET_KEY, DATABASE_URL and REDIS_URL" }}
{{- end }}
{{- if not .Values.image.repository }}
{{- fail "image.repository is required" }}
{{- end }}
{{- $forbidden := splitList " " (include "suifang.forbiddenEnv" .) }}
{{- range $k, $v := .Values.env }}
{{- if has $k $forbidden }}
{{- fail (printf "env.%s looks like a secret: put it in the Secret %q instead of values" $k $.Values.existingSecret) }}
{{- end }}
{{- if or (eq $k "BASE_DOMAIN") (eq $k "DJANGO_SETTINGS_MODULE") }}
{{- fail (printf "env.%s is set by the chart; use baseDomain instead" $k) }}
{{- end }}
{{- end }}
{{- range $list := list .Values.web.extraEnv .Values.worker.extraEnv .Values.beat.extraEnv .Values.migrate.extraEnv }}
{{- range $e := $list }}
{{- if and (has $e.name $forbidden) (hasKey $e "value") }}
{{- fail (printf "extraEnv %s has a literal value: secrets come from the Secret (use valueFrom)" $e.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.pgbouncer.enabled }}
{{- if not .Values.pgbouncer.upstream.host }}
{{- fail "pgbouncer.upstream.host is required when pgbouncer.enabled" }}
{{- end }}
{{- if and (ne .Values.pgbouncer.poolMode "session") (not .Values.pgbouncer.allowTransactionPooling) }}
{{- fail (printf "pgbouncer.poolMode=%s is refused: django-tenants sets search_path per session, so only session pooling is safe (docs/adr/0004-pgbouncer-session-state.md). Set pgbouncer.allowTransactionPooling=true only after the ADR's test passes on your PostgreSQL/PgBouncer versions." .Values.pgbouncer.poolMode) }}
{{- end }}
{{- if not (has .Values.pgbouncer.poolMode (list "session" "transaction")) }}
{{- fail "pgbouncer.poolMode must be session (or transaction, see ADR 0004); statement pooling breaks Django transactions" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Non-secret configuration as a flat map of strings (ConfigMap data / Job env).
*/}}
{{- define "suifang.configData" -}}
{{- $data := dict }}
{{- range $k, $v := .Values.env }}
{{- $_ := set $data $k (toString $v) }}
{{- end }}
{{- $_ := set $data "BASE_DOMAIN" .Values.baseDomain }}
{{- $_ := set $data "DJANGO_SETTINGS_MODULE" "config.settings.prod" }}
{{- if .Values.pgbouncer.enabled }}
{{- /* Session pooling multiplexes only between client connections: release the
       connection after every request/task so PgBouncer can hand it to another pod. */}}
{{- $_ := set $data "DB_CONN_MAX_AGE" "0" }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Secret env vars. Call with (dict "root" $ "pooled" true|false).
`pooled` points DATABASE_URL at PgBouncer when it is enabled.
*/}}
{{- define "suifang.secretEnv" -}}
{{- $root := .root }}
{{- $secret := $root.Values.existingSecret }}
{{- range $key := $root.Values.secretKeys.required }}
{{- if and (eq $key "DATABASE_URL") $.pooled $root.Values.pgbouncer.enabled }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $root.Values.pgbouncer.databaseUrlKey }}
{{- else }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- range $key := $root.Values.secretKeys.optional }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}

{{/*
Env common to every app container. Call with (dict "root" $ "pooled" bool "extra" list).
*/}}
{{- define "suifang.appEnv" -}}
{{- include "suifang.secretEnv" (dict "root" .root "pooled" .pooled) }}
- name: HOME
  value: /tmp
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by app pods.
*/}}
{{- define "suifang.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.serviceAccount.name }}
serviceAccountName: {{ .Values.serviceAccount.name }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Volumes / mounts shared by app pods.
*/}}
{{- define "suifang.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- if .Values.media.existingClaim }}
- name: media
  persistentVolumeClaim:
    claimName: {{ .Values.media.existingClaim }}
{{- end }}
{{- end }}

{{- define "suifang.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.media.existingClaim }}
- name: media
  mountPath: /app/.data/media
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when configuration changes.
*/}}
{{- define "suifang.podAnnotations" -}}
checksum/config: {{ include "suifang.configData" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The migrate container (used by the pre- and post- hook Jobs).
*/}}
{{- define "suifang.migrateContainer" -}}
- name: migrate
  image: {{ include "suifang.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - python
    - manage.py
    - migrate_tenants
    - --jobs
    - {{ .Values.migrate.jobs | quote }}
    {{- range .Values.migrate.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- /* Inline, not envFrom: a pre-install hook runs before the chart's ConfigMap exists. */}}
    {{- range $k, $v := (include "suifang.configData" . | fromYaml) }}
    - name: {{ $k }}
      value: {{ $v | quote }}
    {{- end }}
    {{- /* Direct DATABASE_URL: the Job runs before PgBouncer exists and holds its
           connections for long DDL transactions. */}}
    {{- include "suifang.appEnv" (dict "root" . "pooled" false "extra" .Values.migrate.extraEnv) | trim | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrate.resources | nindent 4 }}
  volumeMounts:
    {{- include "suifang.volumeMounts" . | nindent 4 }}
{{- end }}
