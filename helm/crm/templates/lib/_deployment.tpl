{{/* Deployment of one component: `crm serve <name>`; everything else follows values. */}}
{{- define "crm.lib.deployment" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $v := .v -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .fullname }}
  labels:
    {{- include "crm.lib.labels" . | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ int $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  # Zero-downtime rollout: a new pod must be Ready before an old one is removed.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  minReadySeconds: 5
  selector:
    matchLabels:
      {{- include "crm.lib.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "crm.lib.labels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "crm.lib.configmap" . | sha256sum }}
        {{- if $values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $values.ports.metrics | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .fullname }}
      # The services never call the Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "crm.lib.terminationGrace" . }}
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      {{- if $v.topologySpread.enabled }}
      topologySpreadConstraints:
        - topologyKey: topology.kubernetes.io/zone
          maxSkew: {{ int $v.topologySpread.zone.maxSkew }}
          whenUnsatisfiable: {{ $v.topologySpread.zone.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "crm.lib.selectorLabels" . | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
        - topologyKey: kubernetes.io/hostname
          maxSkew: {{ int $v.topologySpread.node.maxSkew }}
          whenUnsatisfiable: {{ $v.topologySpread.node.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "crm.lib.selectorLabels" . | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: crm
          image: {{ include "crm.image" $root }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: {{ toJson .args }}
          ports:
            - name: grpc
              containerPort: {{ int $values.ports.grpc }}
              protocol: TCP
            - name: metrics
              containerPort: {{ int $values.ports.metrics }}
              protocol: TCP
          env:
            {{- include "crm.lib.env" . | nindent 12 }}
          startupProbe:
            {{- include "crm.lib.livenessCheck" $root | nindent 12 }}
            {{- toYaml $values.probes.startup | nindent 12 }}
          livenessProbe:
            {{- include "crm.lib.livenessCheck" $root | nindent 12 }}
            {{- toYaml $values.probes.liveness | nindent 12 }}
          readinessProbe:
            grpc: {port: {{ int $values.ports.grpc }}, service: {{ .grpcName | quote }}}
            {{- toYaml $values.probes.readiness | nindent 12 }}
          lifecycle:
            # Native sleep: the image has no shell. Gives endpoint controllers and client-side
            # resolvers time to drop this pod before SIGTERM starts the drain.
            preStop:
              sleep: {seconds: {{ int $values.lifecycle.preStopSleepSeconds }}}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/crm
              readOnly: true
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ .fullname }}-config
        # The binary writes nothing; a small /tmp keeps libraries that assume one from failing on
        # the read-only root filesystem.
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
{{- end -}}

{{/*
Container env: fixed addresses, identity, secrets by reference, client endpoints, then extraEnv.
An extraEnv entry replaces the chart's variable of the same name (no duplicate names).
*/}}
{{- define "crm.lib.env" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $db := $values.secrets.database -}}
{{- if .v.database.existingSecret -}}
{{- $db = .v.database -}}
{{- else if and (ne .name "all") $values.secrets.requirePerServiceDatabase -}}
{{- fail (printf "services.%s.database.existingSecret is required: secrets.requirePerServiceDatabase is true" .name) -}}
{{- end -}}
{{- $hostport := include "crm.lib.hostport" $values.listenHost -}}
{{- $env := list
  (dict "name" "CRM_CONFIG_FILE" "value" "/etc/crm/crm.toml")
  (dict "name" "CRM__SERVER__LISTEN_ADDR" "value" (printf "%s:%d" $hostport (int $values.ports.grpc)))
  (dict "name" "CRM__TELEMETRY__METRICS_ADDR" "value" (printf "%s:%d" $hostport (int $values.ports.metrics)))
  (dict "name" "CRM__TELEMETRY__SERVICE_NAME" "value" .fullname)
  (dict "name" "DATABASE_URL" "valueFrom" (dict "secretKeyRef" (dict "name" $db.existingSecret "key" $db.key)))
  (dict "name" "REDIS_URL" "valueFrom" (dict "secretKeyRef" (dict "name" $values.secrets.redis.existingSecret "key" $values.secrets.redis.key)))
  (dict "name" "CRM__AUTH__JWT_SECRET" "valueFrom" (dict "secretKeyRef" (dict "name" $values.secrets.jwt.existingSecret "key" $values.secrets.jwt.key)))
-}}
{{- range $callee := ternary .calls (list) $values.clients.setEndpoints -}}
{{- $env = append $env (dict "name" (printf "CRM__CLIENTS__%s__ENDPOINT" (upper $callee)) "value" (include "crm.lib.endpoint" (dict "root" $root "name" $callee))) -}}
{{- end -}}
{{- $extra := .v.extraEnv | default list -}}
{{- $overridden := list -}}
{{- range $e := $extra }}{{ $overridden = append $overridden $e.name }}{{ end -}}
{{- $out := list -}}
{{- range $e := $env }}{{ if not (has $e.name $overridden) }}{{ $out = append $out $e }}{{ end }}{{ end -}}
{{- toYaml (concat $out $extra) -}}
{{- end -}}

{{/* Startup/liveness check: gRPC health on probes.livenessGrpcService, else TCP on the gRPC port. */}}
{{- define "crm.lib.livenessCheck" -}}
{{- if kindIs "string" .Values.probes.livenessGrpcService -}}
grpc: {port: {{ int .Values.ports.grpc }}, service: {{ .Values.probes.livenessGrpcService | quote }}}
{{- else -}}
tcpSocket: {port: grpc}
{{- end -}}
{{- end -}}

{{/* "[::]" stays bracketed, "0.0.0.0" as is. */}}
{{- define "crm.lib.hostport" -}}
{{- if and (contains ":" .) (not (hasPrefix "[" .)) -}}[{{ . }}]{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* In-cluster URL of a component for its callers (see values `clients.balancing`). */}}
{{- define "crm.lib.endpoint" -}}
{{- $root := .root -}}
{{- $host := printf "%s-%s" (include "crm.fullname" $root) .name -}}
{{- if and (eq $root.Values.clients.balancing "headless") $root.Values.service.headless.enabled -}}
{{- $host = printf "%s-headless" $host -}}
{{- end -}}
{{- printf "http://%s.%s.svc:%d" $host $root.Release.Namespace (int $root.Values.ports.grpc) -}}
{{- end -}}
