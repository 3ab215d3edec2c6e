{{/* ConfigMap holding crm.toml for one component. Its sha256 is the pod's checksum/config annotation. */}}
{{- define "crm.lib.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .fullname }}-config
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
data:
  crm.toml: |
    # Rendered by the crm chart from `config` + `{{ if eq .name "all" }}allInOne{{ else }}services.{{ .name }}{{ end }}.config`.
    # Env vars set on the container win over this file.
    {{- include "crm.lib.toml" .config | trimSuffix "\n" | nindent 4 | replace "\n    \n" "\n\n" }}
{{- end -}}
