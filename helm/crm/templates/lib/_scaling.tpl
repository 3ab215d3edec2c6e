{{/* HPA: CPU utilisation, optionally in-flight requests per pod, with scale-down stabilisation. */}}
{{- define "crm.lib.hpa" -}}
{{- $a := .v.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "%s: autoscaling.minReplicas (%d) > maxReplicas (%d)" .name (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .fullname }}
  minReplicas: {{ int $a.minReplicas }}
  maxReplicas: {{ int $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ int $a.targetCPUUtilizationPercentage }}
    {{- if $a.inFlight.enabled }}
    # Served by a custom-metrics adapter from the pods' crm_grpc_in_flight_requests gauge.
    - type: Pods
      pods:
        metric:
          name: crm_grpc_in_flight_requests
        target:
          type: AverageValue
          averageValue: {{ $a.inFlight.averageValue | quote }}
    {{- end }}
  behavior:
    {{- toYaml $a.behavior | nindent 4 }}
{{- end -}}

{{/* PDB: maxUnavailable by default (never blocks a drain), minAvailable when set. */}}
{{- define "crm.lib.pdb" -}}
{{- $p := .v.pdb -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $p.minAvailable) }}
  minAvailable: {{ $p.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $p.maxUnavailable }}
  {{- end }}
  # A crash-looping pod must not stop a node drain.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "crm.lib.selectorLabels" . | nindent 6 }}
{{- end -}}
