#!/usr/bin/env python3
"""A do-nothing OTLP/HTTP collector for the tracing benchmark: accepts ``POST /v1/traces``,
reads the body, answers 200 and counts requests and bytes (printed on SIGTERM/SIGINT).

    python3 bench/otlp_sink.py PORT

It decodes nothing, so the cost measured is the daemon's own (making, batching and
exporting spans), not the collector's.
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

received = {"posts": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received["posts"] += 1
        received["bytes"] += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_: object) -> None:
        print(f"otlp sink: {received['posts']} exports, {received['bytes']} bytes", file=sys.stderr, flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
