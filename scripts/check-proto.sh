#!/usr/bin/env bash
# Contract checks: buf lint (STANDARD), buf format, and buf breaking (FILE) against the released
# contracts. Run from anywhere; CI runs it from the repo root.
#
# Breaking changes are checked against two references:
#  - proto/BREAKING_BASELINE: the commit of the last deliberate contract release (the contracts'
#    second pass). Every change since must be additive.
#  - origin/main, when the checkout has one that differs from HEAD: the previous main, so a branch
#    cannot remove what main already published.
# The vendored googleapis and KServe files are third-party and excluded (buf.yaml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=lib/stack.sh
. scripts/lib/stack.sh
ensure_local_dir
ensure_venv_tool buf buf-bin
BUF="$VENV_TOOL"
export BUF_CACHE_DIR="$CRM_ROOT/.local/buf-cache"

echo "buf lint"
"$BUF" lint
echo "buf format"
"$BUF" format --exclude-path proto/google --exclude-path proto/inference --diff --exit-code

breaking_against() {
  local ref="$1"
  if ! git cat-file -e "$ref^{commit}" 2>/dev/null; then
    # A shallow clone lacks the baseline; fetch the history once rather than skip the check.
    git fetch --quiet --unshallow 2>/dev/null || true
    git cat-file -e "$ref^{commit}" 2>/dev/null ||
      die "buf breaking: commit $ref is not in this clone; clone with history (git clone without --depth)"
  fi
  echo "buf breaking against $ref"
  "$BUF" breaking --against ".git#ref=$ref"
}

baseline="$(tr -d '[:space:]' <proto/BREAKING_BASELINE)"
[[ -n "$baseline" ]] || die "proto/BREAKING_BASELINE is empty"
breaking_against "$baseline"
if previous="$(git rev-parse --verify --quiet origin/main)" && [[ "$previous" != "$(git rev-parse HEAD)" ]]; then
  breaking_against "$previous"
fi
