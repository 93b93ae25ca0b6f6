{{- define "pleiades-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pleiades-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pleiades-operator.labels" -}}
{{ include "pleiades-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pleiades-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pleiades-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /*
The operator's rights in a namespace it reconciles: exactly what operator/src/controller.rs
calls, nothing more. Server-side apply is a `patch`, and also a `create` when the object is new.
*/}}
{{- define "pleiades-operator.rules" -}}
- apiGroups: [pleiades.io]
  resources: [constellations]
  # list/watch: the controller; patch: its finalizer. get: the pods' Role grants it, and RBAC
  # lets the operator grant only what it holds itself.
  verbs: [get, list, watch, patch]
- apiGroups: [pleiades.io]
  resources: [constellations/status]
  verbs: [get, patch]
- apiGroups: [pleiades.io]
  resources: [constellations/finalizers]
  # Owner references that block the owner's deletion need this on the owner.
  verbs: [update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, patch]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [secrets]
  # Each constellation's CA key and admin client certificate, in its own namespace. The pods'
  # service accounts get no access to Secrets: each pod keeps its own key and gets its
  # certificate through its status entry.
  verbs: [get, create, update, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  # Volume expansion, and deletion with `whenDeleted: Delete` (one claim at a time) and of a
  # lost node's claim on failover.
  verbs: [list, patch, delete]
- apiGroups: [""]
  resources: [pods]
  # Failover: finding pods a lost node left Terminating, and force-deleting one once its
  # replicas were rebuilt elsewhere. patch: their zone and region annotations.
  verbs: [list, delete, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  # get/delete: removing its own policy when `networkPolicy.enabled` turns false.
  verbs: [get, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [cert-manager.io]
  resources: [certificaterequests]
  # With spec.tls.certManager: one request per pod CSR, deleted once copied or failed.
  verbs: [get, create, delete]
- apiGroups: [cert-manager.io]
  resources: [certificates]
  # With spec.tls.certManager: the admin client certificate.
  verbs: [create, patch]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [create, patch]
{{- end -}}
