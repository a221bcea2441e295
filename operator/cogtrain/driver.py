"""Drive an unmodified Cog model server through one training (`cogtrain drive`, `cogtrain run`).

Waits for `/health-check` to say READY, submits the training asynchronously with a webhook to
this process, prints the training's logs as they arrive, receives the output files the server
uploads (`--upload-url` points here), stores them at the destination, and always tells the
server to shut down. The result follows the contract in docs/driver.md.

What a model server can do to it is bounded (docs/driver.md, "What the driver guards against"):
while the training runs the driver watches `/health-check`, so a server that dies or restarts ends
the training; webhook bodies are parsed as they arrive (`jsonstream`), so its memory does not grow
with the model's log or output; and Secret input values are cut out of all it prints and reports.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from .contract import (
    INPUT_ENV_PREFIX,
    INPUT_FILES_PATH,
    SECRET_ENV_PREFIX,
    SECRET_LIST_ENV_PREFIX,
    STORAGE_INPUTS_ENV,
    DriverReport,
    Reason,
    is_storage_ref,
    parse_storage_ref,
)
from .destinations import Destination, DriverError, InputFiles, InputSource, safe_name
from .jsonstream import Budget, JSONStreamError, Reader, Sink, Tail, Text
from .progress import MARKER, Tracker, escape, log_tail

UPLOAD_SCHEME = "cogtrain-upload://"
INPUT_SENDS = 4  # file inputs streamed to the model server at once; more wait, then get 503
INPUT_SEND_WAIT = 30.0  # seconds a request for a file input waits for one of those
INPUT_FETCHES = 3  # times each file input is served (Cog fetches it once; a retry or two): no endless re-reads
_CHUNK = 1024 * 1024
# What one webhook may make the driver keep in memory, in characters. The log is never kept (its new
# part is printed as it arrives) and a file inside the output (a data: URL) goes to scratch.
OUTPUT_LIMIT = 4 * 2**20
ERROR_LIMIT = 64 * 1024  # the model's error: the rest is cut (the report keeps far less)
METRICS_LIMIT = 64 * 1024  # the model server's metrics: larger ones are ignored
ANSWER_LIMIT = 256 * 1024  # a JSON answer of the model server (a 422's details), each string cut at 2000
SETUP_LOG_TAIL = 64 * 1024  # of the setup logs in /health-check answers, only the tail is read
_SMALL_ANSWER = 64 * 1024
TERMINAL = ("succeeded", "failed", "canceled")
# /health-check statuses of a server that is not running a training: during ours, it lost it.
NOT_TRAINING = frozenset({"READY", "STARTING", "SETUP_FAILED", "DEFUNCT"})
MASK = "***"
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


class HttpError(OSError):
    """The model server could not be reached or did not answer in time."""


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0, parse: Callable[[Reader], Any] | None = None) -> tuple[int, Any]:
    """One request with a JSON body to the model server: (status, answer). Raises HttpError.

    The answer is `parse` applied to a streaming reader of the body, or without `parse` the body's
    first 64 KiB. The standard library's client, not `requests`: the driver starts in every
    training Pod and should be ready in a fraction of a second with little memory.
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
        return response.status, response.read(_SMALL_ANSWER) if parse is None else parse(Reader(response.read))
    except (OSError, http.client.HTTPException) as error:
        raise HttpError(str(error) or type(error).__name__) from None
    finally:
        connection.close()


def health(model_url: str, timeout: float = 5.0) -> tuple[str | None, str]:
    """A Cog server's /health-check status and the tail of its setup logs. HttpError: no JSON answer.

    Cog repeats the whole setup log in every answer; only its last 64 KiB are kept.
    """

    def parse(reader: Reader) -> tuple[str | None, str]:
        status: Any = None
        logs = Tail(SETUP_LOG_TAIL)
        for key in reader.members():
            if key == "status":
                status = reader.value(Budget(64))
            elif key == "setup" and reader.peek() == "{":
                for inner in reader.members():
                    if inner == "logs" and reader.peek() == '"':
                        reader.string(logs)
                    else:
                        reader.skip()
            else:
                reader.skip()
        return (status if isinstance(status, str) else None), logs.text

    try:
        answer: tuple[str | None, str] = call("GET", f"{model_url}/health-check", timeout=timeout, parse=parse)[1]
    except JSONStreamError as error:
        raise HttpError(f"/health-check did not answer JSON: {error}") from None
    return answer


MAX_METRICS = 64  # keys of the model server's metrics kept at once (the status allows 64)
MIN_SECRET = 4  # characters: a Secret value shorter than this is not redacted


class Redactor:
    """Cuts Secret input values out of text, as they are and as JSON, Python and URLs encode them."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            for value in _secret_values(secret):
                forms.update((value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
                              repr(value)[1:-1], urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)))
        # Too short to find without cutting ordinary text apart (docs/driver.md): not redacted.
        forms = {form for form in forms if len(form) >= MIN_SECRET}
        self.forms = sorted(forms, key=len, reverse=True)  # the longest form first where several match
        self._pattern = re.compile("|".join(map(re.escape, self.forms))) if self.forms else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def partial(self, text: str) -> int:
        """How many characters at the end of `text` could be the beginning of a secret."""
        longest = 0
        for form in self.forms:
            start = max(0, len(text) - len(form) + 1)
            while (at := text.find(form[0], start, len(text) - longest)) != -1:  # only longer ones count
                if form.startswith(text[at:]):
                    longest = len(text) - at
                    break
                start = at + 1
        return longest

    def cut(self, text: str) -> str:
        """A text that was cut short: redacted, and without a trailing beginning of a secret."""
        text = self(text)
        return text[: len(text) - self.partial(text)]

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it (keys too) redacted."""
        if not self:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self(str(key)): self.value(item) for key, item in value.items()}
        return value


def _secret_values(secret: str) -> list[str]:
    """A Secret's value, and the strings in it when it holds a JSON array (a `list[Secret]` input)."""
    values = [secret] if secret.strip() else []
    with contextlib.suppress(ValueError, RecursionError):
        parsed = json.loads(secret)
        if isinstance(parsed, list):
            values += [item for item in parsed if isinstance(item, str) and item.strip()]
    return values


def secrets_from_env(environ: Mapping[str, str]) -> list[str]:
    """The Secret input values the Job passes (COGTRAIN_SECRET_INPUT_*, COGTRAIN_SECRET_LIST_INPUT_*):
    what the driver never repeats."""
    return [value for key, value in environ.items() if key.startswith((SECRET_ENV_PREFIX, SECRET_LIST_ENV_PREFIX))]


class RedactingWriter:
    """Text to a stream with secrets cut out; a trailing piece that could begin one waits for what follows."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self.stream, self.redactor = stream, redactor
        self.pending = ""

    def write(self, text: str) -> None:
        if self.redactor:
            text = self.redactor(self.pending + text)
            held = self.redactor.partial(text)
            text, self.pending = text[: len(text) - held], text[len(text) - held :]
        if text:
            self.stream.write(text)

    def flush(self, final: bool = False) -> None:
        if final and self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()


LOG_FILE_LIMIT = 64 * 2**20  # bytes of logs.txt: beyond, its head and a rolling tail
LOG_STORE_TIMEOUT = 300.0  # seconds logs.txt may take to store at the end of a training ...
LOG_STORE_GRACE = 10.0  # ... or after a SIGTERM (the Pod's grace is 60 s; the cancel before may take 30)
RECORD_EVERY = 2.0  # seconds: at most one progress record this often, unless the log runs on
WRAP = 4000  # characters of a line on stdout (at most 4 bytes each): the runtime splits a line past 16 KiB, and a
# `tailLines` tail may then begin inside it, where a model's text could start like a record
RECORD_LINES, RECORD_BYTES = 100, 16384  # ... or this much log was echoed since the last record (the operator
# reads the last 200 lines, 64 KiB: a record is always among them)


class BoundedLog:
    """The training's whole log in a file in scratch, at most `limit` bytes: past that, the first half and a
    rolling tail (two files of a quarter each, taking turns), joined with a `[… N bytes cut …]` line."""

    def __init__(self, folder: Path, limit: int = LOG_FILE_LIMIT) -> None:
        self.folder, self.limit = folder, limit
        self.written = 0
        self._head = (folder / "log-head").open("wb")
        self._tails: list[Path] = []
        self._tail: BinaryIO | None = None
        self._tail_size = 0
        self.recent = ""  # the last 8 KiB of text, for the report's tail

    def write(self, text: str) -> None:
        self.recent = (self.recent + text)[-8192:]
        data = text.encode(errors="replace")
        self.written += len(data)
        room = self.limit // 2 - self._head.tell()
        if room > 0:
            self._head.write(data[:room])
            data = data[room:]
        while data:
            if self._tail is None or self._tail_size >= self.limit // 4:
                self._rotate()
            assert self._tail is not None
            piece = data[: self.limit // 4 - self._tail_size]
            self._tail.write(piece)
            self._tail_size += len(piece)
            data = data[len(piece):]

    def _rotate(self) -> None:
        if self._tail is not None:
            self._tail.close()
        if len(self._tails) == 2:
            self._tails.pop(0).unlink(missing_ok=True)
        self._tails.append(self.folder / f"log-tail-{self.written}")
        self._tail, self._tail_size = self._tails[-1].open("wb"), 0

    def finish(self) -> Path:
        """The whole log as one file (logs.txt), the cut marked."""
        self._head.close()
        if self._tail is not None:
            self._tail.close()
        path = self.folder / "logs.txt"
        with path.open("wb") as out:
            with (self.folder / "log-head").open("rb") as head:
                shutil.copyfileobj(head, out, _CHUNK)
            kept = out.tell() + sum(tail.stat().st_size for tail in self._tails)
            if kept < self.written:
                out.write(f"\n[… {self.written - kept} bytes cut …]\n".encode())
            for tail in self._tails:
                with tail.open("rb") as piece:
                    shutil.copyfileobj(piece, out, _CHUNK)
        return path

    def tail(self) -> str:
        return log_tail(self.recent)


class LogTee:
    """Where the training's (redacted) log goes: the driver's stdout, with progress records between its lines
    and a model's line that starts like a record escaped; the `Tracker`; and the log file, if any."""

    def __init__(self, stream: TextIO, records: bool = False, log_file: BoundedLog | None = None,
                 tracker: Tracker | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.records, self.log_file = stream, records, log_file
        self.tracker = tracker or Tracker()
        self.clock = clock
        self._lock = threading.RLock()
        self._at_start = True  # the next character printed starts a line
        self._held = ""  # the start of a line that could still become MARKER
        self._column = 0  # characters printed on the current line
        self._printed_version = 0
        self._last_record = -RECORD_EVERY
        self._lines = self._bytes = 0  # echoed since the last record
        self.closed = False  # the log file is being stored: it takes no more

    def write(self, text: str) -> None:
        with self._lock:
            if self.log_file is not None and not self.closed:
                self.log_file.write(text)
            self.tracker.feed(text)
            if not self.records:
                self.stream.write(text)
                return
            cut = text.rfind("\n") + 1
            if cut and self._due(text[:cut]):  # a record right after the last whole line of this piece
                self._echo(text[:cut])
                self._record()
                self._echo(text[cut:])
            else:
                self._echo(text)

    def _due(self, coming: str = "") -> bool:
        lines, size = self._lines + coming.count("\n"), self._bytes + len(coming)
        if self.tracker.version == self._printed_version and not lines and not size:
            return False
        return lines >= RECORD_LINES or size >= RECORD_BYTES or self.clock() - self._last_record >= RECORD_EVERY

    def _echo(self, text: str) -> None:
        text, self._held = self._held + text, ""
        out: list[str] = []
        start = 0
        while start < len(text):
            if self._at_start:
                rest = text[start : start + len(MARKER)]
                if len(rest) < len(MARKER) and MARKER.startswith(rest):
                    self._held = text[start:]
                    break
                out.append(escape(rest)[: -len(rest)])  # ESCAPE, when the model's line starts like a record
            end = text.find("\n", start)
            end = len(text) if end == -1 else end + 1
            if self._column + end - start - (text[end - 1] == "\n") > WRAP:
                end = start + max(1, WRAP - self._column)  # past it the container runtime splits the line
                out.append(text[start:end] + "\n")
                self._at_start, self._column = True, 0
            else:
                out.append(text[start:end])
                self._at_start = text[end - 1] == "\n"
                self._column = 0 if self._at_start else self._column + end - start
            start = end
        printed = "".join(out)
        self._lines += printed.count("\n")
        self._bytes += len(printed)
        self.stream.write(printed)

    def _record(self) -> None:
        record = self.tracker.record()
        self._last_record = self.clock()
        self._lines = self._bytes = 0
        self._printed_version = self.tracker.version
        if record is not None:
            self.stream.write(("" if self._at_start else "\n") + record.line() + "\n")
            self._at_start, self._column = True, 0

    def metrics(self, metrics: Mapping[str, Any], redact: Callable[[str], str] = lambda text: text) -> None:
        with self._lock:
            self.tracker.metrics(metrics, redact)

    def tick(self, final: bool = False) -> None:
        """Print a record if one is due (or, `final`, the last state if not printed yet). Never waits for a
        writer blocked on a full stdout (the caller watches the training and must not hang with it)."""
        if not self._lock.acquire(timeout=2 if final else 0):
            return
        try:
            if self.records and (self._due() if not final else self.tracker.version != self._printed_version):
                self._record()
                self.stream.flush()
        finally:
            self._lock.release()

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def finish(self) -> None:
        """What was held back (a line that began like a record but ended), then the last record; the log file
        takes no more. Waits at most 2 s for a writer (one blocked on a full stdout is left behind)."""
        if self._lock.acquire(timeout=2):
            try:
                held, self._held = self._held, ""
                if held and self.records:
                    self.stream.write(held)
                    self._at_start, self._column = False, self._column + len(held)
            finally:
                self._lock.release()
        self.tick(final=True)
        self.closed = True


class _Cut(Text):
    """A string kept up to `cap` characters; a longer one is cut (redacted first) and marked with …."""

    def __init__(self, budget: Budget, cap: int, redactor: Redactor) -> None:
        super().__init__(budget, cap)
        self.redactor = redactor

    def value(self) -> Any:
        text = super().value()
        return self.redactor.cut(text) + "…" if self.truncated else text


@dataclass(frozen=True)
class Spooled:
    """A data: URL in the model's output (a file inside a TrainingOutput), decoded to a file in scratch."""

    path: Path


class DataUrlFile:
    """Decodes a data: URL's payload (base64 or percent-encoded) into a file, piece by piece."""

    def __init__(self, path: Path, base64_encoded: bool) -> None:
        self.path = path
        self.base64 = base64_encoded
        self.rest = ""
        self.out: BinaryIO = path.open("wb")

    def write(self, text: str) -> None:
        text = self.rest + text
        if self.base64:  # what b64decode would skip (line breaks, say) must not shift the 4-character groups
            text = _NOT_BASE64.sub("", text)
            end = len(text) - len(text) % 4
        else:  # keep a %XX escape that is not complete yet
            percent = text.rfind("%", max(0, len(text) - 2))
            end = percent if percent >= 0 else len(text)
        self.rest = text[end:]
        self._put(text[:end])

    def _put(self, text: str) -> None:
        if not text:
            return
        try:
            data = base64.b64decode(text) if self.base64 else urllib.parse.unquote_to_bytes(text)
        except (binascii.Error, ValueError):
            raise DriverError(Reason.TRAINING_FAILED, "the model returned a malformed data: URL") from None
        try:
            self.out.write(data)
        except OSError as error:
            raise DriverError(Reason.TRAINING_FAILED,
                              f"cannot keep the model's output file in scratch: {error.strerror}") from None

    def close(self) -> None:
        rest, self.rest = self.rest, ""
        try:
            self._put(rest + "=" * (-len(rest) % 4) if self.base64 else rest)
        finally:
            self.out.close()

    def discard(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)


class _OutputString(Text):
    """A string in the model's output: kept within the output's budget, unless it is a data: URL, whose
    payload is decoded into a file in scratch as it arrives (it becomes `Spooled`)."""

    def __init__(self, budget: Budget, new_file: Callable[[bool], DataUrlFile]) -> None:
        super().__init__(budget)
        self.new_file = new_file
        self.head = ""  # until it is known whether this is a data: URL, and then its header
        self.mode = "undecided"  # "plain", "header" (data:...,), "payload"
        self.file: DataUrlFile | None = None

    def write(self, text: str) -> None:
        if self.file is not None:
            self.file.write(text)
            return
        if self.mode == "plain":
            super().write(text)
            return
        self.head += text
        if self.mode == "undecided":
            if len(self.head) < 5 and "data:".startswith(self.head):
                return
            if not self.head.startswith("data:"):
                self.mode, head, self.head = "plain", self.head, ""
                super().write(head)
                return
            self.mode = "header"
        header, comma, payload = self.head.partition(",")
        if not comma and len(self.head) <= 4096:
            return
        if not comma or not _DATA_URL_HEADER.fullmatch(header):  # text that starts with "data:", not a file
            self.mode, head, self.head = "plain", self.head, ""
            super().write(head)
            return
        self.head = ""
        self.file = self.new_file(header.endswith(";base64"))
        self.file.write(payload)

    def value(self) -> Any:
        if self.file is not None:
            self.file.close()
            return Spooled(self.file.path)
        if self.mode in ("undecided", "header"):
            super().write(self.head)
        return super().value()


class _NewLogs:
    """The `logs` string of a webhook: Cog sends the whole log each time; only the part not yet printed is."""

    def __init__(self, printed: int, out: RedactingWriter) -> None:
        self.printed, self.out = printed, out
        self.seen = 0

    def write(self, text: str) -> None:
        end = self.seen + len(text)
        if end > self.printed:
            self.out.write(text[max(0, self.printed - self.seen) :])
        self.seen = end


# RFC 2397: data:[<type>/<subtype>][;<param>=<value>]*[;base64], (nothing else makes a file of a string)
_DATA_URL_HEADER = re.compile(r"data:(?:[\w!#$&^.+-]+/[\w!#$&^.+-]+)?(?:;[\w!#$&^.+-]+=[^;,\s]*)*(?:;base64)?")


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
    failure: DriverError | None = None  # what a webhook made of the training (an unusable output)
    unreadable: str | None = None  # why the last webhook that could not be read was not


class Inbox:
    """What the model server sends the driver: webhooks (read as they arrive) and output file uploads."""

    def __init__(self, scratch: Path, log: TextIO, notices: TextIO = sys.stderr,
                 redactor: Redactor | None = None) -> None:
        self.state = _State()
        self.scratch = scratch
        self._lock = threading.Lock()
        self._webhooks = threading.Lock()  # one webhook at a time: its log goes out as it is read
        self._spools = itertools.count(1)
        self.redactor = redactor if redactor is not None else Redactor()
        self.log = RedactingWriter(log, self.redactor)
        self.notices = notices
        self.on_metrics: Callable[[Mapping[str, Any]], None] | None = None  # each webhook's metrics, merged

    def notice(self, text: str) -> None:
        self.notices.write(self.redactor(text) + "\n")
        self.notices.flush()

    def upload_path(self, name: str) -> Path:
        with self._lock:
            path = self.scratch / name
            counter = 1
            while path.exists() or path.name in self.state.uploads:
                counter += 1
                path = self.scratch / f"{Path(name).stem}-{counter}{Path(name).suffix}"
            self.state.uploads[path.name] = path  # reserved here; the file is created new by its writer
        return path

    def forget_upload(self, path: Path) -> None:
        """An upload that failed: its file and its name are gone (a file that never arrived)."""
        path.unlink(missing_ok=True)
        with self._lock:
            self.state.uploads.pop(path.name, None)

    def _spool_file(self, base64_encoded: bool) -> DataUrlFile:
        # Upload names never start with a dot (safe_name), so these cannot collide with them.
        return DataUrlFile(self.scratch / f".inline-{next(self._spools)}", base64_encoded)

    def webhook(self, read: Callable[[int], bytes]) -> None:
        """Read one webhook body as it arrives: print the log's new part, keep the rest within bounds."""
        with self._webhooks:
            spools: list[DataUrlFile] = []

            def new_file(base64_encoded: bool) -> DataUrlFile:
                spools.append(self._spool_file(base64_encoded))
                return spools[-1]

            try:
                self._webhook(Reader(read), new_file, spools)
            except DriverError as failure:
                for spool in spools:
                    spool.discard()
                if not self.state.done.is_set():
                    self.state.failure = failure
                    self.state.done.set()
            except (ValueError, OSError) as error:  # not JSON (JSONStreamError), or the connection broke
                for spool in spools:
                    spool.discard()
                self.state.unreadable = str(error)[:300]
                self.notice(f"ignored a webhook from the model server that could not be read: {error}")
            finally:
                self.log.flush()

    def _webhook(self, reader: Reader, new_file: Callable[[bool], DataUrlFile], spools: list[DataUrlFile]) -> None:
        state = self.state
        status: Any = None
        error: Any = None
        metrics: Any = None
        output: Any = None
        output_budget = Budget(OUTPUT_LIMIT)
        for key in reader.members():
            if key == "logs" and reader.peek() == '"':
                logs = _NewLogs(state.logs_printed, self.log)
                try:
                    reader.string(logs)
                finally:  # what was printed stays printed, even from a webhook cut short
                    state.logs_printed = max(state.logs_printed, logs.seen)
            elif key == "status":
                status = reader.value(Budget(64))
            elif key == "error":
                error = reader.value(Budget(ERROR_LIMIT), lambda budget: _Cut(budget, ERROR_LIMIT, self.redactor))
            elif key == "metrics":
                budget = Budget(METRICS_LIMIT)
                metrics = reader.value(budget)
                if budget.exceeded:
                    metrics = None
                    self.notice(f"ignored the model server's metrics: larger than {METRICS_LIMIT} characters")
            elif key == "output":
                output = reader.value(output_budget, lambda budget: _OutputString(budget, new_file))
            else:  # the input (Secret values included), timestamps, ids: not needed
                reader.skip()
        if isinstance(metrics, dict) and metrics:
            # Merged (a webhook may carry only some of them), but never past MAX_METRICS keys.
            merged = {**state.metrics, **metrics}
            state.metrics = merged if len(merged) <= MAX_METRICS else dict(metrics)
            if self.on_metrics is not None:
                self.on_metrics(state.metrics)
        if state.done.is_set():  # the training has ended: a late webhook (Cog sends some out of order) changes nothing
            for spool in spools:
                spool.discard()
            return
        if isinstance(status, str) and status:
            state.status = status
        if status not in TERMINAL:  # an earlier output
            for spool in spools:
                spool.discard()
            return
        if status == "succeeded" and output_budget.exceeded:
            raise DriverError(Reason.TRAINING_FAILED,
                              f"the model's output is larger than {OUTPUT_LIMIT // 2**20} MiB without its files; "
                              "return large data as a file (a cog.Path)")
        state.output, state.error = output, error if isinstance(error, str) else None
        state.done.set()

    def finish(self) -> None:
        """Print what the log still held back (a possible beginning of a secret that never continued).

        Not if a webhook is still being read (its output may be blocked): the training has ended.
        """
        if self._webhooks.acquire(timeout=2):
            try:
                self.log.flush(final=True)
            finally:
                self._webhooks.release()


class Receiver(Inbox):
    """The driver's HTTP side: the Inbox served on `listen` (the webhook URL and Cog's --upload-url)."""

    def __init__(self, scratch: Path, listen: str, log: TextIO, notices: TextIO = sys.stderr,
                 redactor: Redactor | None = None, idle_timeout: int = 30) -> None:
        super().__init__(scratch, log, notices, redactor)
        host, _, port = listen.rpartition(":")
        receiver = self
        self.files: dict[str, InputSource] = {}  # file inputs served to the model server, by unguessable token
        self._fetches: dict[str, int] = {}  # token -> times served
        self._fetching = threading.Lock()
        self._sends = threading.BoundedSemaphore(INPUT_SENDS)

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout  # a request that stalls mid-body gives up its connection (and the webhook lock)

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802  (webhook)
                try:
                    body = _body(self)
                except _BadFraming as refused:
                    _refuse(self, refused)
                    return
                receiver.webhook(body.read)
                try:
                    while body.read(_CHUNK):  # what the reader left (it stops at the end of the JSON, or an error)
                        pass
                except (OSError, ValueError) as error:
                    self.send_error(400, str(error)[:200])
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802  (a file input from cluster storage, streamed to the model server)
                token = self.path.split("?", 1)[0][len(INPUT_FILES_PATH):].split("/", 1)[0]
                source = receiver.files.get(token) if self.path.startswith(INPUT_FILES_PATH) else None
                if source is None:
                    self.send_error(404)
                    return
                receiver.send_bounded(self, token, source)

            def do_PUT(self) -> None:  # noqa: N802  (an output file: streamed to disk, never held whole)
                # splice needs a blocking socket (Python's timeout makes it non-blocking: EAGAIN); the
                # kernel's own receive timeout still bounds an upload that stalls.
                self.connection.settimeout(None)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", idle_timeout, 0))
                try:
                    chunked, length = _framing(self)
                except _BadFraming as refused:
                    receiver.notice(f"refused an upload: {refused.message}")
                    _refuse(self, refused)
                    return
                name = safe_name(self.path.split("?", 1)[0])
                path = receiver.upload_path(name)
                started = time.monotonic()
                try:
                    # A new file ("x"): reopening an existing one with truncation makes ext4 flush the
                    # whole file to disk on close (auto_da_alloc), a third of the receive rate.
                    with path.open("xb") as out:
                        if chunked:
                            shutil.copyfileobj(_Chunked(self.rfile), out, _CHUNK)
                        else:
                            _receive(self.rfile, self.connection, out, length)
                        size = out.tell()
                    if not chunked and size != length:
                        raise ConnectionError(f"the upload ended early: {size} of {length} bytes")
                except (OSError, ValueError) as error:
                    receiver.forget_upload(path)
                    receiver.notice(f"the upload of {path.name} failed: {error}")
                    with contextlib.suppress(OSError):
                        self.send_error(500)
                    return
                seconds = time.monotonic() - started
                rate = size / max(seconds, 1e-6) / 2**20
                receiver.notice(f"received {path.name}: {size} bytes in {seconds:.2f} s ({rate:.0f} MiB/s)")
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

    def serve(self, source: InputSource, name: str) -> str:
        """The URL the model server fetches a file input from: this receiver, under a token no one can guess
        (only registered files are served: no path or key is taken from a request), ending in the file's own
        name, percent-encoded, which Cog 0.23 decodes and keeps (its file is `tmp<random><name>`: the
        extension survives)."""
        token = secrets.token_urlsafe(18)
        self.files[token] = source
        return f"{self.url}{INPUT_FILES_PATH}{token}/{urllib.parse.quote(name, safe='')}"

    def send_bounded(self, handler: BaseHTTPRequestHandler, token: str, source: InputSource) -> None:
        """Serve a file input, bounded: each at most INPUT_FETCHES times and INPUT_SENDS at once, so the model
        cannot make the driver (and the store, on the reader's credentials) read its inputs without end."""
        with self._fetching:
            fetched = self._fetches.get(token, 0)
            if fetched < INPUT_FETCHES:
                self._fetches[token] = fetched + 1
        if fetched >= INPUT_FETCHES:
            self.notice(f"refused to serve {source.uri} again: it was served {INPUT_FETCHES} times")
            with contextlib.suppress(OSError):
                handler.send_error(429, "this file input was served its most times")
            return
        if not self._sends.acquire(timeout=INPUT_SEND_WAIT):
            with self._fetching:
                self._fetches[token] -= 1
            with contextlib.suppress(OSError):
                handler.send_error(503, "too many file inputs being served at once")
            return
        try:
            self.send_file(handler, source)
        finally:
            self._sends.release()

    def send_file(self, handler: BaseHTTPRequestHandler, source: InputSource) -> None:
        """Stream a file input to the model server: 1 MiB at a time (a file on a claim through sendfile), so
        the driver's memory does not grow with it; a model server that stops reading for the handler's
        timeout ends the transfer. The file is opened anew for each request."""
        started, sent = time.monotonic(), 0
        try:
            stream, size = source.open()
        except DriverError as error:
            self.notice(f"could not serve the file input {source.uri}: {error.message}")
            with contextlib.suppress(OSError):
                handler.send_error(502, "the file input cannot be read")
            return
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(size))
            handler.end_headers()
            if hasattr(stream, "fileno"):
                sent = handler.connection.sendfile(cast(BinaryIO, stream), 0, size)
            else:
                while sent < size and (chunk := stream.read(min(_CHUNK, size - sent))):
                    handler.wfile.write(chunk)
                    sent += len(chunk)
            if sent != size:
                raise ConnectionError(f"the file ended after {sent} of {size} bytes (it changed while it was read)")
        except OSError as error:
            handler.close_connection = True
            self.notice(f"serving the file input {source.uri} to the model server failed after {sent} bytes: {error}")
            return
        finally:
            stream.close()
        seconds = time.monotonic() - started
        self.notice(f"served {source.uri}: {size} bytes in {seconds:.2f} s")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _BadFraming(Exception):
    """A request body whose length cannot be known for sure (RFC 9112, section 6): refused, never guessed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _framing(handler: BaseHTTPRequestHandler) -> tuple[bool, int]:
    """(chunked, Content-Length) of the request's body. A file cut short must never be stored as whole,
    so a body of unknown length is refused: a Transfer-Encoding other than chunked (501), no length at
    all (411), a Content-Length that is not one non-negative number (400)."""
    encodings = handler.headers.get_all("Transfer-Encoding") or []
    if encodings:
        codings = [c.strip().lower() for value in encodings for c in value.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise _BadFraming(501, f"Transfer-Encoding {', '.join(codings)[:100]!r} is not supported: only chunked")
        return True, 0
    values = {v.strip() for value in handler.headers.get_all("Content-Length") or [] for v in value.split(",")}
    if not values:
        raise _BadFraming(411, "a Content-Length or Transfer-Encoding: chunked is required")
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,19}", next(iter(values))):
        raise _BadFraming(400, f"Content-Length {', '.join(sorted(values))[:100]!r} is not one non-negative number")
    return False, int(values.pop())


def _refuse(handler: BaseHTTPRequestHandler, refused: _BadFraming, linger: float = 1.0,
            most: int = 1 << 20) -> None:
    """Answer a refused request, then close gently: half-close and read what the client is still sending
    (bounded in bytes and time) so that closing with unread bytes does not reset the connection and
    destroy the answer before the client reads it (a "lingering close", as httpd and nginx do)."""
    handler.close_connection = True
    try:
        handler.send_error(refused.code, refused.message)
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_WR)
        handler.connection.settimeout(linger)
        deadline, read = time.monotonic() + linger, 0
        while read < most and time.monotonic() < deadline and (chunk := handler.connection.recv(65536)):
            read += len(chunk)
    except OSError:
        pass


def _body(handler: BaseHTTPRequestHandler) -> _Limited | _Chunked:
    chunked, length = _framing(handler)
    return _Chunked(handler.rfile) if chunked else _Limited(handler.rfile, length)


class _Chunked:
    """The body of a request sent with chunked transfer encoding. The stream ending (or stalling past the
    socket's timeout) before the last, empty chunk is an error: a cut upload is not a smaller file."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.left = 0
        self.ended = False

    def _line(self) -> bytes:
        line: bytes = self.stream.readline(1024) or b""
        if not line.endswith(b"\n"):
            raise (ValueError("a malformed chunked body: a line too long") if len(line) >= 1024
                   else ConnectionError("the upload ended early (before its last chunk)"))
        return line

    def read(self, n: int = -1) -> bytes:
        if self.ended:
            return b""
        if not self.left:
            size = self._line().split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size):
                self.ended = True
                raise ValueError("a malformed chunked body")
            self.left = int(size, 16)
            if not self.left:
                for _ in range(64):  # trailers, to the empty line
                    if not self._line().strip():
                        break
                else:
                    raise ValueError("a malformed chunked body: too many trailers")
                self.ended = True
                return b""
        data: bytes = self.stream.read(self.left if n < 0 else min(n, self.left)) or b""
        if not data:
            raise ConnectionError("the upload ended early (inside a chunk)")
        self.left -= len(data)
        if not self.left and self._line().strip():
            raise ValueError("a malformed chunked body: a chunk longer than its size")
        return data


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
        data: bytes = self.stream.read(self.left if n < 0 else min(n, self.left)) or b""
        if not data:
            raise ConnectionError(f"the body ended early: {self.left} bytes missing")
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
    # The health watch while the training runs: /health-check every `health_interval` seconds; no
    # answer for `health_grace` seconds is MODEL_UNREACHABLE, and an answer saying the server runs no
    # training (it restarted: READY, STARTING, ...) for `lost_grace` seconds is TRAINING_FAILED.
    health_interval: float = 5.0
    health_grace: float = 60.0
    lost_grace: float = 30.0
    # Values never to print or report (replaced by ***); None: the Secret input variables (secrets_from_env).
    secrets: Iterable[str] | None = None
    # The file inputs whose values (or list items) name s3:// or pvc:// files (STORAGE_INPUTS_ENV), and where
    # those are read: the driver serves them to the model server on loopback.
    storage_inputs: Collection[str] = ()
    input_files: InputFiles | None = None
    # `cogtrain drive`: progress records between the log's lines on `log`, and the whole log kept and stored as
    # logs.txt at the destination at the end (its URI and tail then in `logs_uri`, `log_tail`).
    records: bool = False
    keep_log: bool = False
    logs_uri: str | None = None
    log_tail: str | None = None
    redactor: Redactor = field(init=False)
    tee: LogTee = field(init=False)

    def __post_init__(self) -> None:
        self.redactor = Redactor(secrets_from_env(os.environ) if self.secrets is None else self.secrets)

    def run(self) -> Any:
        """The output with every file replaced by its stored URI, or DriverError; no Secret value in either."""
        try:
            output = self._run()
        except DriverError as error:
            raise DriverError(error.reason, self.redactor(error.message)) from None
        except Exception as error:  # the driver's own fault (DriverFailed, as `cogtrain drive` says): redacted too
            raise DriverError(Reason.DRIVER_FAILED,
                              self.redactor(f"the driver failed: {type(error).__name__}: {error}")) from None
        self.metrics = self.redactor.value(self.metrics)
        return output  # redacted by _store, before stored files' URIs went in

    def _run(self) -> Any:
        self.scratch.mkdir(parents=True, exist_ok=True)
        log_file = BoundedLog(Path(tempfile.mkdtemp(dir=self.scratch))) if self.keep_log else None
        self.tee = tee = LogTee(self.log, self.records, log_file)
        receiver = Receiver(Path(tempfile.mkdtemp(dir=self.scratch)), self.listen, cast(TextIO, tee), self.notices,
                            self.redactor)
        receiver.on_metrics = lambda metrics: tee.metrics(metrics, self.redactor)
        writable = False
        try:
            self.destination.check()
            writable = True
            inputs = self._serve_inputs(receiver)
            self._wait_ready(receiver)
            self._submit(receiver.url, inputs)
            self._await(receiver)
            state = receiver.state
            self.metrics = dict(state.metrics)
            if state.failure is not None:
                raise state.failure
            if state.status == "canceled" or self.cancel_requested.is_set():
                raise DriverError(Reason.CANCELED, "the training was canceled")
            if state.status == "failed":
                raise DriverError(
                    Reason.TRAINING_FAILED, f"the model's training failed: {cog_error(state.error)}"
                )
            if state.status != "succeeded":
                raise DriverError(Reason.TRAINING_FAILED, "the model server ended the training with the status "
                                  f"{state.status!r}, not succeeded")
            return self._store(state.output, receiver)
        finally:
            receiver.finish()
            self._shutdown()
            receiver.stop()
            tee.finish()
            if log_file is not None and writable:  # (a destination that refused the check is not tried again)
                self._store_log(log_file, receiver)

    def _store_log(self, log_file: BoundedLog, receiver: Inbox) -> None:
        """logs.txt at the destination, next to the weights; a failure is a notice, never the training's outcome.

        Bounded in time (the report waits for it): LOG_STORE_TIMEOUT, and LOG_STORE_GRACE after a SIGTERM, when the
        kubelet kills the driver at the end of the Pod's grace period and a report not written by then is lost. A
        store still running then is left behind (its thread ends with the driver)."""
        self.log_tail = log_file.tail() or None
        stored: list[str] = []
        failure: list[str] = []

        def store() -> None:
            try:
                stored.append(self.destination.put(log_file.finish(), "logs.txt"))
            except (DriverError, OSError) as error:
                failure.append(str(getattr(error, "message", error)))

        limit = LOG_STORE_GRACE if self.cancel_requested.is_set() else LOG_STORE_TIMEOUT
        storing = threading.Thread(target=store, name="store-logs", daemon=True)
        storing.start()
        storing.join(limit)
        if storing.is_alive():
            failure.append(f"the destination did not answer: it was not stored within {limit:g} s")
        elif stored:
            self.logs_uri = stored[0]
        if failure:
            receiver.notice(f"the training's log could not be stored as logs.txt: {failure[0]}")

    def _wait_ready(self, receiver: Receiver) -> None:
        def canceled() -> DriverError | None:
            if self.cancel_requested.is_set():
                return DriverError(Reason.CANCELED, "the training was canceled before it started")
            return None

        wait_ready(self.model_url, self.setup_timeout, receiver.log, self.progress, canceled)

    def _serve_inputs(self, receiver: Receiver) -> dict[str, Any]:
        """The inputs with each s3:// or pvc:// file replaced by the receiver's URL for it, each checked
        readable first: a missing object or file fails the training at once, naming the input, before
        any GPU time is spent waiting for the model."""
        inputs = dict(self.inputs)
        for name in self.storage_inputs:
            value = inputs.get(name)
            if isinstance(value, list):
                inputs[name] = [self._serve(f"input.{name}[{i}]", item, receiver) for i, item in enumerate(value)]
            elif value is not None:
                inputs[name] = self._serve(f"input.{name}", value, receiver)
        return inputs

    def _serve(self, where: str, value: Any, receiver: Receiver) -> Any:
        if not is_storage_ref(value):
            return value
        try:
            ref = parse_storage_ref(value)
        except ValueError as error:
            raise DriverError(Reason.INPUT_REJECTED, f"{where}: {str(value)[:200]} {error}") from None
        if self.input_files is None:
            raise DriverError(Reason.INPUT_REJECTED, f"{where}: {ref} cannot be read here (no cluster storage)")
        source = self.input_files.source(ref)
        try:
            source.check()
        except DriverError as error:
            raise DriverError(Reason.INPUT_REJECTED, f"{where}: {error.message}") from None
        return receiver.serve(source, ref.basename)

    def _submit(self, receiver_url: str, inputs: dict[str, Any]) -> None:
        body: dict[str, Any] = {
            "input": inputs,
            "webhook": f"{receiver_url}/webhook",
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        }

        def answer(reader: Reader) -> Any:
            with contextlib.suppress(JSONStreamError):
                return reader.value(Budget(ANSWER_LIMIT), lambda budget: _Cut(budget, 2000, self.redactor))
            return None

        try:
            code, detail = call(
                "PUT", f"{self.model_url}/trainings/{self.training_id}", body, {"Prefer": "respond-async"},
                parse=answer,
            )
        except HttpError as error:
            raise DriverError(Reason.MODEL_UNREACHABLE, f"cannot submit the training: {error}") from None
        if code == 422:
            try:
                details = [f"input.{'.'.join(map(str, d['loc'][2:]))}: {d['msg']}" for d in detail["detail"]]
            except (KeyError, TypeError):
                details = [self.redactor.cut(json.dumps(detail, ensure_ascii=False)[:500])]
            raise DriverError(Reason.INPUT_REJECTED, "the model rejected the input: " + "; ".join(details))
        if code >= 300:
            raise DriverError(Reason.MODEL_UNREACHABLE, f"the model server answered HTTP {code}")

    def _await(self, receiver: Receiver) -> None:
        """Wait for the training's end, watching the model server's /health-check meanwhile."""
        last_answer = time.monotonic()
        idle_since: float | None = None
        next_check = last_answer + self.health_interval
        while not receiver.state.done.wait(min(0.2, self.health_interval)):
            self.tee.tick()
            if self.cancel_requested.is_set():
                self._cancel(receiver)
                continue
            if time.monotonic() < next_check:
                continue
            try:
                status, _ = health(self.model_url, timeout=max(1.0, min(5.0, self.health_interval)))
            except HttpError as error:
                silent = time.monotonic() - last_answer
                if silent > self.health_grace and not receiver.state.done.is_set():
                    raise DriverError(
                        Reason.MODEL_UNREACHABLE,
                        f"the model server stopped answering during the training: no answer to /health-check "
                        f"for {silent:.0f} s ({error}); it exited or hangs, and the training is lost",
                    ) from None
            else:
                last_answer = time.monotonic()
                if status not in NOT_TRAINING:
                    idle_since = None
                elif idle_since is None:
                    idle_since = last_answer
                elif last_answer - idle_since >= self.lost_grace and not receiver.state.done.is_set():
                    unreadable = receiver.state.unreadable
                    raise DriverError(
                        Reason.TRAINING_FAILED,
                        f"the model server reported the training's end in a form the driver could not read "
                        f"({unreadable})" if unreadable else
                        f"the model server lost the training: it has answered {status} (running no training) for "
                        f"{last_answer - idle_since:.0f} s and never reported the training's end; it restarted "
                        "(a crash, or the model container killed, e.g. out of memory)",
                    )
            next_check = time.monotonic() + self.health_interval

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
            return {self.redactor.value(key): self._store(value, receiver) for key, value in output.items()}
        if isinstance(output, Spooled):  # decoded while the webhook arrived
            path = receiver.upload_path("output")
            output.path.rename(path)
            return self.destination.put(path, path.name)
        if isinstance(output, str) and output.startswith(UPLOAD_SCHEME):
            name = output[len(UPLOAD_SCHEME) :]
            upload = receiver.state.uploads.get(name)
            if upload is None or not upload.exists():
                raise DriverError(
                    Reason.TRAINING_FAILED,
                    f"the model's output names an uploaded file that never arrived: {name[:200]}",
                )
            return self.destination.put(upload, name)
        return self.redactor.value(output)


def cog_error(error: str | None) -> str:
    """The model's own error, without the prefixes Cog 0.23 adds ("Prediction failed: Training failed: ")."""
    text = (error or "").strip()
    while True:
        for prefix in ("Prediction failed: ", "Training failed: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        else:
            return text or "no error given"


def wait_ready(
    model_url: str,
    setup_timeout: float,
    log: Sink,
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
            status, setup_logs = health(model_url)
            answered = True
        except HttpError:
            status, setup_logs = None, ""
        if status == "READY":
            return
        if status == "SETUP_FAILED":
            logs = setup_logs.strip().splitlines()[-20:]
            log.write("\n".join(logs) + "\n")
            raise DriverError(Reason.SETUP_FAILED, "the model's setup failed: " + (logs[-1] if logs else "no logs"))
        if progress is not None:
            progress(time.monotonic() - started, str(status or "starting"))
        time.sleep(0.2)
    if not answered:
        raise DriverError(Reason.MODEL_UNREACHABLE, f"the model server at {model_url} never answered")
    raise DriverError(Reason.SETUP_FAILED, f"the model was not ready within {setup_timeout:g} s")


def decode_data_url(url: str, path: Path) -> None:
    """Write a data: URL's bytes to `path`, decoding in pieces (outputs can be large)."""
    header, _, payload = url.partition(",")
    decoder = DataUrlFile(path, header.endswith(";base64"))
    try:
        for start in range(0, len(payload), 4 * _CHUNK):
            decoder.write(payload[start : start + 4 * _CHUNK])
    finally:
        decoder.close()


def termination_message(
    output: Any, error: DriverError | None, destination: Destination | None, metrics: dict[str, Any] | None = None,
    logs: str | None = None, log_tail: str | None = None,
) -> str:
    """The report the operator reads (contract.DriverReport), always within the termination message's limit.

    Too long with the model's metrics: they are left out; still too long: the output is stored as
    output.json at the destination and referenced (if that fails, the report is that failure);
    failures are cut to fit by encoded bytes, and the log's tail gets the room the message leaves.
    """
    if error is not None:
        return DriverReport.failure(error.reason, error.message, logs, log_tail).encode()
    report = DriverReport.success(output, metrics, logs)
    if not report.fits():
        report = DriverReport.success(output, logs=logs)
    if not report.fits() and destination is not None:
        try:
            with tempfile.NamedTemporaryFile("w", delete=False, suffix=".json") as handle:
                json.dump(output, handle)
            stored = {"$ref": destination.put(Path(handle.name), "output.json")}
        except DriverError as failure:
            return DriverReport.failure(
                failure.reason, f"the training succeeded, but its output could not be stored: {failure.message}"
            ).encode()
        except OSError as failure:
            return DriverReport.failure(
                Reason.DESTINATION_UNWRITABLE,
                f"the training succeeded, but its output could not be written as output.json: {failure.strerror}",
            ).encode()
        report = report.model_copy(update={"output": stored, "weights": report.weights})
        if not report.fits():  # the weights' own URI is what does not fit: the output.json names it
            report = report.model_copy(update={"weights": None})
    if not report.fits():
        report = report.model_copy(update={"logs": None})
    if not report.fits():  # no destination to hold it (`cogtrain drive` always has one): say so, within the limit
        report = DriverReport(status="succeeded", message="the output is too large for the termination message "
                              "and there is no destination to store it")
    return report.encode()


def storage_inputs_from_env(environ: Mapping[str, str]) -> list[str]:
    """The names of the file inputs that name s3:// or pvc:// files (contract.STORAGE_INPUTS_ENV)."""
    try:
        names = json.loads(environ.get(STORAGE_INPUTS_ENV) or "[]")
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DriverError(Reason.DRIVER_FAILED, f"{STORAGE_INPUTS_ENV} is not a JSON array of input names")
    return names


def inputs_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The inputs the Job passes (docs/driver.md): JSON values, Secret values as they are, and a
    `list[Secret]` input's Secret as a JSON array of strings. No message repeats a value."""
    inputs: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(SECRET_LIST_ENV_PREFIX):
            try:
                items = json.loads(value)
            except (ValueError, RecursionError):
                items = None
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise DriverError(Reason.INPUT_REJECTED, f"{key} (a list[Secret] input) is not a JSON array of strings")
            inputs[key[len(SECRET_LIST_ENV_PREFIX) :]] = items
        elif key.startswith(SECRET_ENV_PREFIX):
            inputs[key[len(SECRET_ENV_PREFIX) :]] = value
        elif key.startswith(INPUT_ENV_PREFIX):
            try:
                inputs[key[len(INPUT_ENV_PREFIX) :]] = json.loads(value)
            except ValueError:
                raise DriverError(Reason.INPUT_REJECTED, f"{key} is not JSON") from None
    return inputs
