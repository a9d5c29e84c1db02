{{/* The StatefulSet's name: pods are <this>-0, <this>-1... and their ordinal is the suffix. */}}
{{- define "kiln.serverName" -}}
{{- printf "%s-compiler-server" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* N: one member unless parallel compilation is enabled. */}}
{{- define "kiln.replicas" -}}
{{- if .Values.parallelCompilation.enabled -}}{{ .Values.parallelCompilation.replicas }}{{- else -}}1{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: compiler-server
{{- end -}}

{{- define "kiln.clusterTokenSecret" -}}
{{- default (printf "%s-cluster-token" .Release.Name) .Values.clusterToken.existingSecret -}}
{{- end -}}

{{- define "kiln.apiTokenSecret" -}}
{{- default (printf "%s-api-token" .Release.Name) .Values.apiToken.existingSecret -}}
{{- end -}}
