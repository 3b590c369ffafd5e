{{- define "edge-autotuner.labels" -}}
app.kubernetes.io/name: edge-autotuner
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "edge-autotuner.selector" -}}
app.kubernetes.io/name: edge-autotuner
app.kubernetes.io/component: operator
{{- end }}
