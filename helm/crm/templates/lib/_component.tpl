{{/*
Everything one component needs, from this library. Each per-service template is one line:
  {{ include "crm.lib.component" (dict "root" $ "name" "customer") }}
*/}}
{{- define "crm.lib.component" -}}
{{- if has .name (include "crm.lib.components" .root | fromJsonArray) }}
{{- $ctx := dict "root" .root "name" .name -}}
{{- include "crm.lib.init" $ctx -}}
{{- $values := .root.Values -}}
{{- $v := $ctx.v }}
---
{{ include "crm.lib.serviceAccount" $ctx }}
---
{{ include "crm.lib.configmap" $ctx }}
---
{{ include "crm.lib.deployment" $ctx }}
---
{{ include "crm.lib.service" $ctx }}
{{- if $values.service.headless.enabled }}
---
{{ include "crm.lib.headlessService" $ctx }}
{{- end }}
{{- if $v.autoscaling.enabled }}
---
{{ include "crm.lib.hpa" $ctx }}
{{- end }}
{{- if $v.pdb.enabled }}
---
{{ include "crm.lib.pdb" $ctx }}
{{- end }}
{{- if $values.networkPolicy.enabled }}
---
{{ include "crm.lib.networkPolicy" $ctx }}
{{- end }}
{{- if $values.metrics.serviceMonitor.enabled }}
---
{{ include "crm.lib.serviceMonitor" $ctx }}
{{- end }}
{{- end }}
{{- end -}}
