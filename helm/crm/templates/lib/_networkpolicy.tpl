{{/*
Ingress-only NetworkPolicy: gRPC from the components that call this one (and from the gateway
peers if exposeToGateway), metrics from the monitoring peers. Egress is left open: database and
Redis addresses are outside the chart's knowledge.
*/}}
{{- define "crm.lib.networkPolicy" -}}
{{- $root := .root -}}
{{- $np := $root.Values.networkPolicy -}}
{{- $grpc := int $root.Values.ports.grpc -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "crm.lib.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  {{- if not (or .callers (and .v.exposeToGateway $np.gateway) $np.metrics $np.extraIngress) }}
  ingress: []
  {{- else }}
  ingress:
    {{- if .callers }}
    # In-cluster callers: {{ join ", " .callers }}.
    - ports:
        - {port: {{ $grpc }}, protocol: TCP}
      from:
        {{- range $caller := .callers }}
        - podSelector:
            matchLabels:
              {{- include "crm.lib.selectorLabels" (dict "root" $root "name" $caller) | nindent 14 }}
        {{- end }}
    {{- end }}
    {{- if and .v.exposeToGateway $np.gateway }}
    # Gateway / ingress / external callers.
    - ports:
        - {port: {{ $grpc }}, protocol: TCP}
      from:
        {{- toYaml $np.gateway | nindent 8 }}
    {{- end }}
    {{- if $np.metrics }}
    # Prometheus.
    - ports:
        - {port: {{ int $root.Values.ports.metrics }}, protocol: TCP}
      from:
        {{- toYaml $np.metrics | nindent 8 }}
    {{- end }}
    {{- with $np.extraIngress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}
