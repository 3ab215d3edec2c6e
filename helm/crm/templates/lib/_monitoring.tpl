{{/* Prometheus-operator ServiceMonitor for one component's ClusterIP Service (metrics port). */}}
{{- define "crm.lib.serviceMonitor" -}}
{{- $sm := .root.Values.metrics.serviceMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "crm.lib.selectorLabels" . | nindent 6 }}
    matchExpressions:
      - {key: crm-suite.io/headless, operator: DoesNotExist}
  namespaceSelector:
    matchNames: [{{ .root.Release.Namespace }}]
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $sm.interval }}
      scrapeTimeout: {{ $sm.scrapeTimeout }}
      # The metrics carry their own `service` label (the gRPC service); keep it rather than
      # renaming it exported_service under the target's Kubernetes Service name.
      honorLabels: true
{{- end -}}
