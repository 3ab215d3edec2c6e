#!/usr/bin/env python3
"""The rows of bench/import.sh, and the check of what the server answered (no protobuf library).

    import_rows.py make N BODY_FILE CSV_FILE RUN_ID
        writes N customers twice: BODY_FILE as one ImportCustomers request body (N gRPC-framed
        ImportCustomersRequest messages: row_ref, customer, request_id), CSV_FILE as the same
        customers for COPY, columns: id, display_name, given_name, family_name, email, phone,
        company_name, source, tags, created_by_kind, created_by, updated_by_kind, updated_by.
    import_rows.py check RESPONSE_FILE N
        decodes the ImportCustomers response body (gRPC-framed ImportCustomersResponse
        messages), checks it holds N results with indexes 0..N-1 then a summary, and prints
        {"results": .., "ok": .., "codes": {..}, "summary": {..}} as JSON; exits 1 when not.

Field numbers from proto/crm/customer/v1/customer_service.proto, customer.proto and
proto/crm/common/v1/common.proto (ItemResult), google/rpc/status.proto.
"""
import csv
import json
import os
import struct
import sys
import time
import uuid

from grpc_body import f_bytes, f_string, frame  # the encoder run.sh uses

def uuid7() -> str:
    """A time-ordered UUID (version 7), as the server makes ids: the same index locality."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def customer_fields(run_id: str, i: int) -> dict:
    return {
        "display_name": f"Import Customer {i}",
        "given_name": "Import",
        "family_name": f"Customer {i}",
        "email": f"import.{run_id}.{i}@example.com",
        "phone": f"+4930{i:08d}",
        "company_name": f"Company {i % 997}",
        "source": "bench-import",
        "tags": ["imported", f"batch_{i % 10}"],
    }


def encode_row(run_id: str, i: int, c: dict) -> bytes:
    customer = (
        f_string(3, c["display_name"])
        + f_string(4, c["email"])
        + f_string(5, c["given_name"])
        + f_string(6, c["family_name"])
        + f_string(7, c["phone"])
        + f_string(8, c["company_name"])
        + b"".join(f_string(11, t) for t in c["tags"])
        + f_string(16, c["source"])
    )
    return f_string(1, f"row-{i}") + f_bytes(2, customer) + f_string(3, f"{run_id}-{i}")


def make(n: int, body_path: str, csv_path: str, run_id: str) -> None:
    with open(body_path, "wb") as body, open(csv_path, "w", newline="") as out:
        writer = csv.writer(out)
        for i in range(n):
            c = customer_fields(run_id, i)
            body.write(frame(encode_row(run_id, i, c)))
            tags = "{" + ",".join(c["tags"]) + "}"
            writer.writerow([
                uuid7(), c["display_name"], c["given_name"], c["family_name"],
                c["email"], c["phone"], c["company_name"], c["source"], tags,
                "USER", "bench", "USER", "bench",
            ])


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes):
    """(field number, wire type, value) of each field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise SystemExit(f"import_rows.py: unexpected wire type {wire}")
        yield number, wire, value


def check(response_path: str, n: int) -> int:
    data = open(response_path, "rb").read()
    pos, results, codes, summary, indexes_ok = 0, 0, {}, None, True
    while pos + 5 <= len(data):
        length = struct.unpack(">I", data[pos + 1:pos + 5])[0]
        message = data[pos + 5:pos + 5 + length]
        pos += 5 + length
        for number, _, value in fields(message):
            if number == 5:  # ItemResult
                index, code = 0, 0
                for f, _, v in fields(value):
                    if f == 1:
                        index = v
                    elif f == 3:
                        code = next((cv for cf, _, cv in fields(v) if cf == 1), 0)
                indexes_ok &= index == results
                results += 1
                codes[code] = codes.get(code, 0) + 1
            elif number == 6:  # ImportCustomersSummary
                counts = {f: v for f, _, v in fields(value)}
                summary = {
                    "created": counts.get(1, 0),
                    "repeated": counts.get(2, 0),
                    "rejected": counts.get(3, 0),
                }
    ok = results == n and indexes_ok and summary is not None and codes.get(0, 0) == n
    print(json.dumps({"results": results, "ok": ok, "codes": codes, "summary": summary}))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "make":
        make(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], int(sys.argv[3])))
    else:
        raise SystemExit(__doc__)
