{{/*
Expand the name of the chart.
*/}}
{{- define "thorax.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "thorax.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "thorax.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "thorax.labels" -}}
helm.sh/chart: {{ include "thorax.chart" . }}
{{ include "thorax.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "thorax.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thorax.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "thorax.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "thorax.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component (gateway, torchserve, s3): name, instance and component.
*/}}
{{- define "thorax.componentSelectorLabels" -}}
{{ include "thorax.selectorLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The image reference of an image block (repository, tag), the tag defaulting to the chart's appVersion.
*/}}
{{- define "thorax.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .context.Chart.AppVersion | toString) }}
{{- end }}

{{/*
The Secret that holds storage credentials and API keys: existingSecret or the chart's own.
*/}}
{{- define "thorax.secretName" -}}
{{- .Values.existingSecret | default (include "thorax.fullname" .) }}
{{- end }}

{{- define "thorax.torchserveName" -}}
{{- printf "%s-torchserve" (include "thorax.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thorax.s3Name" -}}
{{- printf "%s-s3" (include "thorax.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The gateway's settings as a dict of camelCase setting names: `.Values.config` with what the chart
decides (the TorchServe backend, the in-cluster S3 endpoint). Each key becomes THORAX_<SNAKE_CASE>.
*/}}
{{- define "thorax.settings" -}}
{{- $settings := deepCopy .Values.config }}
{{- if .Values.torchserve.enabled }}
{{- $_ := set $settings "backend" "torchserve" }}
{{- $_ := set $settings "torchserveUrl" (printf "http://%s:%v" (include "thorax.torchserveName" .) .Values.torchserve.service.port) }}
{{- else if and (eq (toString $settings.backend) "torchserve") (not $settings.torchserveUrl) }}
{{- fail "config.backend=torchserve needs config.torchserveUrl (an external TorchServe) or torchserve.enabled=true" }}
{{- end }}
{{- if .Values.s3.inCluster.enabled }}
{{- $_ := set $settings "s3Endpoint" (printf "%s:%v" (include "thorax.s3Name" .) .Values.s3.inCluster.port) }}
{{- $_ := set $settings "s3Secure" false }}
{{- end }}
{{- if and .Values.dask.enabled .Values.dask.scheduler }}
{{- fail "dask.enabled deploys a scheduler; dask.scheduler names an existing one: set one of them" }}
{{- else if .Values.dask.enabled }}
{{- $_ := set $settings "executor" "dask" }}
{{- $_ := set $settings "daskScheduler" (printf "tcp://%s:%v" (include "thorax.daskSchedulerName" .) .Values.dask.schedulerPort) }}
{{- else if .Values.dask.scheduler }}
{{- $_ := set $settings "executor" "dask" }}
{{- $_ := set $settings "daskScheduler" .Values.dask.scheduler }}
{{- else if and (eq (toString $settings.executor) "dask") (not $settings.daskScheduler) }}
{{- fail "config.executor=dask needs dask.enabled=true or dask.scheduler (an existing cluster's address)" }}
{{- end }}
{{- toJson $settings }}
{{- end }}

{{- define "thorax.daskSchedulerName" -}}
{{- printf "%s-dask-scheduler" (include "thorax.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thorax.daskWorkerName" -}}
{{- printf "%s-dask-worker" (include "thorax.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Gateway replicas: replicaCount, else 2 with the Dask executor and 1 with the local one. With the local
executor a job's progress lives in one replica's memory: more than one replica fails to render.
*/}}
{{- define "thorax.replicas" -}}
{{- $settings := include "thorax.settings" . | fromJson }}
{{- $dask := eq (toString $settings.executor) "dask" }}
{{- $replicas := ternary (ternary 2 1 $dask) .Values.replicaCount (kindIs "invalid" .Values.replicaCount) | int }}
{{- $most := ternary (.Values.autoscaling.maxReplicas | int) $replicas .Values.autoscaling.enabled }}
{{- if and (gt $most 1) (not $dask) }}
{{- fail (printf "%d gateway replicas need the Dask executor (dask.enabled or dask.scheduler): with the local executor a job lives in one replica's memory" $most) }}
{{- end }}
{{- $replicas }}
{{- end }}

{{/*
True (non-empty) when the gateway writes to S3 rather than a local folder.
*/}}
{{- define "thorax.usesS3" -}}
{{- $settings := include "thorax.settings" . | fromJson }}
{{- if $settings.s3Endpoint }}true{{ end }}
{{- end }}

{{/*
THORAX_ variables that come from the Secret (optional keys: an empty value is simply not set).
*/}}
{{- define "thorax.secretEnv" -}}
- name: THORAX_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "thorax.secretName" . }}
      key: s3-access-key
      optional: true
- name: THORAX_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "thorax.secretName" . }}
      key: s3-secret-key
      optional: true
- name: THORAX_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "thorax.secretName" . }}
      key: api-keys
      optional: true
{{- end }}

{{/*
The model store volume: a read-only PVC, or an emptyDir the fetch-models init container fills.
*/}}
{{- define "thorax.modelVolume" -}}
- name: models
{{- if eq .Values.models.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "models.persistence.existingClaim is needed with models.source=pvc" .Values.models.persistence.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.models.sizeLimit }}
{{- end }}
{{- if eq .Values.models.source "s3" }}
- name: fetch-models
  configMap:
    name: {{ include "thorax.fullname" . }}-fetch-models
{{- end }}
{{- end }}

{{- define "thorax.modelMount" -}}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
  {{- if and (eq .Values.models.source "pvc") .Values.models.persistence.subPath }}
  subPath: {{ .Values.models.persistence.subPath }}
  {{- end }}
{{- end }}

{{/*
Init containers that put the model store in place and verify every checksum before anything loads it:
fetch-models (models.source=s3) copies the store from S3; verify-models runs `thorax models verify`.
Both use the gateway image. Called with a dict: context, securityContext.
*/}}
{{- define "thorax.modelInitContainers" -}}
{{- $ := .context }}
{{- $settings := include "thorax.settings" $ | fromJson }}
{{- if eq $.Values.models.source "s3" }}
- name: fetch-models
  image: {{ include "thorax.image" (dict "image" $.Values.image "context" $) | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- with .securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  command: ["python", "/etc/thorax/fetch_models.py"]
  env:
    - name: MODELS_S3_ENDPOINT
      value: {{ $.Values.models.s3.endpoint | default $settings.s3Endpoint | required "models.s3.endpoint (or config.s3Endpoint) is needed with models.source=s3" | quote }}
    - name: MODELS_S3_SECURE
      value: {{ ternary $settings.s3Secure $.Values.models.s3.secure (kindIs "invalid" $.Values.models.s3.secure) | quote }}
    - name: MODELS_S3_BUCKET
      value: {{ required "models.s3.bucket is needed with models.source=s3" $.Values.models.s3.bucket | quote }}
    - name: MODELS_S3_PREFIX
      value: {{ $.Values.models.s3.prefix | quote }}
    {{- with $settings.s3Region }}
    - name: MODELS_S3_REGION
      value: {{ . | quote }}
    {{- end }}
    - name: MODELS_DIR
      value: {{ $.Values.models.mountPath | quote }}
    - name: MODELS_S3_ACCESS_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "thorax.secretName" $ }}
          key: s3-access-key
          optional: true
    - name: MODELS_S3_SECRET_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "thorax.secretName" $ }}
          key: s3-secret-key
          optional: true
  volumeMounts:
    - name: models
      mountPath: {{ $.Values.models.mountPath }}
    - name: fetch-models
      mountPath: /etc/thorax
      readOnly: true
    - name: tmp
      mountPath: /tmp
  {{- with $.Values.models.initResources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- name: verify-models
  image: {{ include "thorax.image" (dict "image" $.Values.image "context" $) | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- with .securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  command: ["thorax", "models", "verify"]
  env:
    - name: THORAX_MODEL_STORE
      value: {{ $.Values.models.mountPath | quote }}
  volumeMounts:
    {{- include "thorax.modelMount" $ | nindent 4 }}
    - name: tmp
      mountPath: /tmp
  {{- with $.Values.models.initResources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
A setting's value as the text of an environment variable: whole numbers without an exponent
(values arrive as float64), booleans as true/false.
*/}}
{{- define "thorax.settingValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/*
A utilization target means nothing without a request for that resource (the autoscaler would never
scale): fail at install instead. Called with a dict: autoscaling, resources, prefix ("" or "torchserve.").
*/}}
{{- define "thorax.checkAutoscaling" -}}
{{- $requests := (.resources | default dict).requests | default dict }}
{{- if and .autoscaling.targetCPUUtilizationPercentage (not $requests.cpu) }}
{{- fail (printf "%sautoscaling targets CPU utilization: set %sresources.requests.cpu" .prefix .prefix) }}
{{- end }}
{{- if and .autoscaling.targetMemoryUtilizationPercentage (not $requests.memory) }}
{{- fail (printf "%sautoscaling targets memory utilization: set %sresources.requests.memory" .prefix .prefix) }}
{{- end }}
{{- end }}
