#!/usr/bin/env python3
"""Turns h2load runs into the benchmark's numbers; used by bench/run.sh.

    report.py snapshot METRICS_URL OUT
        Saves a Prometheus scrape of a crm server (empty file when the URL is "-").
    report.py scenario --results FILE.jsonl --name N --server S --method M
                       --h2load-out F --log F --expected-bytes B [--before F --after F]
        Appends one scenario's numbers: throughput, latency percentiles from h2load's
        per-request log, the average response size (to catch gRPC errors, which h2load counts
        as successes) and, from the server's own metrics, non-OK gRPC codes and cache results.
    report.py finish --results FILE.jsonl --meta FILE.json --md OUT.md --json OUT.json
        Prints the table, the targets (PASS/MISS) and writes the markdown and JSON reports.
"""
import argparse
import json
import math
import re
import sys
import urllib.request

# --------------------------------------------------------------------------------------------
# Prometheus text parsing (just enough for counters)
# --------------------------------------------------------------------------------------------
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+([^\s]+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(3) or ""))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def counter_sum(samples, name, **want):
    total = 0.0
    for n, labels, v in samples:
        if n != name:
            continue
        if all(pred(labels.get(k, "")) for k, pred in want.items()):
            total += v
    return total


def cmd_snapshot(args):
    text = ""
    if args.url != "-":
        with urllib.request.urlopen(args.url, timeout=5) as r:
            text = r.read().decode()
    with open(args.out, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------------
# One scenario
# --------------------------------------------------------------------------------------------
def parse_h2load(text):
    res = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        res["h2load_seconds"] = secs
        res["h2load_rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
        res.update({f"req_{k}": int(v) for k, v in zip(keys, m.groups())})
    m = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data", text)
    if m:
        res["bytes_total"], res["bytes_headers"], res["bytes_data"] = map(int, m.groups())
    return res


def percentile(sorted_values, p):
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def cmd_scenario(args):
    with open(args.h2load_out) as f:
        h2 = parse_h2load(f.read())
    starts, ends, lat, non200, incomplete = [], [], [], 0, 0
    with open(args.log) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            start, status, elapsed = int(parts[0]), int(parts[1]), int(parts[2])
            if status == 0:  # no response (stream reset or connection lost)
                incomplete += 1
                continue
            if status != 200:
                non200 += 1
            starts.append(start)
            ends.append(start + elapsed)
            lat.append(elapsed)
    lat.sort()
    n = len(lat)
    window = (max(ends) - min(starts)) / 1e6 if n else float("nan")
    row = {
        "scenario": args.name,
        "server": args.server,
        "method": args.method,
        "concurrency": args.concurrency,
        "requests": n,
        "seconds": round(window, 3),
        "throughput_rps": round(n / window, 1) if n and window > 0 else 0.0,
        "p50_ms": round(percentile(lat, 50) / 1000, 3),
        "p90_ms": round(percentile(lat, 90) / 1000, 3),
        "p99_ms": round(percentile(lat, 99) / 1000, 3),
        "max_ms": round(lat[-1] / 1000, 3) if n else float("nan"),
        "http_non_200": non200,
        "incomplete": incomplete,
        "window_us": [min(starts), max(ends)] if n else None,
        "h2load": h2,
        "expected_response_bytes": args.expected_bytes,
    }
    done = h2.get("req_succeeded") or 0
    # h2load's "data" counter also counts the warm-up, but "total" and "headers" cover only the
    # measured period: (total - headers) / responses = message bytes + frame overhead (a HEADERS,
    # a DATA and a trailers frame of 9 bytes each for an OK unary call).
    if done and "bytes_total" in h2:
        row["avg_response_bytes"] = round((h2["bytes_total"] - h2["bytes_headers"]) / done - 27, 1)
    else:
        row["avg_response_bytes"] = None
    problems = []
    if h2.get("req_failed") or h2.get("req_errored") or h2.get("req_timeout"):
        problems.append("h2load reported failed/errored/timed-out requests")
    if non200:
        problems.append(f"{non200} responses with HTTP status != 200")
    if incomplete:
        problems.append(f"{incomplete} requests got no response")
    avg = row["avg_response_bytes"]
    if avg is not None and args.expected_bytes and avg < 0.9 * args.expected_bytes:
        problems.append(f"average response {avg} B < 90% of the checked response "
                        f"({args.expected_bytes} B): some calls likely ended with a gRPC error")
    if args.before and args.after:
        with open(args.before) as f:
            before = parse_metrics(f.read())
        with open(args.after) as f:
            after = parse_metrics(f.read())
        is_method = lambda v: v == args.method or v.endswith("/" + args.method)  # noqa: E731
        codes = {}
        for name, labels, v in after:
            if name == "crm_grpc_requests_total" and is_method(labels.get("method", "")):
                code = labels.get("code", "?")
                codes[code] = codes.get(code, 0) + v
        for name, labels, v in before:
            if name == "crm_grpc_requests_total" and is_method(labels.get("method", "")):
                code = labels.get("code", "?")
                codes[code] = codes.get(code, 0) - v
        codes = {k: int(v) for k, v in codes.items() if v}
        row["server_grpc_codes"] = codes
        row["grpc_errors"] = sum(v for k, v in codes.items() if k != "Ok")
        if row["grpc_errors"]:
            problems.append(f"server counted non-OK gRPC codes: {codes}")
        cache = {}
        for tier in ("local", "redis"):
            for result in ("hit", "miss", "error"):
                d = counter_sum(after, "crm_cache_requests_total", tier=lambda v, t=tier: v == t,
                                result=lambda v, r=result: v == r) - counter_sum(
                    before, "crm_cache_requests_total", tier=lambda v, t=tier: v == t,
                    result=lambda v, r=result: v == r)
                if d:
                    cache[f"{tier}_{result}"] = int(d)
        row["cache"] = cache
    else:
        row["server_grpc_codes"] = None
        row["grpc_errors"] = None
        row["cache"] = None
    row["problems"] = problems
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"    {n} requests in {window:.1f}s = {row['throughput_rps']:.0f} req/s, "
          f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
          + (f", server codes {row['server_grpc_codes']}" if row["server_grpc_codes"] is not None else "")
          + (f", cache {row['cache']}" if row["cache"] else ""))
    for p in problems:
        print(f"    WARNING: {p}")


# --------------------------------------------------------------------------------------------
# Final report
# --------------------------------------------------------------------------------------------
def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summarize_logs(specs, rows):
    """Groups the servers' WARN/ERROR lines (JSON logs) by message, code and method, and tells
    whether they fell inside a measured run on that server."""
    import datetime
    groups = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        windows = [(r["window_us"], r["scenario"]) for r in rows
                   if r["server"] == label and r.get("window_us")]
        try:
            f = open(path, errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    if re.search(r"\b(WARN|ERROR)\b", line):
                        d = {"level": "WARN/ERROR", "message": line.strip()[:120]}
                    else:
                        continue
                level = str(d.get("level", "")).upper()
                if level not in ("WARN", "ERROR", "WARN/ERROR"):
                    continue
                span = d.get("span") or {}
                detail = ", ".join(str(x) for x in (d.get("code"), span.get("rpc.method")) if x) or "-"
                phase = "outside measured runs"
                ts = d.get("timestamp")
                if ts:
                    try:
                        t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e6
                        for (lo, hi), scen in windows:
                            if lo <= t <= hi + 1e6:
                                phase = f"the measured {scen} run"
                                break
                    except ValueError:
                        pass
                key = (label, level, str(d.get("message", "")), detail, phase)
                groups[key] = groups.get(key, 0) + 1
    return [{"server": k[0], "level": k[1], "message": k[2], "detail": k[3], "phase": k[4],
             "count": v} for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]


def cmd_finish(args):
    rows = []
    with open(args.results) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    with open(args.meta) as f:
        meta = json.load(f)
    by = {r["scenario"]: r for r in rows}

    targets = []

    def target(desc, value, limit, ok, unit=""):
        targets.append({"target": desc, "value": value, "limit": limit, "unit": unit,
                        "result": "PASS" if ok else "MISS"})

    hit, ceil = by.get("get-cache-hit"), by.get("ceiling-get")
    ratio = None
    if hit and ceil and ceil["throughput_rps"]:
        ratio = hit["throughput_rps"] / ceil["throughput_rps"]
        target("GetCustomer cache hit throughput >= 50% of the ceiling's", round(ratio * 100, 1),
               50, ratio >= 0.5, "%")
    for name in ("get-cache-hit", "get-cache-miss", "create"):
        r = by.get(name)
        if r:
            target(f"{name} p99 <= 5 ms at {meta['concurrency']} concurrent streams",
                   r["p99_ms"], 5, r["p99_ms"] <= 5, "ms")
    for name in ("search", "search-1-caller"):
        r = by.get(name)
        if r:
            target(f"{name} p99 <= 50 ms ({r['concurrency']} concurrent)", r["p99_ms"], 50,
                   r["p99_ms"] <= 50, "ms")
    for key, label in (("rss_a_mb", "server A (cache on)"), ("rss_b_mb", "server B (cache off)")):
        if meta.get(key) is not None:
            target(f"{label} peak RSS <= 100 MB", meta[key], 100, meta[key] <= 100, "MB")

    problems = [f"{r['scenario']}: {p}" for r in rows for p in r.get("problems", [])]
    log_summary = summarize_logs(args.server_log or [], rows)
    for entry in log_summary:
        if entry["phase"] != "outside measured runs":
            problems.append(f"server {entry['server']} logged {entry['count']}x {entry['level']} "
                            f"{entry['message']!r} ({entry['detail']}) during {entry['phase']}")

    lines = []
    lines.append("# CRM Suite customer service benchmark")
    lines.append("")
    lines.append(f"Run {meta['date']} on commit `{meta['commit']}` — {meta['cores']} cores "
                 f"({meta['cpu']}), {meta['concurrency']} concurrent streams "
                 f"(h2load `{meta['h2load_args']}`), {meta['customers']:,} seeded customers.")
    lines.append("")
    lines.append("| scenario | server | concurrency | requests | throughput req/s | p50 ms | p99 ms | "
                 "max ms | resp bytes | non-OK gRPC |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['server']} | {r['concurrency']} | {r['requests']} | "
                     f"{r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['max_ms']:.2f} | {fmt(r['avg_response_bytes'], 0)} | "
                     f"{fmt(r['grpc_errors'])} |")
    lines.append("")
    lines.append("Server peak RSS (VmHWM after all runs): "
                 f"A (Redis + in-process cache) {fmt(meta.get('rss_a_mb'), 1)} MB, "
                 f"B (cache off) {fmt(meta.get('rss_b_mb'), 1)} MB, "
                 f"ceiling {fmt(meta.get('rss_ceiling_mb'), 1)} MB.")
    lines.append("")
    if ratio is not None:
        lines.append(f"Cache-hit GetCustomer / ceiling GetCustomer throughput: **{ratio * 100:.1f}%** "
                     f"({hit['throughput_rps']:.0f} / {ceil['throughput_rps']:.0f} req/s).")
        lines.append("")
    lines.append("## Targets")
    lines.append("")
    lines.append("| target | measured | limit | result |")
    lines.append("|---|---:|---:|---|")
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']} {t['unit']} | {t['limit']} {t['unit']} | "
                     f"{t['result']} |")
    lines.append("")
    cache_notes = [f"{r['scenario']}: {r['cache']}" for r in rows if r.get("cache")]
    if cache_notes:
        lines.append("Cache results counted by the server during each run: " + "; ".join(cache_notes) + ".")
        lines.append("")
    lines.append("## Conditions")
    lines.append("")
    for k in ("date", "commit", "cores", "cpu", "kernel", "cpu_busy_at_start", "load_average_at_start", "concurrency",
              "h2load_args", "duration_s", "warmup_s", "customers", "seed_seconds", "postgres", "redis",
              "h2load_version", "get_id", "server_log_warnings"):
        if k in meta:
            lines.append(f"- {k}: {meta[k]}")
    lines.append("")
    if log_summary:
        lines.append("## Server log: WARN and ERROR lines")
        lines.append("")
        lines.append("| server | count | level | message | detail | when |")
        lines.append("|---|---:|---|---|---|---|")
        for e in log_summary:
            lines.append(f"| {e['server']} | {e['count']} | {e['level']} | {e['message']} | "
                         f"{e['detail']} | {e['phase']} |")
        lines.append("")
        lines.append("\"Outside measured runs\" covers the timed warm-up runs, whose end resets "
                     "the calls still in flight (logged as Cancelled, or Unknown on the fastest "
                     "paths), and the correctness checks.")
        lines.append("")
    if problems:
        lines.append("## Problems seen")
        lines.append("")
        lines.extend(f"- {p}" for p in problems)
        lines.append("")
    md = "\n".join(lines)
    with open(args.md, "w") as f:
        f.write(md)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "scenarios": rows, "targets": targets,
                   "hit_over_ceiling": ratio, "server_log": log_summary,
                   "problems": problems}, f, indent=2)
        f.write("\n")

    # Console: the table, then one PASS/MISS line per target.
    print()
    print(f"{'scenario':<16} {'server':<8} {'conc':>4} {'requests':>9} {'req/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'resp B':>7} {'non-OK':>6}")
    for r in rows:
        print(f"{r['scenario']:<16} {r['server']:<8} {r['concurrency']:>4} {r['requests']:>9} "
              f"{r['throughput_rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['max_ms']:>8.2f} {fmt(r['avg_response_bytes'], 0):>7} {fmt(r['grpc_errors']):>6}")
    print()
    print(f"peak RSS: A {fmt(meta.get('rss_a_mb'), 1)} MB, B {fmt(meta.get('rss_b_mb'), 1)} MB, "
          f"ceiling {fmt(meta.get('rss_ceiling_mb'), 1)} MB")
    if ratio is not None:
        print(f"cache-hit / ceiling throughput: {ratio * 100:.1f}%")
    print()
    for t in targets:
        print(f"{t['result']:<4}  {t['target']}: {t['value']} {t['unit']} (limit {t['limit']} {t['unit']})")
    for e in log_summary:
        print(f"server {e['server']} log: {e['count']}x {e['level']} {e['message']!r} "
              f"({e['detail']}), {e['phase']}")
    for p in problems:
        print(f"WARNING: {p}")
    missed = sum(t["result"] == "MISS" for t in targets)
    print()
    print(f"{len(targets) - missed}/{len(targets)} targets met; report: {args.md}")
    if args.strict and (missed or problems):
        sys.exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("url")
    s.add_argument("out")
    s.set_defaults(func=cmd_snapshot)
    s = sub.add_parser("scenario")
    s.add_argument("--results", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--server", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--h2load-out", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--expected-bytes", type=int, default=0)
    s.add_argument("--concurrency", type=int, default=0)
    s.add_argument("--before")
    s.add_argument("--after")
    s.set_defaults(func=cmd_scenario)
    s = sub.add_parser("finish")
    s.add_argument("--results", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--strict", action="store_true")
    s.add_argument("--server-log", action="append", metavar="LABEL=PATH",
                   help="a server's log, to summarize its WARN/ERROR lines")
    s.set_defaults(func=cmd_finish)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
