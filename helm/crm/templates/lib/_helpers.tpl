{{/*
Names, labels and the per-Deployment context shared by every template.

A "component" is one Deployment and its satellites: "all" in allInOne mode, or one of customer,
sales, support, marketing, inference. Templates receive a context dict built by crm.lib.init:
  root      the chart's root context ($)
  name      component name
  fullname  <release fullname>-<name>: name of every object of the component
  v         `defaults` deep-merged with the component's values block
  config    `config` deep-merged with v.config (what goes into crm.toml)
  grpcName  grpc.health.v1 service name the readiness probe asks
  args      container args (`serve <name>` or `serve all`)
  calls     components it calls (client endpoints)
  callers   enabled components that call it (NetworkPolicy)
*/}}

{{- define "crm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept to 40 characters so "<fullname>-inference-headless" fits a 63-character DNS label. */}}
{{- define "crm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "crm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; takes the root context. */}}
{{- define "crm.labels" -}}
helm.sh/chart: {{ include "crm.chart" . }}
app.kubernetes.io/name: {{ include "crm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "crm.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crm-suite
{{- end -}}

{{/* Selector labels of one component; takes a component context. */}}
{{- define "crm.lib.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "crm.lib.labels" -}}
{{ include "crm.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "crm.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "crm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "crm.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/*
What the binary fixes, not a knob: each service's grpc.health.v1 name and whom it calls
(marketing -> customer; inference -> customer, sales, support, marketing; sales -> customer;
support -> customer).
*/}}
{{- define "crm.lib.catalog" -}}
customer: {grpcName: crm.customer.v1.CustomerService, calls: []}
sales: {grpcName: crm.sales.v1.SalesService, calls: [customer]}
support: {grpcName: crm.support.v1.SupportService, calls: [customer]}
marketing: {grpcName: crm.marketing.v1.MarketingService, calls: [customer]}
inference: {grpcName: crm.inference.v1.InferenceService, calls: [customer, sales, support, marketing]}
{{- end -}}

{{/* Components rendered by this release, in a stable order (a JSON list). */}}
{{- define "crm.lib.components" -}}
{{- $out := list -}}
{{- if eq .Values.mode "allInOne" -}}
{{- $out = list "all" -}}
{{- else -}}
{{- range $name := list "customer" "sales" "support" "marketing" "inference" -}}
{{- if (get $.Values.services $name).enabled -}}
{{- $out = append $out $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Deep merge that lets the source win, false/0/"" included (sprig's merge helpers treat those as
"unset"): crm.lib.mergeInto mutates .dst in place.
*/}}
{{- define "crm.lib.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- $d := get $dst $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $d) -}}
{{- include "crm.lib.mergeInto" (dict "dst" $d "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Fills a component context dict (root, name) in place; see the top of this file. */}}
{{- define "crm.lib.init" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $catalog := include "crm.lib.catalog" $root | fromYaml -}}
{{- $block := dict -}}
{{- if eq .name "all" -}}
{{- $block = $values.allInOne -}}
{{- else -}}
{{- $block = get $values.services .name -}}
{{- end -}}
{{- $v := deepCopy $values.defaults -}}
{{- include "crm.lib.mergeInto" (dict "dst" $v "src" (deepCopy $block)) -}}
{{- $config := deepCopy $values.config -}}
{{- include "crm.lib.mergeInto" (dict "dst" $config "src" (deepCopy (default (dict) $v.config))) -}}
{{- $_ := set . "v" $v -}}
{{- $_ := set . "config" $config -}}
{{- $_ := set . "fullname" (printf "%s-%s" (include "crm.fullname" $root) .name) -}}
{{- if eq .name "all" -}}
{{- $_ := set . "grpcName" $v.readinessService -}}
{{- $_ := set . "args" (list "serve" "all") -}}
{{- $_ := set . "calls" (list) -}}
{{- $_ := set . "callers" (list) -}}
{{- else -}}
{{- $entry := get $catalog .name -}}
{{- $_ := set . "grpcName" $entry.grpcName -}}
{{- $_ := set . "args" (list "serve" .name) -}}
{{- $enabled := include "crm.lib.components" $root | fromJsonArray -}}
{{- $calls := list -}}
{{- range $callee := $entry.calls -}}
{{- if has $callee $enabled -}}
{{- $calls = append $calls $callee -}}
{{- end -}}
{{- end -}}
{{- $_ := set . "calls" $calls -}}
{{- $callers := list -}}
{{- range $other := $enabled -}}
{{- if has $.name (get $catalog $other).calls -}}
{{- $callers = append $callers $other -}}
{{- end -}}
{{- end -}}
{{- $_ := set . "callers" $callers -}}
{{- end -}}
{{- end -}}

{{/* crm.toml from a nested map: [section] then key = value; empty strings and nulls are left out. */}}
{{- define "crm.lib.toml" -}}
{{- range $section, $keys := . }}
[{{ $section }}]
{{- range $k, $v := $keys }}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
{{ $k }} = {{ include "crm.lib.tomlValue" $v }}
{{- end }}
{{- end }}
{{ end -}}
{{- end -}}

{{/* Helm reads every number as float64; write integral ones as TOML integers. */}}
{{- define "crm.lib.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if and (kindIs "float64" .) (eq (float64 .) (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Seconds the pod may take to stop: preStop sleep + drain bound + margin, or the explicit value. */}}
{{- define "crm.lib.terminationGrace" -}}
{{- $root := .root -}}
{{- $need := add (int $root.Values.lifecycle.preStopSleepSeconds) (int .config.server.shutdown_grace_secs) -}}
{{- if kindIs "invalid" $root.Values.terminationGracePeriodSeconds -}}
{{- add $need 10 -}}
{{- else if le (int $root.Values.terminationGracePeriodSeconds) $need -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.server.shutdown_grace_secs (%d) for %s, or in-flight calls are cut off" (int $root.Values.terminationGracePeriodSeconds) $need .name) -}}
{{- else -}}
{{- int $root.Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}
