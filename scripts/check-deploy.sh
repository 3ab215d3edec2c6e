#!/usr/bin/env bash
# Deployment checks for CRM Suite (no cluster needed). Run from anywhere; CI runs it from the repo root.
#
#  1. tools: helm 3, kubernetes-validate, trivy, kubectl (kustomize), promtool -> .local/tools (idempotent)
#  2. the Grafana dashboard JSON matches its generator
#  3. helm lint --strict: default values and every helm/crm/ci/*.yaml
#  4. helm template: default values, every ci file, and a release with another name and namespace
#  5. kubectl kustomize: k8s/base and every k8s/overlays/*
#  6. every rendered object: Kubernetes 1.30 schemas in strict mode (kubernetes-validate --strict);
#     ServiceMonitor/PrometheusRule (CRDs, no bundled schema) checked structurally; then
#     `trivy config` (its embedded Kubernetes and Dockerfile checks, offline) must find nothing at
#     any severity in the renderings and the Dockerfile (no container engine here to build it)
#  7. policy: every container has liveness+readiness probes (long-running workloads), a memory
#     limit, runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL,
#     seccomp RuntimeDefault, a pinned image; plus references between objects (HPA targets,
#     selectors, ConfigMaps, PDBs, grace periods, duplicate env) and metric names in
#     alerts/dashboards; crm.toml keys must be keys of the binary (config.rs), unknown CRM__ env warns
#  8. promtool: alert and dashboard PromQL parses; alert unit tests (scripts/deploy/alerts.test.yaml)
#  9. self-tests: the schema rejects each scripts/deploy/testdata/bad-values/*.yaml, the policy
#     check fails on a bad manifest and on insecure chart values, strict validation rejects a typo
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS
KUBE_VERSION=1.30.0
CHART=helm/crm
RELEASE=crm
NAMESPACE=crm

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "tools"
# shellcheck source=deploy/install-tools.sh
source scripts/deploy/install-tools.sh
echo "helm $("$HELM" version --template '{{.Version}}'), $("$KUBECTL" version --client 2>/dev/null | head -1)," \
  "kubernetes-validate $("$VENV_PY" -m pip show kubernetes-validate 2>/dev/null | awk '/^Version/{print $2}')," \
  "$("$PROMTOOL" --version 2>&1 | head -1 | cut -d' ' -f1-3), trivy $("$TRIVY" --version 2>/dev/null | awk '/^Version/{print $2}')"
KV="$(dirname "$VENV_PY")/kubernetes-validate"
PY="$VENV_PY"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/crm-deploy-checks.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/render" "$WORK/out" "$WORK/selftest"

step "dashboard JSON is up to date with scripts/deploy/gen_dashboard.py"
python3 scripts/deploy/gen_dashboard.py --check
echo ok

step "helm lint --strict"
lint() {
  local out
  if ! out="$("$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "$@" 2>&1)"; then
    printf '%s\n' "$out"; fail "helm lint --strict $*"
  fi
  echo "ok  ${*:-(default values)}"
}
lint
for f in "$CHART"/ci/*.yaml; do lint -f "$f"; done

step "helm template"
RENDERINGS=0
render() { # output-name, helm template args...
  local name=$1; shift
  if ! "$HELM" template "$@" --kube-version "$KUBE_VERSION" >"$WORK/render/$name.yaml" 2>"$WORK/render/$name.err"; then
    cat "$WORK/render/$name.err"; fail "helm template $*"
  fi
  RENDERINGS=$((RENDERINGS + 1))
  echo "ok  $name"
}
render helm-default "$RELEASE" "$CHART" --namespace "$NAMESPACE"
for f in "$CHART"/ci/*.yaml; do
  render "helm-ci-$(basename "$f" .yaml)" "$RELEASE" "$CHART" --namespace "$NAMESPACE" -f "$f"
done
# Names must hold for any release name/namespace, not only "crm".
render helm-release-payments payments "$CHART" --namespace payments -f "$CHART/ci/per-service-values.yaml"
# NOTES.txt is not rendered by `helm template`: render it through a scratch copy of the chart.
cp -r "$CHART" "$WORK/notes-chart"
{ echo '{{- define "crm.notesCheck" -}}'; cat "$CHART/templates/NOTES.txt"; echo '{{- end -}}'
  echo 'notes: {{ include "crm.notesCheck" . | toJson }}'; } >"$WORK/notes-chart/templates/notes-check.yaml"
for f in "" "$CHART"/ci/*.yaml; do
  "$HELM" template "$RELEASE" "$WORK/notes-chart" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
    ${f:+-f "$f"} --show-only templates/notes-check.yaml >/dev/null || fail "NOTES.txt does not render${f:+ with $f}"
done
echo "ok  NOTES.txt renders for the default values and every ci file"

step "kubectl kustomize"
for dir in k8s/base k8s/overlays/*/; do
  dir="${dir%/}"
  name="k8s-$(basename "$dir")"
  if ! "$KUBECTL" kustomize "$dir" >"$WORK/render/$name.yaml" 2>"$WORK/render/$name.err"; then
    cat "$WORK/render/$name.err"; fail "kubectl kustomize $dir"
  fi
  RENDERINGS=$((RENDERINGS + 1))
  echo "ok  $name ($dir)"
done

step "policy, references and CRD structure (scripts/deploy/check_manifests.py)"
set +e
"$PY" scripts/deploy/check_manifests.py --out "$WORK/out" "$WORK"/render/*.yaml >"$WORK/policy.txt"
rc=$?
set -e
grep -v '^SUMMARY' "$WORK/policy.txt" || true
[[ $rc -eq 0 ]] || fail "policy check found violations (above)"
read -r _ OBJECTS CORE CRDS VIOLATIONS < <(grep '^SUMMARY' "$WORK/policy.txt")
echo "ok  $OBJECTS objects: $CORE core, $CRDS CRDs checked structurally, $VIOLATIONS violations"

step "config keys: every crm.toml key and CRM__ variable is one the binary knows"
# The binary rejects unknown keys (exit 64); its keys are documented in services/platform/src/config.rs.
"$PY" scripts/deploy/check_config_keys.py services/platform/src/config.rs "$WORK"/render/*.yaml \
  || fail "rendered config sets keys the crm binary does not know (above)"

step "kubernetes-validate --strict -k $KUBE_VERSION"
for f in "$WORK"/out/*.core.yaml; do
  if ! "$KV" --strict -k "$KUBE_VERSION" --quiet "$f"; then
    fail "schema validation of $(basename "$f" .core.yaml)"
  fi
  echo "ok  $(basename "$f" .core.yaml): $(grep -c '^kind:' "$f") objects"
done
echo "note: ServiceMonitor and PrometheusRule (monitoring.coreos.com CRDs) have no bundled schema;" \
  "they were checked structurally above and their PromQL by promtool below."

step "trivy config: Kubernetes best-practice checks (embedded checks, offline)"
mkdir -p "$WORK/trivy"
cp "$WORK"/out/*.core.yaml "$WORK/trivy/"
trivy() { "$TRIVY" config --skip-check-update --cache-dir "$TOOLS/trivy-cache" --quiet --exit-code 1 "$@"; }
trivy "$WORK/trivy" || fail "trivy config found misconfigurations (above)"
echo "ok  no findings at any severity in $(ls "$WORK/trivy" | wc -l) renderings"
# No container engine here: the Dockerfile is linted statically (base tags, USER, HEALTHCHECK, ...).
mkdir -p "$WORK/dockerfile" && cp Dockerfile "$WORK/dockerfile/Dockerfile"
trivy "$WORK/dockerfile" || fail "trivy config found Dockerfile misconfigurations (above)"
grep -q '^USER 10001:10001$' Dockerfile || fail "Dockerfile must run as USER 10001:10001 (the chart's runAsUser)"
grep -q 'SQLX_OFFLINE=true' Dockerfile || fail "Dockerfile must build with SQLX_OFFLINE=true"
echo "ok  Dockerfile: no findings; USER 10001:10001; SQLX_OFFLINE"

step "promtool: PromQL of alerts and dashboard panels, alert unit tests"
for f in "$WORK"/out/*rules.yaml; do
  "$PROMTOOL" check rules "$f" >"$WORK/promtool.txt" 2>&1 || { cat "$WORK/promtool.txt"; fail "promtool check rules $(basename "$f")"; }
  echo "ok  $(basename "$f"): $(grep -o '[0-9]* rules found' "$WORK/promtool.txt")"
done
cp scripts/deploy/alerts.test.yaml "$WORK/out/alerts.test.yaml"
cp "$WORK/out/helm-ci-per-service-values.rules.yaml" "$WORK/out/crm.rules.yaml"
(cd "$WORK/out" && "$PROMTOOL" test rules alerts.test.yaml) >"$WORK/promtool.txt" 2>&1 \
  || { cat "$WORK/promtool.txt"; fail "promtool test rules scripts/deploy/alerts.test.yaml"; }
echo "ok  alert unit tests ($(grep -c 'alertname:' scripts/deploy/alerts.test.yaml) expectations)"

step "self-tests: the checks reject bad input"
SELFTESTS=0
expect_fail() { # description, expected substrings..., -- command...
  local what=$1; shift
  local -a want=()
  while [[ $1 != -- ]]; do want+=("$1"); shift; done
  shift
  if "$@" >"$WORK/selftest/out.txt" 2>&1; then
    cat "$WORK/selftest/out.txt"; fail "self-test '$what': expected a failure, got success"
  fi
  for w in "${want[@]}"; do
    grep -qF -- "$w" "$WORK/selftest/out.txt" || { cat "$WORK/selftest/out.txt"; fail "self-test '$what': output lacks '$w'"; }
  done
  SELFTESTS=$((SELFTESTS + 1))
  echo "ok  $what"
}
for f in scripts/deploy/testdata/bad-values/*.yaml; do
  expect="$(sed -n '1s/^# expect: //p' "$f")"
  expect_fail "schema/template rejects $(basename "$f")" "$expect" -- \
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" -f "$f"
done
expect_fail "policy rejects scripts/deploy/testdata/bad-manifest.yaml" \
  P1-run-as-non-root P2-read-only-root-fs P3-no-privilege-escalation P4-drop-all-capabilities \
  P5-memory-limit P6-probes P7-seccomp P9-pinned-image X1-hpa-owns-replicas X2-selector-matches X4-configmap-ref X7-duplicate-env -- \
  "$PY" scripts/deploy/check_manifests.py --out "$WORK/selftest/a" scripts/deploy/testdata/bad-manifest.yaml
"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
  -f scripts/deploy/testdata/insecure-values.yaml >"$WORK/selftest/insecure.yaml"
expect_fail "policy rejects the chart rendered with testdata/insecure-values.yaml" \
  P2-read-only-root-fs P3-no-privilege-escalation "Deployment/crm-customer [crm]" "Job/crm-migrate [migrate]" -- \
  "$PY" scripts/deploy/check_manifests.py --out "$WORK/selftest/b" "$WORK/selftest/insecure.yaml"
expect_fail "trivy rejects scripts/deploy/testdata/bad-manifest.yaml" KSV-0014 KSV-0012 -- \
  trivy scripts/deploy/testdata/bad-manifest.yaml
expect_fail "kubernetes-validate --strict rejects an unknown field" "'selectr' was unexpected" -- \
  "$KV" --strict -k "$KUBE_VERSION" --quiet scripts/deploy/testdata/bad-schema.yaml

ELAPSED=$((SECONDS - START))
printf '\ndeploy checks: %d renderings, %d objects validated (%d against Kubernetes %s schemas, %d CRDs structurally), %d policy violations, %d self-tests passed, %ds\n' \
  "$RENDERINGS" "$OBJECTS" "$CORE" "$KUBE_VERSION" "$CRDS" "$VIOLATIONS" "$SELFTESTS" "$ELAPSED"
