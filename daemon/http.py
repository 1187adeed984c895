"""The agent's two HTTP endpoints: `/metrics` for Prometheus and `/status` for people and
the TUI. A small `http.server` in a daemon thread: the agent needs no web framework, and
it binds to localhost unless the operator asks for another address.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from pitstop.daemon.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Any]


class StatusServer:
    """A running server: `port` is the bound port (the ephemeral one when asked for 0)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "StatusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(metrics: Metrics, status_provider: StatusProvider, host: str = "127.0.0.1", *,
          port: int) -> StatusServer:
    """Start serving `/metrics` and `/status` in a background thread and return at once;
    `port=0` binds an ephemeral port, which the returned server's `port` names."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "pitstop-agent"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(HTTPStatus.OK, CONTENT_TYPE, metrics.render())
            elif path == "/status":
                self._status()
            else:
                self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8",
                            b"not found: try /metrics or /status\n")

        def _status(self) -> None:
            try:
                body = json.dumps(status_provider(), default=str).encode()
            except Exception as error:  # the agent keeps serving /metrics; the caller sees why
                log.exception("http: the status provider failed")
                body = json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "application/json", body)
                return
            self._reply(HTTPStatus.OK, "application/json", body)

        def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: %s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="pitstop-http", daemon=True)
    thread.start()
    bound = StatusServer(server, thread)
    log.info("http: serving /metrics and /status on %s", bound.url)
    return bound
