"""What a range request costs on moto's S3 server, by object size (benchmarks/ml.py's caveat).

    .venv/bin/python benchmarks/moto_ranges.py [--sizes-mib 4,40,300] [--requests 3]

moto's standalone server (`moto_server`, its own process), boto3 GETs of a 1 MiB range at
the start of objects of each size; prints ms per request. S3 does not charge a range by
the size of its object; moto reads and copies the whole object for each one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, conditions, free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mib", default="4,40,300")
    ap.add_argument("--requests", type=int, default=3)
    args = ap.parse_args()
    print(conditions(command_line(), ["moto_server in its own process; 1 MiB ranges by boto3"]))
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        for _ in range(50):  # until the server answers
            try:
                s3.create_bucket(Bucket="bench")
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        out = {}
        for mib in map(int, args.sizes_mib.split(",")):
            s3.put_object(Bucket="bench", Key=f"o{mib}", Body=os.urandom(mib << 20))
            t = time.perf_counter()
            for _ in range(args.requests):
                s3.get_object(Bucket="bench", Key=f"o{mib}", Range=f"bytes=0-{(1 << 20) - 1}")["Body"].read()
            out[f"{mib} MiB object"] = round((time.perf_counter() - t) * 1000 / args.requests, 1)
        print("ms per 1 MiB range request:", json.dumps(out))
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
