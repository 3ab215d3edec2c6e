#!/usr/bin/env python3
"""Writes helm/crm/dashboards/crm-overview.json, the Grafana dashboard the chart ships.

Edit this file, not the JSON: `python3 scripts/deploy/gen_dashboard.py` regenerates it, and
check-deploy.sh fails when the committed JSON differs from what this script writes.
Only metrics the binary exports (crm_*) and the usual cluster metrics (kube-state-metrics,
cAdvisor) are used.
"""
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parents[2] / "helm/crm/dashboards/crm-overview.json"
SEL = 'namespace="$namespace", job=~"$job", service=~"$service"'
JSEL = 'namespace="$namespace", job=~"$job"'
RI = "$__rate_interval"
ERR = '(?i)(unknown|internal|unavailable|deadline_?exceeded|data_?loss|unimplemented)'

_next_id = iter(range(1, 1000))


def target(expr, legend, ref):
    return {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr,
            "legendFormat": legend, "refId": ref, "range": True}


def panel(title, desc, exprs, unit, x, y, w=12, h=8, kind="timeseries", stack=False):
    p = {
        "id": next(_next_id), "type": kind, "title": title, "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(exprs)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute", "steps": [{"color": "red", "value": None},
                                          {"color": "orange", "value": 0.99},
                                          {"color": "green", "value": 0.999}]}
        p["fieldConfig"]["defaults"]["decimals"] = 3
    return p


def row(title, y):
    return {"id": next(_next_id), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
            "allValue": ".*" if multi else None,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {}}


def dashboard():
    req = f"crm_grpc_requests_total{{{SEL}}}"
    dur = f"crm_grpc_request_duration_seconds_bucket{{{SEL}}}"
    panels = [
        row("Traffic and errors", 0),
        panel("Requests per second by service", "All gRPC calls, every code.",
              [(f"sum by (service) (rate({req}[{RI}]))", "{{service}}")], "reqps", 0, 1),
        panel("Error ratio by code", "Share of calls ending with each non-OK code, per service. "
              "Client-side codes (INVALID_ARGUMENT, NOT_FOUND, ...) are normal in small numbers; "
              "UNAVAILABLE / INTERNAL / DEADLINE_EXCEEDED burn the SLO.",
              [(f'sum by (service, code) (rate(crm_grpc_requests_total{{{SEL}, code!~"(?i)ok"}}[{RI}]))'
                f" / ignoring(code) group_left sum by (service) (rate({req}[{RI}]))",
                "{{service}} {{code}}")], "percentunit", 12, 1),
        panel("Availability over the range", "1 - server-error ratio over the dashboard's time range "
              "(the SLO's measure).",
              [(f'1 - (sum by (service) (increase(crm_grpc_requests_total{{{SEL}, code=~"{ERR}"}}[$__range]))'
                f" / sum by (service) (increase({req}[$__range])))", "{{service}}")],
              "percentunit", 0, 9, w=24, h=4, kind="stat"),
        row("Latency and load", 13),
        panel("Latency p50 / p99 by service", "From crm_grpc_request_duration_seconds; streaming "
              "methods stretch p99 by design.",
              [(f"histogram_quantile(0.5, sum by (service, le) (rate({dur}[{RI}])))", "p50 {{service}}"),
               (f"histogram_quantile(0.99, sum by (service, le) (rate({dur}[{RI}])))", "p99 {{service}}")],
              "s", 0, 14),
        panel("Slowest methods (p99, top 10)", "Which RPCs drive the tail.",
              [(f"topk(10, histogram_quantile(0.99, sum by (service, method, le) (rate({dur}[{RI}]))))",
                "{{service}} {{method}}")], "s", 12, 14),
        panel("In-flight requests by pod", "crm_grpc_in_flight_requests: uneven pods mean pinned "
              "HTTP/2 connections (see the chart README, gRPC balancing); near "
              "server.concurrency_limit means load shedding.",
              [(f"sum by (pod, service) (crm_grpc_in_flight_requests{{{SEL}}})", "{{pod}} {{service}}")],
              "short", 0, 22),
        panel("Requests per second by pod", "Balance check: pods of one service should be close.",
              [(f"sum by (pod) (rate({req}[{RI}]))", "{{pod}}")], "reqps", 12, 22),
        row("Cache and database", 30),
        panel("Cache hit ratio by tier", "local = in-process tier, redis = shared tier.",
              [(f'sum by (tier) (rate(crm_cache_requests_total{{{JSEL}, result="hit"}}[{RI}]))'
                f" / sum by (tier) (rate(crm_cache_requests_total{{{JSEL}}}[{RI}]))", "{{tier}}")],
              "percentunit", 0, 31, w=8),
        panel("Cache errors", "Non-zero: Redis trouble; calls are served from PostgreSQL meanwhile.",
              [(f'sum by (job, tier) (rate(crm_cache_requests_total{{{JSEL}, result="error"}}[{RI}]))',
                "{{job}} {{tier}}")], "reqps", 8, 31, w=8),
        panel("Database pool connections by state", "Per Deployment; idle at 0 with requests in "
              "flight means calls wait for a connection.",
              [(f"sum by (job, state) (crm_db_pool_connections{{{JSEL}}})", "{{job}} {{state}}")],
              "short", 16, 31, w=8),
        row("Pods", 39),
        panel("Pod restarts", "kube-state-metrics; exit code 64 = bad config value.",
              [('sum by (pod) (increase(kube_pod_container_status_restarts_total{namespace="$namespace", '
                f'container="crm", pod=~"($job)-.*"}}[{RI}]))', "{{pod}}")], "short", 0, 40, w=8),
        panel("Available replicas / HPA desired", "kube-state-metrics.",
              [('sum by (deployment) (kube_deployment_status_replicas_available{namespace="$namespace", '
                'deployment=~"$job"})', "available {{deployment}}"),
               ('sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas'
                '{namespace="$namespace", horizontalpodautoscaler=~"$job"})',
                "desired {{horizontalpodautoscaler}}")], "short", 8, 40, w=8),
        panel("CPU and memory per pod", "cAdvisor: CPU cores used and memory working set.",
              [('sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="$namespace", '
                f'container="crm", pod=~"($job)-.*"}}[{RI}]))', "cpu {{pod}}"),
               ('sum by (pod) (container_memory_working_set_bytes{namespace="$namespace", '
                'container="crm", pod=~"($job)-.*"}) / 1e9', "mem GB {{pod}}")],
              "short", 16, 40, w=8),
    ]
    return {
        "title": "CRM Suite / gRPC services",
        "uid": "crm-suite-overview",
        "tags": ["crm-suite", "grpc"],
        "description": "Per-service traffic, errors, latency, load balance, cache, database pool "
                       "and pods of CRM Suite (helm/crm).",
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39,
        "time": {"from": "now-3h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "refresh": 1, "hide": 0},
            var("namespace", "Namespace", "label_values(crm_grpc_requests_total, namespace)", multi=False),
            var("job", "Deployment", 'label_values(crm_grpc_requests_total{namespace="$namespace"}, job)'),
            var("service", "gRPC service",
                'label_values(crm_grpc_requests_total{namespace="$namespace", job=~"$job"}, service)'),
        ]},
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != render():
            sys.exit(f"{OUT} is stale: run python3 scripts/deploy/gen_dashboard.py")
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(render())
