"""A real HTTPS server receiving the operator's webhooks: it verifies each signature with the independent
`standardwebhooks` package, records every request, and answers as a test scripts it (errors, slowness)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import standardwebhooks

from cogtrain import certs

SIGNING_SECRET = "whsec_" + base64.b64encode(b"cog-training-operator-test-signing-key!").decode()


@dataclass
class Delivery:
    """One request as received: its headers, body, whether its signature verified, what was answered."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int | None  # None: no answer (held past the client's timeout, then dropped)
    at: float

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def status(self) -> str:
        return str(self.document["status"])


@dataclass
class Receiver:
    """The server's address, its CA (PEM file) and what it received. `script[path]`: answers to give, in
    order, before answering 200; an answer of 0 holds the request for `hold` seconds and closes it."""

    url: str
    ca_file: Path
    secret: str = SIGNING_SECRET
    deliveries: list[Delivery] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    hold: float = 3.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def answered(self, event_status: str | None = None) -> list[Delivery]:
        """Deliveries answered 2xx (optionally only those with this Replicate status)."""
        return [d for d in self.received() if d.answered is not None and 200 <= d.answered < 300
                and (event_status is None or d.status == event_status)]


@contextmanager
def https_receiver(folder: Path, secret: str = SIGNING_SECRET) -> Iterator[Receiver]:
    """A receiver at https://127.0.0.1:PORT/hook with a certificate for 127.0.0.1 from its own test CA."""
    bundle = certs.generate(["127.0.0.1", "localhost"])
    cert, key = bundle.write(folder)
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(bundle.ca)
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                standardwebhooks.Webhook(receiver.secret).verify(body, headers, json_parse=False)
                verified = True
            except standardwebhooks.WebhookVerificationError:
                verified = False
            with receiver.lock:
                answer = receiver.script.pop(0) if receiver.script else 200
                receiver.deliveries.append(Delivery(headers, body, verified, answer or None, time.monotonic()))
            if answer == 0:
                time.sleep(receiver.hold)
                self.close_connection = True
                return
            self.send_response(answer)
            if 300 <= answer < 400:
                self.send_header("Location", "https://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(f"https://127.0.0.1:{server.server_address[1]}/hook?team=ml", ca_file, secret)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
