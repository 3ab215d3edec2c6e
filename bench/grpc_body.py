#!/usr/bin/env python3
"""Hand-encodes the benchmark's gRPC request bodies (no protobuf library needed).

    grpc_body.py KIND OUT_FILE [key=value ...]

writes OUT_FILE as a gRPC-framed message (1 byte compression flag 0, 4-byte big-endian length,
protobuf bytes) for h2load's `-d`, and prints the same request as JSON on stdout for grpcurl's
`-d`, so the correctness check and the load run send the same request.

KINDs (field numbers from proto/crm/customer/v1/customer_service.proto and customer.proto):
    get     GetCustomerRequest     { string id = 1; }                          keys: id
    create  CreateCustomerRequest  { Customer customer = 1 { display_name = 3 } } keys: display_name
    list    ListCustomersRequest   { int32 page_size = 1; string filter = 3; string order_by = 4; }
    search  SearchCustomersRequest { string query = 1; int32 page_size = 2; }
"""
import json
import struct
import sys


def varint(n: int) -> bytes:
    if n < 0:  # int32/int64 negatives are 10-byte two's complement varints
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_bytes(field: int, value: bytes) -> bytes:
    """Length-delimited field (wire type 2): strings, bytes, sub-messages."""
    return tag(field, 2) + varint(len(value)) + value


def f_string(field: int, value: str) -> bytes:
    return f_bytes(field, value.encode()) if value else b""  # proto3: defaults are not sent


def f_int(field: int, value: int) -> bytes:
    return tag(field, 0) + varint(value) if value else b""


def encode(kind: str, args: dict) -> tuple[bytes, dict]:
    if kind == "get":
        return f_string(1, args["id"]), {"id": args["id"]}
    if kind == "create":
        name = args.get("display_name", "Bench Customer")
        customer = f_string(3, name)
        return f_bytes(1, customer), {"customer": {"display_name": name}}
    if kind == "list":
        size = int(args.get("page_size", 50))
        filt = args.get("filter", "")
        order = args.get("order_by", "")
        msg = f_int(1, size) + f_string(3, filt) + f_string(4, order)
        js = {"page_size": size}
        if filt:
            js["filter"] = filt
        if order:
            js["order_by"] = order
        return msg, js
    if kind == "search":
        query = args["query"]
        size = int(args.get("page_size", 20))
        return f_string(1, query) + f_int(2, size), {"query": query, "page_size": size}
    raise SystemExit(f"grpc_body.py: unknown kind {kind!r}")


def frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    kind, out = sys.argv[1], sys.argv[2]
    args = dict(a.split("=", 1) for a in sys.argv[3:])
    message, js = encode(kind, args)
    with open(out, "wb") as f:
        f.write(frame(message))
    print(json.dumps(js))


if __name__ == "__main__":
    main()
