#!/usr/bin/env python3
"""Policy and consistency checks over rendered Kubernetes manifests (helm template / kustomize).

Usage: check_manifests.py --out DIR RENDERING.yaml [...]

For each rendering it
  * splits the objects: core kinds go to DIR/<name>.core.yaml for kubernetes-validate --strict;
    CRD kinds the Kubernetes schemas do not cover (ServiceMonitor, PrometheusRule) are checked
    structurally here, and PrometheusRule groups are written to DIR/<name>.rules.yaml for promtool;
  * checks every container of every pod template (policy P*) and the references between objects
    (X*), listing each violation as `VIOLATION <rendering> <kind>/<name> [container] <rule>: <why>`;
  * extracts the PromQL of Grafana dashboards (ConfigMaps labelled grafana_dashboard) into
    DIR/<name>.dashboard-rules.yaml, so promtool parses every panel query too.
Prints one `SUMMARY <objects> <schema-objects> <crd-objects> <violations>` line and exits 1 when
there is any violation (2 on unreadable input).
"""
import argparse
import json
import pathlib
import re
import sys

import yaml

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"}
CRD_GROUPS = ("monitoring.coreos.com/",)
# What the `crm` binary exports; dashboards and alerts may use nothing else under crm_.
EXPORTED = {
    "crm_grpc_requests_total", "crm_grpc_request_duration_seconds_bucket",
    "crm_grpc_request_duration_seconds_sum", "crm_grpc_request_duration_seconds_count",
    "crm_grpc_in_flight_requests", "crm_cache_requests_total", "crm_db_pool_connections",
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


class Report:
    def __init__(self):
        self.violations = []

    def add(self, rendering, obj, rule, why, container=None):
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if container:
            where += f" [{container}]"
        self.violations.append(f"VIOLATION {rendering} {where} {rule}: {why}")


def pod_spec(obj):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def pod_labels(obj):
    if obj.get("kind") == "Pod":
        return obj.get("metadata", {}).get("labels") or {}
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"].get("metadata", {}).get("labels") or {}
    return ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def check_pod(rendering, obj, rep):
    ps = pod_spec(obj)
    psc = ps.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if ps.get(flag):
            rep.add(rendering, obj, "P8-host-namespaces", f"{flag} is true")
    containers = [(c, False) for c in ps.get("initContainers") or []] + [(c, True) for c in ps.get("containers") or []]
    if not ps.get("containers"):
        rep.add(rendering, obj, "P0-containers", "pod template has no containers")
    for c, regular in containers:
        name = c.get("name")
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        user = sc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True or user == 0:
            rep.add(rendering, obj, "P1-run-as-non-root", "runAsNonRoot must be true (and runAsUser not 0)", name)
        if sc.get("readOnlyRootFilesystem") is not True:
            rep.add(rendering, obj, "P2-read-only-root-fs", "securityContext.readOnlyRootFilesystem must be true", name)
        if sc.get("allowPrivilegeEscalation") is not False:
            rep.add(rendering, obj, "P3-no-privilege-escalation", "securityContext.allowPrivilegeEscalation must be false", name)
        drop = ((sc.get("capabilities") or {}).get("drop")) or []
        if "ALL" not in drop:
            rep.add(rendering, obj, "P4-drop-all-capabilities", "securityContext.capabilities.drop must include ALL", name)
        if (sc.get("capabilities") or {}).get("add"):
            rep.add(rendering, obj, "P4-drop-all-capabilities", "capabilities.add must be empty", name)
        if sc.get("privileged"):
            rep.add(rendering, obj, "P8-privileged", "privileged container", name)
        if not (((c.get("resources") or {}).get("limits") or {}).get("memory")):
            rep.add(rendering, obj, "P5-memory-limit", "resources.limits.memory is required", name)
        if not (((c.get("resources") or {}).get("requests") or {}).get("cpu")):
            rep.add(rendering, obj, "P5-cpu-request", "resources.requests.cpu is required (HPA and scheduling)", name)
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            rep.add(rendering, obj, "P7-seccomp", "seccompProfile RuntimeDefault (pod or container) is required", name)
        names = [e.get("name") for e in c.get("env") or []]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            rep.add(rendering, obj, "X7-duplicate-env", f"env {dup} is set more than once (the last one silently wins)", name)
        image = c.get("image") or ""
        if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            rep.add(rendering, obj, "P9-pinned-image", f"image {image!r} needs a version tag or digest", name)
        if regular and obj.get("kind") in LONG_RUNNING:
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    rep.add(rendering, obj, "P6-probes", f"{probe} is required", name)


def selects(selector, labels):
    """matchLabels/matchExpressions (or a plain Service selector map) against pod labels."""
    if selector is None:
        return False
    match = selector.get("matchLabels", None) if ("matchLabels" in selector or "matchExpressions" in selector) else selector
    for k, v in (match or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []) if isinstance(selector.get("matchExpressions"), list) else []:
        op, key, vals = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_refs(rendering, objs, rep):
    ns = lambda o: o.get("metadata", {}).get("namespace")
    workloads = [o for o in objs if o.get("kind") in POD_KINDS]
    long_running = [o for o in workloads if o.get("kind") in LONG_RUNNING]
    by_kind_name = {(o.get("kind"), o["metadata"]["name"], ns(o)) for o in objs}
    hpa_targets = set()
    for o in objs:
        kind, spec = o.get("kind"), o.get("spec") or {}
        if kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            key = (ref.get("kind"), ref.get("name"), ns(o))
            hpa_targets.add(key)
            if key not in by_kind_name:
                rep.add(rendering, o, "X1-hpa-target", f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not rendered")
            if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
                rep.add(rendering, o, "X1-hpa-range", "minReplicas > maxReplicas")
        elif kind == "Service":
            if spec.get("selector") and not any(selects(spec["selector"], pod_labels(w)) for w in long_running if ns(w) == ns(o)):
                rep.add(rendering, o, "X2-selector-matches", "Service selects no rendered pod template")
            target_ports = {p.get("targetPort") for p in spec.get("ports") or []}
            for w in long_running:
                if ns(w) == ns(o) and spec.get("selector") and selects(spec["selector"], pod_labels(w)):
                    names = {p.get("name") for c in pod_spec(w).get("containers", []) for p in c.get("ports") or []}
                    nums = {p.get("containerPort") for c in pod_spec(w).get("containers", []) for p in c.get("ports") or []}
                    for tp in target_ports:
                        if tp is not None and tp not in names and tp not in nums:
                            rep.add(rendering, o, "X2-target-port", f"targetPort {tp!r} is not a port of {w['metadata']['name']}")
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = spec.get("selector") if kind == "PodDisruptionBudget" else spec.get("podSelector")
            matched = [w for w in long_running if ns(w) == ns(o) and selects(sel, pod_labels(w))]
            if not matched:
                rep.add(rendering, o, "X2-selector-matches", f"{kind} selects no rendered pod template")
            if kind == "PodDisruptionBudget":
                for w in matched:
                    replicas = (w.get("spec") or {}).get("replicas")
                    if isinstance(spec.get("minAvailable"), int) and isinstance(replicas, int) and spec["minAvailable"] >= replicas:
                        rep.add(rendering, o, "X3-pdb-blocks-drain", f"minAvailable {spec['minAvailable']} >= replicas {replicas} of {w['metadata']['name']}")
    for w in workloads:
        key = (w.get("kind"), w["metadata"]["name"], ns(w))
        if key in hpa_targets and "replicas" in (w.get("spec") or {}):
            rep.add(rendering, w, "X1-hpa-owns-replicas", "spec.replicas is set although an HPA scales this workload")
        ps = pod_spec(w)
        for vol in ps.get("volumes") or []:
            cm = (vol.get("configMap") or {}).get("name")
            if cm and ("ConfigMap", cm, ns(w)) not in by_kind_name:
                rep.add(rendering, w, "X4-configmap-ref", f"volume {vol.get('name')} mounts ConfigMap {cm} that is not rendered")
        grace = ps.get("terminationGracePeriodSeconds", 30)
        for c in ps.get("containers") or []:
            sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
            if sleep and grace <= sleep:
                rep.add(rendering, w, "X5-grace-period", f"terminationGracePeriodSeconds {grace} <= preStop sleep {sleep}", c.get("name"))


def metric_names(expr):
    # crm_* identifiers that are metric names (recording rules carry colons and are skipped).
    return {m for m in re.findall(r"(?<![\w:])(crm_[a-z0-9_]+)(?![\w:])", expr)}


def check_promql_metrics(rendering, obj, exprs, rep):
    for expr in exprs:
        for m in metric_names(expr) - EXPORTED:
            rep.add(rendering, obj, "X6-known-metrics", f"{m} is not a metric the crm binary exports")


def check_crd(rendering, obj, out_rules, rep):
    kind, spec = obj.get("kind"), obj.get("spec")
    if not isinstance(spec, dict):
        rep.add(rendering, obj, "C0-spec", "spec must be an object")
        return
    if kind == "ServiceMonitor":
        allowed = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                   "sampleLimit", "attachMetadata"}
        for k in set(spec) - allowed:
            rep.add(rendering, obj, "C1-servicemonitor", f"unknown field spec.{k}")
        if not isinstance(spec.get("selector"), dict):
            rep.add(rendering, obj, "C1-servicemonitor", "spec.selector is required")
        eps = spec.get("endpoints")
        if not isinstance(eps, list) or not eps:
            rep.add(rendering, obj, "C1-servicemonitor", "spec.endpoints must be a non-empty list")
        for ep in eps or []:
            if not (ep.get("port") or ep.get("targetPort")):
                rep.add(rendering, obj, "C1-servicemonitor", "each endpoint needs port or targetPort")
            for d in ("interval", "scrapeTimeout"):
                if d in ep and not DURATION.match(str(ep[d])):
                    rep.add(rendering, obj, "C1-servicemonitor", f"endpoint {d} {ep[d]!r} is not a duration")
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if set(spec) - {"groups"} or not isinstance(groups, list) or not groups:
            rep.add(rendering, obj, "C2-prometheusrule", "spec must hold only a non-empty groups list")
            return
        exprs = []
        for g in groups:
            for r in g.get("rules") or []:
                if ("alert" in r) == ("record" in r):
                    rep.add(rendering, obj, "C2-prometheusrule", f"rule needs exactly one of alert/record: {r}")
                if "alert" in r and not (r.get("labels") or {}).get("severity"):
                    rep.add(rendering, obj, "C2-prometheusrule", f"alert {r['alert']} has no severity label")
                if "alert" in r and not (r.get("annotations") or {}).get("summary"):
                    rep.add(rendering, obj, "C2-prometheusrule", f"alert {r['alert']} has no summary")
                exprs.append(str(r.get("expr", "")))
        check_promql_metrics(rendering, obj, exprs, rep)
        out_rules.append({"groups": groups})
    else:
        rep.add(rendering, obj, "C9-unknown-crd", f"no structural check for {obj.get('apiVersion')} {kind}")


GRAFANA_VARS = [(r"\$__rate_interval", "5m"), (r"\$__range", "1h"), (r"\$__interval", "1m"),
                (r"\$\{?[a-zA-Z_]+(:[a-z]+)?\}?", "x")]


def dashboard_rules(rendering, obj, rep):
    rules = []
    for key, text in (obj.get("data") or {}).items():
        if not key.endswith(".json"):
            continue
        try:
            dash = json.loads(text)
        except ValueError as e:
            rep.add(rendering, obj, "D1-dashboard-json", f"{key} is not JSON: {e}")
            continue
        panels = list(dash.get("panels") or [])
        for p in list(panels):
            panels.extend(p.get("panels") or [])
        exprs = [t["expr"] for p in panels for t in p.get("targets") or [] if t.get("expr")]
        if not exprs:
            rep.add(rendering, obj, "D1-dashboard-json", f"{key} has no Prometheus queries")
        check_promql_metrics(rendering, obj, exprs, rep)
        for i, e in enumerate(exprs):
            for pat, rep_with in GRAFANA_VARS:
                e = re.sub(pat, rep_with, e)
            rules.append({"record": f"dashboard:panel_query_{i}", "expr": e})
    return rules


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("renderings", nargs="+", type=pathlib.Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    total = core_total = crd_total = 0
    for path in args.renderings:
        name = path.stem
        try:
            objs = [o for o in yaml.safe_load_all(path.read_text()) if o]
        except yaml.YAMLError as e:
            print(f"ERROR {path}: not YAML: {e}", file=sys.stderr)
            return 2
        core, rules, dash = [], [], []
        for o in objs:
            if not isinstance(o, dict) or not o.get("kind") or not (o.get("metadata") or {}).get("name"):
                rep.add(name, o if isinstance(o, dict) else {}, "C0-object", "object without kind or metadata.name")
                continue
            if str(o.get("apiVersion", "")).startswith(CRD_GROUPS):
                check_crd(name, o, rules, rep)
                crd_total += 1
            else:
                core.append(o)
            if o.get("kind") in POD_KINDS:
                check_pod(name, o, rep)
            if o.get("kind") == "ConfigMap" and "grafana_dashboard" in (o["metadata"].get("labels") or {}):
                dash.extend(dashboard_rules(name, o, rep))
        check_refs(name, objs, rep)
        total += len(objs)
        core_total += len(core)
        (args.out / f"{name}.core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
        groups = [g for r in rules for g in r["groups"]]
        if groups:
            (args.out / f"{name}.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        if dash:
            (args.out / f"{name}.dashboard-rules.yaml").write_text(
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": dash}]}, sort_keys=False))
        kinds = {}
        for o in objs:
            kinds[o.get("kind")] = kinds.get(o.get("kind"), 0) + 1
        print(f"  {name}: {len(objs)} objects ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
    for v in rep.violations:
        print(v)
    print(f"SUMMARY {total} {core_total} {crd_total} {len(rep.violations)}")
    return 1 if rep.violations else 0


if __name__ == "__main__":
    sys.exit(main())
