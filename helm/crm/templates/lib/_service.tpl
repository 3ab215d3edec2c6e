{{/* ClusterIP Service: gRPC + metrics. What gateways, the ServiceMonitor and `clients.balancing: clusterIP` use. */}}
{{- define "crm.lib.service" -}}
{{- $values := .root.Values -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
  {{- with $values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "crm.lib.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int $values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      # Lets meshes and gateways speak HTTP/2 gRPC and balance per request.
      appProtocol: grpc
    - name: metrics
      port: {{ int $values.ports.metrics }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end -}}

{{/*
Headless Service: DNS returns every ready pod IP, so a gRPC client can keep one HTTP/2
connection per pod and balance each call (round robin), instead of pinning to the one pod a
ClusterIP connection lands on. Carries crm-suite.io/headless so the ServiceMonitor skips it.
*/}}
{{- define "crm.lib.headlessService" -}}
{{- $values := .root.Values -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .fullname }}-headless
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
    crm-suite.io/headless: "true"
spec:
  clusterIP: None
  # Only Ready pods: a draining or cold pod leaves DNS before it stops serving.
  publishNotReadyAddresses: false
  selector:
    {{- include "crm.lib.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int $values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end -}}

{{- define "crm.lib.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
  {{- with .v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
