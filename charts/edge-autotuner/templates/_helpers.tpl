{{/*
The name every object of a release starts with: the release's name, with the chart's appended
unless it is already part of it (`helm install edge-autotuner` gives "edge-autotuner",
`helm install cams` gives "cams-edge-autotuner"), so two releases never share a name, not even a
cluster-scoped one (the ClusterRole and its binding).
*/}}
{{- define "edge-autotuner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "edge-autotuner.labels" -}}
{{ include "edge-autotuner.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The operator's pods, of this release only. */}}
{{- define "edge-autotuner.selector" -}}
app.kubernetes.io/name: edge-autotuner
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

