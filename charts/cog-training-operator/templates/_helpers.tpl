{{/* Names, labels and images shared by the templates. */}}

{{- define "cogtrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name. Derived names add at most 12 characters ("-webhook-tls"),
so it is cut to 50 characters to keep Service names within 63.
*/}}
{{- define "cogtrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cogtrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cogtrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cogtrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cogtrain.labels" -}}
helm.sh/chart: {{ include "cogtrain.chart" . }}
{{ include "cogtrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cog-training-operator
{{- end }}

{{- define "cogtrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cogtrain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cogtrain.webhookServiceName" -}}
{{- printf "%s-webhook" (include "cogtrain.fullname" .) }}
{{- end }}

{{- define "cogtrain.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "cogtrain.fullname" .) }}
{{- end }}

{{- define "cogtrain.metricsServiceName" -}}
{{- printf "%s-metrics" (include "cogtrain.fullname" .) }}
{{- end }}

{{/* REPOSITORY:TAG, or REPOSITORY@sha256:... when the tag is a digest. */}}
{{- define "cogtrain.imageRef" -}}
{{- if hasPrefix "sha256:" .tag }}
{{- printf "%s@%s" .repository .tag }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{- define "cogtrain.image" -}}
{{- include "cogtrain.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/* The driver image: driverImage's fields, each defaulting to the operator image's. */}}
{{- define "cogtrain.driverImage" -}}
{{- $repository := default .Values.image.repository .Values.driverImage.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.driverImage.tag }}
{{- include "cogtrain.imageRef" (dict "repository" $repository "tag" $tag) }}
{{- end }}

{{- define "cogtrain.driverImagePullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.driverImage.pullPolicy }}
{{- end }}

{{/* true when the operator watches the whole cluster (watchNamespaces is empty). */}}
{{- define "cogtrain.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* The webhook certificate's source: "certManager" or "selfSigned" (the operator's own). */}}
{{- define "cogtrain.webhookCertMode" -}}
{{- if .Values.webhook.certManager.enabled }}certManager{{ else }}selfSigned{{ end }}
{{- end }}
