#!/usr/bin/env python3
"""Measures stale reads across two crm instances; used by bench/redis-outage.sh.

    staleness_probe.py --reader ADDR --writer ADDR --token T --id CUSTOMER_ID --out FILE.jsonl \
                       --stop-file PATH [--update-every 0.25] [--read-every 0.02]

A writer thread renames the customer through the writer instance (display_name
"stale-probe <n>", n = 1, 2, ...) every --update-every seconds; a reader thread reads it through
the reader instance in a loop, pausing --read-every seconds between reads (each read costs a
process, and the bench shares its cores with the servers). Every call is one `curl --http2-prior-knowledge` with a
hand-encoded gRPC body (as bench/grpc_body.py does), so no gRPC library is needed. Each call is
written to FILE.jsonl as it ends:

    {"kind": "update", "n": 3, "start": t0, "end": t1, "status": 0}
    {"kind": "read", "seen": 2, "start": t0, "end": t1, "status": 0}

(times from time.time(), grpc-status from the trailers). It stops when --stop-file exists.
`summarize` (below) turns the file into stale windows: a read is stale if it started after
update n was acknowledged (its call returned) and saw a lower n; its stale age is its start
minus the acknowledgement of the first update it missed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_body import f_bytes, f_string, frame  # noqa: E402

SERVICE = "crm.customer.v1.CustomerService"
NAME = re.compile(rb"stale-probe (\d+)")


def call(addr, method, body, token):
    """One unary call; returns (grpc-status or -1, response bytes)."""
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "--max-time", "10",
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-H", f"authorization: Bearer {token}", "--data-binary", "@-",
         "-D", "/dev/stderr", f"http://{addr}/{SERVICE}/{method}"],
        input=frame(body), capture_output=True)
    status = -1
    for line in out.stderr.decode(errors="replace").splitlines():
        if line.lower().startswith("grpc-status:"):
            status = int(line.split(":", 1)[1].strip())
    return status, out.stdout


def writer(args, log, lock, stop):
    n = 0
    while not stop.is_set():
        n += 1
        customer = f_string(1, args.id) + f_string(3, f"stale-probe {n}")
        body = f_bytes(1, customer) + f_bytes(2, f_string(1, "display_name"))
        start = time.time()
        status, _ = call(args.writer, "UpdateCustomer", body, args.token)
        end = time.time()
        with lock:
            log.write(json.dumps({"kind": "update", "n": n, "start": start, "end": end,
                                  "status": status}) + "\n")
            log.flush()
        if status != 0:
            n -= 1  # not written: the next update reuses the number
        stop.wait(args.update_every)


def reader(args, log, lock, stop):
    body = f_string(1, args.id)
    while not stop.is_set():
        start = time.time()
        status, response = call(args.reader, "GetCustomer", body, args.token)
        end = time.time()
        m = NAME.search(response) if status == 0 else None
        with lock:
            log.write(json.dumps({"kind": "read", "seen": int(m.group(1)) if m else 0,
                                  "start": start, "end": end, "status": status}) + "\n")
            log.flush()
        stop.wait(args.read_every)


def run(args):
    stop = threading.Event()
    lock = threading.Lock()
    with open(args.out, "w") as log:
        threads = [threading.Thread(target=f, args=(args, log, lock, stop))
                   for f in (writer, reader)]
        for t in threads:
            t.start()
        while not os.path.exists(args.stop_file):
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()


def summarize(path, start=None, end=None):
    """Stale reads among the reads that started in [start, end) (all when None)."""
    updates, reads = [], []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            (updates if rec["kind"] == "update" else reads).append(rec)
    acked = {u["n"]: u["end"] for u in updates if u["status"] == 0}
    in_window = [r for r in reads
                 if (start is None or r["start"] >= start) and (end is None or r["start"] < end)]
    stale, longest = 0, 0.0
    for r in in_window:
        if r["status"] != 0:
            continue
        missed = r["seen"] + 1
        if missed in acked and acked[missed] < r["start"]:
            stale += 1
            longest = max(longest, r["start"] - acked[missed])
    return {
        "reads": len(in_window),
        "read_failures": sum(1 for r in in_window if r["status"] != 0),
        "updates": sum(1 for u in updates
                       if (start is None or u["start"] >= start) and (end is None or u["start"] < end)),
        "update_failures": sum(1 for u in updates if u["status"] != 0
                               and (start is None or u["start"] >= start)
                               and (end is None or u["start"] < end)),
        "stale_reads": stale,
        "longest_stale_ms": round(longest * 1000, 1),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reader", required=True)
    p.add_argument("--writer", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--update-every", type=float, default=0.25)
    p.add_argument("--read-every", type=float, default=0.02)
    run(p.parse_args())


if __name__ == "__main__":
    main()
