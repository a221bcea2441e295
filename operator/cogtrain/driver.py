"""Drive an unmodified Cog model server through one training (`cogtrain drive`, `cogtrain run`).

Waits for `/health-check` to say READY, submits the training asynchronously with a webhook to
this process, prints the training's logs as they arrive, receives the output files the server
uploads (`--upload-url` points here), stores them at the destination, and always tells the
server to shut down. The result follows the contract in docs/driver.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .contract import INPUT_ENV_PREFIX, SECRET_ENV_PREFIX, DriverReport, Reason
from .destinations import Destination, DriverError, safe_name

UPLOAD_SCHEME = "cogtrain-upload://"
_CHUNK = 1024 * 1024


class HttpError(OSError):
    """The model server could not be reached or did not answer in time."""


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, bytes]:
    """One request with a JSON body to the model server: (status, body). Raises HttpError.

    The standard library's client, not `requests`: the driver starts in every training Pod and
    should be ready in a fraction of a second with little memory.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    payload = None if body is None else json.dumps(body).encode()
    sent = dict(headers or {})
    if payload is not None:
        sent["Content-Type"] = "application/json"
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), payload, sent)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise HttpError(str(error) or type(error).__name__) from None
    finally:
        connection.close()


@dataclass
class _State:
    """What the model server has told us through its webhooks."""

    status: str | None = None
    output: Any = None
    error: str | None = None
    logs_printed: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    uploads: dict[str, Path] = field(default_factory=dict)


class Receiver:
    """The driver's HTTP side: webhooks from the model server and its output file uploads."""

    def __init__(self, scratch: Path, listen: str, log: TextIO, notices: TextIO = sys.stderr) -> None:
        self.state = _State()
        self.scratch = scratch
        self._lock = threading.Lock()
        self.log = log
        self.notices = notices
        host, _, port = listen.rpartition(":")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802  (webhook)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    receiver.webhook(json.loads(self.rfile.read(length)))
                except ValueError:
                    pass
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:  # noqa: N802  (an output file: streamed to disk, never held whole)
                name = safe_name(self.path.split("?", 1)[0])
                path = receiver.upload_path(name)
                remaining = int(self.headers.get("Content-Length") or 0)
                started = time.monotonic()
                # A new file ("x"): reopening an existing one with truncation makes ext4 flush the
                # whole file to disk on close (auto_da_alloc), a third of the receive rate.
                with path.open("xb") as out:
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                        while size := int(self.rfile.readline().split(b";")[0] or b"0", 16):
                            shutil.copyfileobj(_Limited(self.rfile, size), out, _CHUNK)
                            self.rfile.readline()
                        self.rfile.readline()
                    else:
                        _receive(self.rfile, self.connection, out, remaining)
                    size = out.tell()
                seconds = time.monotonic() - started
                rate = size / max(seconds, 1e-6) / 2**20
                receiver.notices.write(f"received {path.name}: {size} bytes in {seconds:.2f} s ({rate:.0f} MiB/s)\n")
                receiver.notices.flush()
                self.send_response(201)
                self.send_header("Location", f"{UPLOAD_SCHEME}{path.name}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port or 0)), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def upload_path(self, name: str) -> Path:
        with self._lock:
            path = self.scratch / name
            counter = 1
            while path.exists() or path.name in self.state.uploads:
                counter += 1
                path = self.scratch / f"{Path(name).stem}-{counter}{Path(name).suffix}"
            self.state.uploads[path.name] = path  # reserved here; the file is created new by its writer
        return path

    def webhook(self, payload: dict[str, Any]) -> None:
        state = self.state
        logs = payload.get("logs") or ""
        if isinstance(logs, str) and len(logs) > state.logs_printed:
            self.log.write(logs[state.logs_printed :])
            self.log.flush()
            state.logs_printed = len(logs)
        if isinstance(payload.get("metrics"), dict):
            state.metrics.update(payload["metrics"])
        state.status = payload.get("status") or state.status
        if state.status in ("succeeded", "failed", "canceled"):
            state.output, state.error = payload.get("output"), payload.get("error")
            state.done.set()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _receive(rfile: Any, connection: socket.socket, out: BinaryIO, length: int) -> None:
    """Copy a `length`-byte body to `out`: what the request parser already buffered, then the rest
    straight from the socket to the file in the kernel (splice through a pipe) where Linux allows,
    so a multi-GiB weights file costs no copies through Python and no memory beyond the pipe."""
    buffered = rfile.read1(min(length, len(rfile.peek(1)))) if length else b""
    out.write(buffered)
    out.flush()
    length -= len(buffered)
    if length and hasattr(os, "splice"):
        read_end, write_end = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), _CHUNK)
            source, target = connection.fileno(), out.fileno()
            while length:
                moved = os.splice(source, write_end, min(length, _CHUNK))
                if not moved:
                    raise ConnectionError("the upload ended early")
                length -= moved
                while moved:
                    moved -= os.splice(read_end, target, moved)
        finally:
            os.close(read_end)
            os.close(write_end)
    shutil.copyfileobj(_Limited(rfile, length), out, _CHUNK)


class _Limited:
    """Read at most `size` bytes from a stream."""

    def __init__(self, stream: Any, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data: bytes = self.stream.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


@dataclass
class Driver:
    """One training on one model server."""

    model_url: str
    training_id: str
    inputs: dict[str, Any]
    destination: Destination
    scratch: Path
    listen: str = "127.0.0.1:0"
    setup_timeout: float = 1800.0
    cancel_grace: float = 20.0  # Cog 0.23 may not interrupt a running synchronous train() at all
    log: TextIO = sys.stdout  # the training's own logs
    notices: TextIO = sys.stderr  # the driver's messages about it
    progress: Callable[[float, str], None] | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    metrics: dict[str, Any] = field(default_factory=dict)  # what the model server reported, after run()

    def run(self) -> Any:
        """The output with every file replaced by its stored URI, or DriverError."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        receiver = Receiver(Path(tempfile.mkdtemp(dir=self.scratch)), self.listen, self.log, self.notices)
        try:
            self.destination.check()
            self._wait_ready()
            self._submit(receiver.url)
            while not receiver.state.done.wait(0.2):
                if self.cancel_requested.is_set():
                    self._cancel(receiver)
            state = receiver.state
            self.metrics = dict(state.metrics)
            if state.status == "canceled" or self.cancel_requested.is_set():
                raise DriverError(Reason.CANCELED, "the training was canceled")
            if state.status == "failed":
                raise DriverError(
                    Reason.TRAINING_FAILED, f"the model's training failed: {state.error or 'no error given'}"
                )
            return self._store(state.output, receiver)
        finally:
            self._shutdown()
            receiver.stop()

    def _wait_ready(self) -> None:
        def canceled() -> DriverError | None:
            if self.cancel_requested.is_set():
                return DriverError(Reason.CANCELED, "the training was canceled before it started")
            return None

        wait_ready(self.model_url, self.setup_timeout, self.log, self.progress, canceled)

    def _submit(self, receiver_url: str) -> None:
        body: dict[str, Any] = {
            "input": self.inputs,
            "webhook": f"{receiver_url}/webhook",
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        }
        try:
            code, answer = call(
                "PUT", f"{self.model_url}/trainings/{self.training_id}", body, {"Prefer": "respond-async"}
            )
        except HttpError as error:
            raise DriverError(Reason.MODEL_UNREACHABLE, f"cannot submit the training: {error}") from None
        if code == 422:
            try:
                details = [
                    f"input.{'.'.join(map(str, d['loc'][2:]))}: {d['msg']}" for d in json.loads(answer)["detail"]
                ]
            except (ValueError, KeyError, TypeError):
                details = [answer[:500].decode(errors="replace")]
            raise DriverError(Reason.INPUT_REJECTED, "the model rejected the input: " + "; ".join(details))
        if code >= 300:
            raise DriverError(Reason.MODEL_UNREACHABLE, f"the model server answered HTTP {code}")

    def _cancel(self, receiver: Receiver) -> None:
        try:
            call("POST", f"{self.model_url}/trainings/{self.training_id}/cancel", timeout=5)
        except HttpError:
            receiver.state.done.set()
        receiver.state.done.wait(self.cancel_grace)
        receiver.state.done.set()

    def _shutdown(self) -> None:
        with contextlib.suppress(HttpError):  # already gone
            call("POST", f"{self.model_url}/shutdown", timeout=5)

    def _store(self, output: Any, receiver: Receiver) -> Any:
        """Replace every uploaded or inline (data:) file in the output by its stored URI."""
        if isinstance(output, list):
            return [self._store(item, receiver) for item in output]
        if isinstance(output, dict):
            return {key: self._store(value, receiver) for key, value in output.items()}
        if isinstance(output, str) and output.startswith(UPLOAD_SCHEME):
            name = output[len(UPLOAD_SCHEME) :]
            upload = receiver.state.uploads.get(name)
            if upload is None:
                raise DriverError(
                    Reason.TRAINING_FAILED,
                    f"the model's output names an uploaded file that never arrived: {name[:200]}",
                )
            return self.destination.put(upload, name)
        if isinstance(output, str) and output.startswith("data:"):
            path = receiver.upload_path("output")
            decode_data_url(output, path)
            return self.destination.put(path, path.name)
        return output


def wait_ready(
    model_url: str,
    setup_timeout: float,
    log: TextIO,
    progress: Callable[[float, str], None] | None = None,
    stop: Callable[[], DriverError | None] = lambda: None,
) -> None:
    """Wait until a Cog server's /health-check says READY; SETUP_FAILED is final, its logs go to `log`.

    `stop()` may end the wait early with its error (a cancel, a server that exited).
    """
    started = time.monotonic()
    answered = False
    while time.monotonic() - started < setup_timeout:
        error = stop()
        if error is not None:
            raise error
        try:
            health = json.loads(call("GET", f"{model_url}/health-check", timeout=5)[1])
            answered = True
        except (HttpError, ValueError):
            health = {}
        if not isinstance(health, dict):
            health = {}
        status = health.get("status")
        if status == "READY":
            return
        if status == "SETUP_FAILED":
            logs = ((health.get("setup") or {}).get("logs") or "").strip().splitlines()[-20:]
            log.write("\n".join(logs) + "\n")
            raise DriverError(Reason.SETUP_FAILED, "the model's setup failed: " + (logs[-1] if logs else "no logs"))
        if progress is not None:
            progress(time.monotonic() - started, str(status or "starting"))
        time.sleep(0.2)
    if not answered:
        raise DriverError(Reason.MODEL_UNREACHABLE, f"the model server at {model_url} never answered")
    raise DriverError(Reason.SETUP_FAILED, f"the model was not ready within {setup_timeout:g} s")


def decode_data_url(url: str, path: Path) -> None:
    """Write a data: URL's bytes to `path`, decoding base64 in pieces (outputs can be large)."""
    header, _, payload = url.partition(",")
    with path.open("wb") as out:
        if header.endswith(";base64"):
            for start in range(0, len(payload), 4 * _CHUNK):
                try:
                    out.write(base64.b64decode(payload[start : start + 4 * _CHUNK]))
                except binascii.Error:
                    raise DriverError(Reason.TRAINING_FAILED, "the model returned a malformed data: URL") from None
        else:
            out.write(urllib.parse.unquote_to_bytes(payload))


def termination_message(
    output: Any, error: DriverError | None, destination: Destination | None, metrics: dict[str, Any] | None = None
) -> str:
    """The report the operator reads (contract.DriverReport), within the termination message's limit.

    Too long with the model's metrics: they are left out; still too long: the output is stored as
    output.json at the destination and referenced; failures are cut to fit by encoded bytes.
    """
    if error is not None:
        return DriverReport.failure(error.reason, error.message).encode()
    report = DriverReport.success(output, metrics)
    if not report.fits():
        report = DriverReport.success(output)
    if not report.fits() and destination is not None:
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".json") as handle:
            json.dump(output, handle)
        stored = {"$ref": destination.put(Path(handle.name), "output.json")}
        report = report.model_copy(update={"output": stored, "weights": report.weights})
        if not report.fits():  # the weights' own URI is what does not fit: the output.json names it
            report = report.model_copy(update={"weights": None})
    return report.encode()


def inputs_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The inputs the Job passes (docs/driver.md): JSON values, and Secret values as they are."""
    inputs: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(SECRET_ENV_PREFIX):
            inputs[key[len(SECRET_ENV_PREFIX) :]] = value
        elif key.startswith(INPUT_ENV_PREFIX):
            try:
                inputs[key[len(INPUT_ENV_PREFIX) :]] = json.loads(value)
            except ValueError:
                raise DriverError(Reason.INPUT_REJECTED, f"{key} is not JSON") from None
    return inputs
