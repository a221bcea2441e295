{{/*
Every permission of the operator, in one place. rbac.yaml places these rule lists:
- "cogtrain.rbac.namespaceRules": what the operator does with Trainings and their Jobs in a watched
  namespace. Cluster mode (watchNamespaces empty): in the ClusterRole; namespaced mode: in a Role
  per watched namespace.
- "cogtrain.rbac.clusterRules": what is cluster-scoped whatever the mode; always in the ClusterRole.
- "cogtrain.rbac.webhookSecretRules": the self-signed webhook certificate's Secret, in a Role in
  the release namespace.
Each template takes the chart's root context and renders a YAML list of PolicyRules.
*/}}

{{- define "cogtrain.rbac.namespaceRules" -}}
# The Trainings: watched, read before a conditional status write; never patched themselves: the status,
# kopf's progress and its diff-base are written through the status subresource.
- apiGroups: ["cog.run"]
  resources: ["trainings"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["cog.run"]
  resources: ["trainings/status"]
  verbs: ["patch"]
# Each Training runs as one Job, owned by the Training.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The Job's Pods (listed by label): their state and the driver's termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# A running training's progress: the tail of its driver container's log (docs/operator.md, "Progress and logs").
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# imagePullSecrets of a Training (or its ServiceAccount) to read the model image's labels.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
# kopf posts Events on the Trainings; a Job that shows no Pod has its FailedCreate Events read.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- if not (include "cogtrain.clusterwide" .) }}
# kopf's peering between instances in this namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{- define "cogtrain.rbac.clusterRules" -}}
# kopf observes the CRDs to find the Training resource.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# A Training's spec.priorityClassName is checked to exist before its Job is made.
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get"]
{{- if not (include "cogtrain.clusterwide" .) }}
# kopf lists and watches Namespaces to serve the named ones (and notice them when created later).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- if include "cogtrain.clusterwide" . }}
# kopf's peering between instances watching the whole cluster.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- if .Values.webhook.enabled }}
# The webhook asks whether a Training's creator may create Pods and read the Secrets it names.
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}
{{- if and .Values.webhook.enabled (eq (include "cogtrain.webhookCertMode" .) "selfSigned") }}
# The operator writes its self-signed CA into this chart's webhook configuration (and no other).
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["get", "patch"]
  resourceNames: [{{ include "cogtrain.fullname" . | quote }}]
{{- end }}
{{- end }}

{{- define "cogtrain.rbac.webhookSecretRules" -}}
# The self-signed webhook certificate (operator/cogtrain/certs.py): created once, then read and,
# when it expires or its names change, renewed with a patch.
# (RBAC cannot limit "create" by name: the name is not known before the object exists.)
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "patch"]
  resourceNames: [{{ include "cogtrain.webhookSecretName" . | quote }}]
{{- end }}
