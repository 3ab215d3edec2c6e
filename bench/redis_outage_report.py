#!/usr/bin/env python3
"""Turns a bench/redis-outage.sh run into its report (bench/results/redis-outage.{md,json}).

    redis_outage_report.py --results R.jsonl --phases P.jsonl --probe PROBE.jsonl
        --killed-at T --back-at T --commit C --cores N --h2load-args S --binary PATH
        [--server-log NAME=FILE ...] --md OUT.md --json OUT.json [--strict]

R.jsonl holds one row per phase from `report.py scenario`; P.jsonl the phases' wall-clock
windows; PROBE.jsonl the staleness probe's calls (bench/staleness_probe.py).
"""
import argparse
import datetime
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from staleness_probe import summarize  # noqa: E402

STALE_TARGET_MS = 1000.0


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def failures(row):
    h2 = row.get("h2load", {})
    return (int(row.get("grpc_errors") or 0) + row.get("http_non_200", 0) + row.get("incomplete", 0)
            + h2.get("req_failed", 0) + h2.get("req_errored", 0) + h2.get("req_timeout", 0))


def cache_transitions(path):
    """The cache's state changes a server logged (JSON lines), in order."""
    wanted = re.compile(r"Redis marked down|connected to Redis|Redis unreachable|"
                        r"in-process cache tier (on|off)|lost the invalidation subscription")
    seen = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            message = rec.get("message") or rec.get("fields", {}).get("message", "")
            if wanted.search(message):
                seen.append({"at": rec.get("timestamp", ""), "message": message})
    return seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--phases", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--killed-at", type=float, required=True)
    p.add_argument("--back-at", type=float, required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--cores", required=True)
    p.add_argument("--h2load-args", required=True)
    p.add_argument("--binary", required=True, help="the crm binary the servers ran")
    p.add_argument("--server-log", action="append", default=[])
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--strict", action="store_true")
    args = p.parse_args()

    rows = {r["scenario"]: r for r in load_jsonl(args.results)}
    windows = {w["phase"]: w for w in load_jsonl(args.phases)}
    phases = []
    for name in ("baseline", "redis-up", "redis-killed", "redis-back"):
        r, w = rows[name], windows[name]
        probe = summarize(args.probe, w["start"], w["end"]) if name != "baseline" else None
        phases.append({
            "phase": name, "server": r["server"], "requests": r["requests"],
            "seconds": r["seconds"], "throughput_rps": r["throughput_rps"],
            "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
            "failures": failures(r), "server_grpc_codes": r["server_grpc_codes"],
            "cache": r["cache"], "probe": probe,
        })
    by = {ph["phase"]: ph for ph in phases}
    overall = summarize(args.probe)
    base, killed = by["baseline"], by["redis-killed"]
    total_failures = sum(ph["failures"] for ph in phases) + overall["read_failures"] + overall["update_failures"]
    targets = [
        ("0 failed calls (load and probe, every phase)", total_failures == 0, f"{total_failures} failed"),
        ("redis-killed throughput >= 50% of cache-off", killed["throughput_rps"] >= 0.5 * base["throughput_rps"],
         f"{killed['throughput_rps']:.0f} vs {base['throughput_rps']:.0f} req/s "
         f"({100 * killed['throughput_rps'] / base['throughput_rps']:.0f}%)"),
        ("redis-killed p99 <= 2 x cache-off p99", killed["p99_ms"] <= 2 * base["p99_ms"],
         f"{killed['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms"),
        (f"longest stale read <= {STALE_TARGET_MS:.0f} ms", overall["longest_stale_ms"] <= STALE_TARGET_MS,
         f"{overall['longest_stale_ms']:.0f} ms ({overall['stale_reads']} stale of {overall['reads']} reads)"),
    ]
    transitions = {}
    for spec in args.server_log:
        name, path = spec.split("=", 1)
        transitions[name] = cache_transitions(path)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    iso = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]  # noqa: E731
    md = [
        "# Redis outage under load: two instances, Redis SIGKILLed and restarted",
        "",
        f"Run {when} on commit `{args.commit}`, {args.cores} cores, by `bench/redis-outage.sh` "
        "(see bench/README.md). 32 concurrent GetCustomer callers on instance A (one cached "
        "customer); C is a server with an empty `redis.url` (cache off, every read from "
        "PostgreSQL). Meanwhile the staleness probe renames another customer through instance B "
        "every 250 ms and reads it through A in a loop.",
        "",
        f"Servers: `{args.binary}`. h2load: {args.h2load_args}. Redis killed at {iso(args.killed_at)} UTC, restarted at "
        f"{iso(args.back_at)} UTC.",
        "",
        "| phase | server | requests | s | req/s | p50 ms | p99 ms | max ms | failed | probe reads | stale reads | longest stale ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ph in phases:
        pr = ph["probe"] or {}
        md.append(f"| {ph['phase']} | {ph['server']} | {ph['requests']} | {ph['seconds']:.1f} | "
                  f"{ph['throughput_rps']:.0f} | {ph['p50_ms']:.2f} | {ph['p99_ms']:.2f} | "
                  f"{ph['max_ms']:.1f} | {ph['failures']} | {pr.get('reads', '')} | "
                  f"{pr.get('stale_reads', '')} | {pr.get('longest_stale_ms', '')} |")
    md += ["", "Cache look-ups counted by the server in each phase: " + "; ".join(
        f"{ph['phase']} {ph['cache']}" for ph in phases if ph["cache"]) + ".", "",
        f"Probe over the whole run: {overall['updates']} updates through B "
        f"({overall['update_failures']} failed), {overall['reads']} reads through A "
        f"({overall['read_failures']} failed), {overall['stale_reads']} stale, longest stale "
        f"window {overall['longest_stale_ms']} ms (a read is stale when it starts after an "
        "update was acknowledged and returns an older name; its window is its start minus that "
        "acknowledgement).", "", "## Targets", ""]
    for name, ok, detail in targets:
        md.append(f"- {'PASS' if ok else 'MISS'} {name}: {detail}")
    md += ["", "## Cache state changes the instances logged", ""]
    for name, events in transitions.items():
        md.append(f"- {name}: " + ("; ".join(f"{e['at'][11:23]} {e['message']}" for e in events) or "none"))
    md.append("")
    text = "\n".join(md)
    print(text)
    with open(args.md, "w") as f:
        f.write(text)
    with open(args.json, "w") as f:
        json.dump({"date": when, "commit": args.commit, "cores": args.cores,
                   "h2load_args": args.h2load_args, "binary": args.binary, "killed_at": args.killed_at,
                   "back_at": args.back_at, "phases": phases, "probe": overall,
                   "targets": [{"target": n, "pass": ok, "detail": d} for n, ok, d in targets],
                   "cache_transitions": transitions}, f, indent=2)
    if args.strict and not all(ok for _, ok, _ in targets):
        sys.exit(3)


if __name__ == "__main__":
    main()
