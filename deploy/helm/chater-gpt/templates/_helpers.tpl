{{- define "chater-gpt.name" -}}chater-gpt{{- end -}}

{{- define "chater-gpt.fullname" -}}
{{- if contains "chater-gpt" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-chater-gpt" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "chater-gpt.selector" -}}
app.kubernetes.io/name: {{ include "chater-gpt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chater-gpt.labels" -}}
{{ include "chater-gpt.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The records not answered yet, summed over the request topic's partitions. */}}
{{- define "chater-gpt.unanswered" -}}
sum(chater_gpt_backlog_unfetched{namespace="{{ .Release.Namespace }}",service="{{ include "chater-gpt.fullname" . }}"} or vector(0)) + sum(chater_gpt_backlog_uncommitted{namespace="{{ .Release.Namespace }}",service="{{ include "chater-gpt.fullname" . }}"} or vector(0))
{{- end -}}
