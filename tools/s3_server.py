"""A local S3-protocol server (moto) on a free loopback port, for development and tests.

    python -m tools.s3_server             # prints the endpoint, serves until Ctrl-C
    python -m tools.s3_server --port 9000 --bucket demo

Then point the AWS clients at it, e.g.::

    export AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    shards build corpus.jsonl --out s3://demo/shards

The server keeps everything in memory and accepts any credentials.  It binds
127.0.0.1 only.  Importable: ``server, endpoint = start(port=0)``; ``server.stop()``.
The first line printed is ``endpoint http://127.0.0.1:PORT`` (tests parse it).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

HOST = "127.0.0.1"


def start(port: int = 0, verbose: bool = False):
    """Start moto's ThreadedMotoServer on 127.0.0.1:port (0: a free port) -> (server, endpoint)."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs one line per request; that is noise in tests and benchmarks.
    logging.getLogger("werkzeug").setLevel(logging.INFO if verbose else logging.WARNING)
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    return server, f"http://{host}:{real_port}"


def make_bucket(endpoint: str, bucket: str) -> None:
    """Create a bucket on the server (any credentials are accepted)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local")
    client.create_bucket(Bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.s3_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--bucket", action="append", default=[], help="bucket(s) to create at start")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    server, endpoint = start(args.port, args.verbose)
    for bucket in args.bucket:
        make_bucket(endpoint, bucket)
    print(f"endpoint {endpoint}", flush=True)
    print(f"export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
