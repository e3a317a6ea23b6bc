{{/* The release's full name: the release name, with the chart's name unless it contains it. */}}
{{- define "kubegraft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubegraft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubegraft.labels" -}}
{{ include "kubegraft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubegraft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubegraft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubegraft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kubegraft.trainerImage" -}}
{{- default (printf "ghcr.io/kubegraft/trainer:%s" .Chart.AppVersion) .Values.trainer.image -}}
{{- end -}}

{{/* The peering object's name, shared by the replicas (only with replicaCount > 1). */}}
{{- define "kubegraft.peering" -}}
{{- include "kubegraft.fullname" . -}}
{{- end -}}

{{/* The rules of files/rbac-rules.yaml, by section. */}}
{{- define "kubegraft.rules" -}}
{{- $all := .root.Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- toYaml (index $all .section) -}}
{{- end -}}
