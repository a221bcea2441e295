"""Benchmark: output files through `cogtrain drive`, with the driver told apart from its sender.

In a training Pod, Cog's model server uploads each returned file to the driver with HTTP PUT; the
driver's receiver (cogtrain.driver.Receiver) splices socket -> pipe -> file in scratch, and the
driver then moves the file into the destination folder. How fast a file arrives depends on both
ends, so this script measures them apart. `cogtrain drive` always runs as its own process (the
real console script), and every file takes the real path PUT -> splice -> scratch -> destination.

Baseline: `cp --reflink=never` (a real copy, never a shared extent) of the same page-cached source
file into the driver's scratch folder, i.e. onto the filesystem the driver writes to. Nothing here
fsyncs, neither cp nor the driver: both figures are "into the page cache", and both are throttled
alike once the dirty pages pass the kernel's limits (vm.dirty_ratio). Every figure is the median of
--runs runs that alternate, run for run, with a cp run; "% of cp" is cp's median time / its median
time. Each run starts after os.sync(), so no run inherits another's dirty pages.

Figures:

1. driver <- reference sender. This script plays the model server (a stub: /health-check READY,
   accepts the training, receives /shutdown) and uploads the source file with one plain HTTP PUT
   (Content-Length, then os.sendfile on the socket: the sender costs next to nothing). Time: the
   sender's connect -> the driver's POST /shutdown, which it sends only once the file is stored in
   the destination folder. "of which PUT answered": connect -> the driver's 201, the file being
   written and closed in scratch. This is the driver's own ceiling. Target: >= 80% of cp.
   Two ceilings beside it, the same sender to a bare receiver in its own process: the driver's
   splice loop alone to a new file (what the driver could reach), and the same to /dev/null (what
   loopback TCP allows on this machine, no disk).
2. Cog path, as in a Pod: a test-only model's train() returns a hard link to the same source file
   and Cog's own server uploads it. "upload as the driver received it" is the driver's own log
   line (its first to last byte, file closed); "train() returned to file written" adds what Cog
   does before it sends the first byte. Cog's server's own peak RSS is shown beside the driver's.
3. driver peak RSS per size: VmHWM of the `cogtrain drive` process (see PeakRss: not ru_maxrss,
   which counts the benchmark's own memory in). Target: under 60 MB, the same for every size.
4. ready: spawn of `cogtrain drive` with no model server at all (so it sits in its wait for
   /health-check) -> its --listen port accepts a TCP connection, and -> it answers a webhook POST.
   Median of --starts. Target: within 0.5 s. "listening while waiting for the model" counts the
   starts where the answer came while the driver was still waiting for the model.

Method: the four contenders of the reference series (driver, bare loop to a file, bare loop to /dev/null,
cp) run in an order that rotates each round, so none always runs right after another's dirty pages; the PUT
starts 1 s after the driver submitted the training, as train() runs before its output arrives (the driver's
start-up is figure 4); VmHWM is polled every 50 ms (the kernel keeps the peak itself). A review measured each
of these as making no difference beyond noise: what moves the ratio is load on the machine, for the driver
and the bare loop alike (at load 3-4: 67% and 62% of cp; quiet: 84-99%).

Who is the bottleneck (cog 0.23.1, a 2-CPU ext4 VM; docs/driver.md):
- at 1 GiB, the kernel's socket -> pipe -> file path: the driver reaches its bare splice loop (91% vs 89%
  of cp, 8 rotated runs); loopback TCP to /dev/null alone runs at more than twice cp.
- at 4 GiB, dirty-page writeback: past vm.dirty_* limits cp and the driver are throttled alike
  (the "% of cp" there says more about the kernel's throttling than about the driver).
- on the Cog path, Cog's server: before its first byte it reads the whole file into memory and copies
  it into a second buffer (peak RSS about twice the file), then writes it from user space; train()
  returned -> file written stays under 20% of cp.
- earlier fixes in the driver: it created its file and reopened it with O_TRUNC, which made ext4
  (auto_da_alloc) write the file back inside close() (36% of cp); it now creates it new ("xb").

Run: .venv/bin/python bench/driver_transfer.py [--sizes-gib 1,4] [--cog-gib 1] [--runs 5] [--starts 7] [--dir DIR]
(about 4 minutes on 2 CPUs; needs about 2.2x the largest size free on the work folder's filesystem.)
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cogtrain.local import free_port  # noqa: E402
from support.cogserver import start_cog_server  # noqa: E402

COGTRAIN = Path(sys.executable).parent / "cogtrain"
MIB = 2**20
GIB = 2**30
THROUGHPUT_TARGET = 0.80  # of cp
RSS_TARGET_MB = 60
READY_TARGET_S = 0.5

TRAIN = '''
import os, tempfile, time
from cog import Input, Path


def train(source: str = Input(description="a file to return as the output")) -> Path:
    path = Path(tempfile.mkdtemp(dir=os.path.dirname(source))) / "weights.bin"
    os.link(source, path)  # the benchmark's page-cached source file, as it is
    print(f"RETURNED_AT={time.time():.6f}", flush=True)
    return path
'''

SCHEMA_INPUT = {"properties": {"source": {"title": "Source", "type": "string", "x-order": 0,
                                          "description": "a file to return as the output"}},
                "required": ["source"], "title": "TrainingInput", "type": "object"}


def say(line: str) -> None:
    print(line, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the source file and the cp baseline -------------------------------------------------------

def make_source(path: Path, size: int) -> None:
    """A file of random data, written, synced and read once, so it sits clean in the page cache."""
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)
        out.write(block[: size % MIB])
        out.flush()
        os.fsync(out.fileno())
    with path.open("rb") as source:
        while source.read(8 * MIB):
            pass


def cp_seconds(source: Path, target: Path) -> float:
    """`cp` of the page-cached source to the driver's filesystem; no sync after it, like the driver."""
    os.sync()  # every measured run starts with no dirty pages waiting for the disk
    started = time.perf_counter()
    subprocess.run(["cp", "--reflink=never", str(source), str(target)], check=True)
    seconds = time.perf_counter() - started
    assert target.stat().st_size == source.stat().st_size
    target.unlink()
    return seconds


# --- cogtrain drive as its own process ---------------------------------------------------------

@dataclass
class Layout:
    work: Path

    @property
    def scratch(self) -> Path:
        return self.work / "scratch"

    @property
    def mount(self) -> Path:
        return self.work / "mnt"

    @property
    def stored(self) -> Path:
        return self.mount / "out" / "ml" / "big" / "weights.bin"

    def drive_command(self, model_url: str, listen: int) -> list[str]:
        return [str(COGTRAIN), "drive", f"--model-url={model_url}", f"--listen=127.0.0.1:{listen}",
                "--training-id=bench", "--destination=pvc://bench/out", f"--destination-root={self.mount}",
                f"--scratch={self.scratch}", "--namespace=ml", "--name=big",
                f"--termination-log={self.work / 'termination-log'}"]


class PeakRss:
    """A process's peak RSS: VmHWM from /proc/PID/status, polled until it exits.

    Not ru_maxrss from wait4: subprocess starts children with vfork, and the kernel then counts the
    parent's own peak into the child's ru_maxrss (a /bin/true spawned by a 300 MiB Python reports
    300 MiB), so that figure is the benchmark's RSS, not the driver's.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.kib = pid, 0
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
            except OSError:
                return
            if found is None:  # a zombie: it has exited, its memory is gone
                return
            self.kib = max(self.kib, int(found.group(1)))
            time.sleep(0.05)  # VmHWM is the kernel's own peak: polling only has to outlive the process

    def mb(self, timeout: float = 300) -> float:
        """Wait for the process to exit (without reaping it); the peak in MB (10^6 bytes)."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"process {self.pid} still runs after {timeout:g} s")
        return self.kib * 1024 / 1e6


def spawn_drive(layout: Layout, model_url: str, listen: int, env: dict[str, str] | None = None,
                tag: str = "drive") -> tuple[subprocess.Popen[bytes], PeakRss, Path, Path]:
    out, err = layout.work / f"{tag}.out", layout.work / f"{tag}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(layout.drive_command(model_url, listen), env={**os.environ, **(env or {})},
                                   stdout=stdout, stderr=stderr)
    return process, PeakRss(process.pid), out, err


def reap(process: subprocess.Popen[bytes], rss: PeakRss, err: Path) -> float:
    """Wait for the driver; its peak RSS in MB. Raises if it failed."""
    peak = rss.mb()
    if process.wait(timeout=60) != 0:
        raise RuntimeError(f"cogtrain drive failed ({process.returncode}): {err.read_text()[-2000:]}")
    return peak


def check_stored(layout: Layout, size: int) -> None:
    assert layout.stored.stat().st_size == size, (layout.stored.stat().st_size, size)
    layout.stored.unlink()


# --- the reference sender and a stub model server ----------------------------------------------

@dataclass
class StubModel:
    """Just enough of Cog's server for `cogtrain drive`: READY, a training it accepts, /shutdown."""

    submitted: threading.Event = field(default_factory=threading.Event)
    shut_down: threading.Event = field(default_factory=threading.Event)
    webhook: str = ""
    shutdown_at: float = 0.0
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self.answer(200, {"status": "READY", "setup": {"status": "succeeded", "logs": ""}})

            def do_PUT(self) -> None:  # noqa: N802  (the training)
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                stub.webhook = request["webhook"]
                self.answer(202, {"id": "bench", "status": "starting"})
                stub.submitted.set()

            def do_POST(self) -> None:  # noqa: N802  (/shutdown, /cancel)
                if self.path == "/shutdown":
                    stub.shutdown_at = time.perf_counter()
                    stub.shut_down.set()
                self.answer(200, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def http_answer(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Read an HTTP response head from a socket: (status, headers)."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            break
        head += data
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}


def put_file(port: int, path: str, source: Path) -> str:
    """The reference sender: one HTTP PUT with Content-Length, the body by sendfile(2); the Location."""
    size = source.stat().st_size
    with socket.create_connection(("127.0.0.1", port)) as sock, source.open("rb") as body:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        offset = 0
        while offset < size:
            sent = os.sendfile(sock.fileno(), body.fileno(), offset, size - offset)
            if not sent:
                raise ConnectionError("the source file ended early")
            offset += sent
        status, headers = http_answer(sock)
    if status != 201:
        raise RuntimeError(f"the driver answered the upload with HTTP {status}")
    return headers["location"]


def post_json(url: str, body: Any) -> int:
    host, _, rest = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=30)
    try:
        connection.request("POST", "/" + rest, json.dumps(body), {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def reference_once(layout: Layout, source: Path) -> dict[str, float]:
    """The reference sender through `cogtrain drive`: seconds to stored, seconds to received, peak RSS."""
    size = source.stat().st_size
    listen = free_port()
    stub = StubModel()
    model_url = stub.start()
    try:
        os.sync()
        process, peak, _, err = spawn_drive(layout, model_url, listen, tag="reference")
        if not stub.submitted.wait(30):
            process.kill()
            raise RuntimeError(f"cogtrain drive never submitted the training: {err.read_text()[-2000:]}")
        time.sleep(1.0)  # train() runs before its output arrives: the driver's start-up is over by then
        started = time.perf_counter()
        location = put_file(listen, "/upload/weights.bin", source)
        received = time.perf_counter() - started
        post_json(stub.webhook, {"id": "bench", "status": "succeeded", "output": location, "logs": ""})
        if not stub.shut_down.wait(120):
            process.kill()
            raise RuntimeError(f"cogtrain drive never shut the model down: {err.read_text()[-2000:]}")
        stored = stub.shutdown_at - started
        rss = reap(process, peak, err)
    finally:
        stub.stop()
    check_stored(layout, size)
    return {"seconds": stored, "received": received, "rss_mb": rss}


BARE_RECEIVER = r"""
import fcntl, os, re, socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
head = b""
while b"\r\n\r\n" not in head:
    head += conn.recv(65536)
head, _, body = head.partition(b"\r\n\r\n")
length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) - len(body)
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(out, body)
read_end, write_end = os.pipe()
fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ, as the driver
while length:
    moved = os.splice(conn.fileno(), write_end, min(length, 1 << 20))
    if not moved:
        raise SystemExit("the upload ended early")
    length -= moved
    while moved:
        moved -= os.splice(read_end, out, moved)
os.close(out)
conn.sendall(b"HTTP/1.1 201 Created\r\nLocation: cogtrain-upload://weights.bin\r\nContent-Length: 0\r\n\r\n")
"""


def bare_once(source: Path, target: Path) -> float:
    """The reference sender to the driver's splice loop alone (no HTTP server, no driver), in its own
    process: seconds from connect to the answer. To /dev/null: what loopback TCP itself allows."""
    os.sync()
    process = subprocess.Popen([sys.executable, "-c", BARE_RECEIVER, str(target)], stdout=subprocess.PIPE)
    try:
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        started = time.perf_counter()
        put_file(port, "/upload/weights.bin", source)
        seconds = time.perf_counter() - started
        if process.wait(timeout=60) != 0:
            raise RuntimeError("the bare receiver failed")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if target.is_file():
        assert target.stat().st_size == source.stat().st_size
        target.unlink()
    return seconds


# --- Cog's own server as the sender --------------------------------------------------------------

def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "cog.yaml").write_text('build:\n  python_version: "3.11"\ntrain: "train.py:train"\n')
    (folder / "train.py").write_text(TRAIN)
    template = ROOT / "tests" / "driver-models" / "setup-fails" / ".cog"
    schema = json.loads((template / "openapi_schema.json").read_text())
    schema["components"]["schemas"]["TrainingInput"] = SCHEMA_INPUT
    (folder / ".cog").mkdir()
    (folder / ".cog" / "openapi_schema.json").write_text(json.dumps(schema))
    return folder


def cog_once(layout: Layout, model: Path, source: Path) -> dict[str, float]:
    """One training through Cog's server and `cogtrain drive`, as in a training Pod."""
    size = source.stat().st_size
    listen = free_port()
    os.sync()
    server = start_cog_server(model, ["--await-explicit-shutdown", "true",
                                      "--upload-url", f"http://127.0.0.1:{listen}/upload/"])
    server_peak = PeakRss(server.process.pid)
    try:
        process, peak, out, err = spawn_drive(layout, server.url, listen,
                                              {"COGTRAIN_INPUT_source": json.dumps(str(source))}, tag="cog")
        rss = reap(process, peak, err)
        server.process.wait(timeout=60)
    finally:
        server.stop()
    cog_rss = server_peak.mb()
    returned = float(re.search(r"RETURNED_AT=([0-9.]+)", out.read_text()).group(1))  # type: ignore[union-attr]
    driver = float(re.search(r"received weights.bin: \d+ bytes in ([0-9.]+) s",  # type: ignore[union-attr]
                             err.read_text()).group(1))
    whole = layout.stored.stat().st_mtime - returned
    assert source.stat().st_size == size, "Cog removed or changed the source file"
    check_stored(layout, size)
    return {"seconds": whole, "driver_seconds": driver, "rss_mb": rss, "cog_rss_mb": cog_rss}


# --- ready to receive ----------------------------------------------------------------------------

def ready_once(layout: Layout) -> dict[str, float]:
    """Spawn `cogtrain drive` with no model server; seconds until its receiver accepts, and answers."""
    listen, nobody = free_port(), free_port()
    started = time.perf_counter()
    process, _, _, err = spawn_drive(layout, f"http://127.0.0.1:{nobody}", listen, tag="ready")
    try:
        while True:
            if process.poll() is not None or time.perf_counter() - started > 30:
                raise RuntimeError(f"cogtrain drive never listened: {err.read_text()[-2000:]}")
            try:
                sock = socket.create_connection(("127.0.0.1", listen), timeout=5)
                break
            except ConnectionRefusedError:
                time.sleep(0.001)
        accepted = time.perf_counter() - started
        with sock:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            status, _ = http_answer(sock)
        answered = time.perf_counter() - started
        waiting = process.poll() is None  # still in its wait for the model's /health-check
        if status != 200:
            raise RuntimeError(f"the receiver answered a webhook with HTTP {status}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {"accepted": accepted, "answered": answered, "waiting": float(waiting)}


# --- the run -------------------------------------------------------------------------------------

Row = tuple[str, str, str, str, str, str, str]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def rate_row(name: str, gib: float, seconds: list[float], copies: list[float], target: str = "") -> Row:
    """A throughput row: medians, MiB/s, and % of the cp runs alternated with it."""
    size, taken, cp = gib * GIB, median(seconds), median(copies)
    return (name, f"{gib:g} GiB", f"{taken:.3f}", f"{size / taken / MIB:.0f}", f"{size / cp / MIB:.0f}",
            f"{cp / taken:.0%}", target)


def rss_row(name: str, gib: float, peaks: list[float]) -> Row:
    peak = max(peaks)
    return (name, f"{gib:g} GiB", "", f"{peak:.1f} MB", "", "", f"< {RSS_TARGET_MB} MB: {verdict(peak < RSS_TARGET_MB)}")


def reference_series(layout: Layout, source: Path, gib: float, runs: int) -> list[Row]:
    """The driver, the bare splice loop to a file and to /dev/null, and cp, `runs` times each, in an order
    that rotates run for run: whichever runs first after a cp of the previous round is measurably slower
    here (by up to a third, whoever it is), so each takes each place in turn."""
    size = int(gib * GIB)
    make_source(source, size)
    say(f"reference sender, {gib:g} GiB:")
    results: list[dict[str, float]] = []
    to_file: list[float] = []
    to_null: list[float] = []
    copies: list[float] = []
    contenders: list[Callable[[], None]] = [
        lambda: results.append(reference_once(layout, source)),
        lambda: to_file.append(bare_once(source, layout.scratch / "bare.bin")),
        lambda: to_null.append(bare_once(source, Path(os.devnull))),
        lambda: copies.append(cp_seconds(source, layout.scratch / "cp-target.bin")),
    ]
    for index in range(runs):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender()
        result = results[-1]
        say(f"  run {index + 1}/{runs}: cogtrain drive {size / result['seconds'] / MIB:.0f} MiB/s to stored "
            f"({result['seconds']:.3f} s; PUT answered after {result['received']:.3f} s), peak RSS "
            f"{result['rss_mb']:.1f} MB | bare splice to file {size / to_file[-1] / MIB:.0f} MiB/s | "
            f"bare to /dev/null {size / to_null[-1] / MIB:.0f} MiB/s | cp {size / copies[-1] / MIB:.0f} MiB/s")
    seconds = [r["seconds"] for r in results]
    return [
        rate_row("driver <- reference sender, PUT to stored", gib, seconds, copies,
                 f">= 80%: {verdict(median(copies) / median(seconds) >= THROUGHPUT_TARGET)}"),
        rate_row("  of which PUT answered (file in scratch)", gib, [r["received"] for r in results], copies),
        rate_row("  ceiling: bare splice loop to a file", gib, to_file, copies),
        rate_row("  ceiling: bare splice loop to /dev/null", gib, to_null, copies),
        rss_row("driver peak RSS, reference sender", gib, [r["rss_mb"] for r in results]),
    ]


def cog_series(layout: Layout, model: Path, source: Path, gib: float, runs: int) -> list[Row]:
    """Alternating: a training through Cog's server and the driver, cp; `runs` times."""
    size = int(gib * GIB)
    make_source(source, size)
    say(f"Cog's own upload, {gib:g} GiB:")
    results, copies = [], []
    for index in range(runs):
        result = cog_once(layout, model, source)
        results.append(result)
        copies.append(cp_seconds(source, layout.scratch / "cp-target.bin"))
        say(f"  run {index + 1}/{runs}: train() returned to written {size / result['seconds'] / MIB:.0f} MiB/s "
            f"({result['seconds']:.3f} s), of which the upload as the driver logged it "
            f"{size / result['driver_seconds'] / MIB:.0f} MiB/s ({result['driver_seconds']:.3f} s), peak RSS "
            f"{result['rss_mb']:.1f} MB (Cog's server: {result['cog_rss_mb']:.0f} MB) | cp {size / copies[-1] / MIB:.0f} MiB/s")
    return [
        rate_row("Cog path: upload as the driver received it", gib, [r["driver_seconds"] for r in results], copies),
        rate_row("Cog path: train() returned to file written", gib, [r["seconds"] for r in results], copies),
        rss_row("driver peak RSS, Cog's upload", gib, [r["rss_mb"] for r in results]),
        ("  for comparison: Cog's server peak RSS", f"{gib:g} GiB", "",
         f"{max(r['cog_rss_mb'] for r in results):.0f} MB", "", "", ""),
    ]


def ready_series(layout: Layout, starts: int) -> list[Row]:
    say(f"cogtrain drive starts, {starts}:")
    results = []
    for index in range(starts):
        result = ready_once(layout)
        results.append(result)
        say(f"  start {index + 1}/{starts}: accepts after {result['accepted']:.3f} s, answers after "
            f"{result['answered']:.3f} s, still waiting for the model: {bool(result['waiting'])}")
    answered = [r["answered"] for r in results]
    return [
        ("ready: spawn to TCP accept", "", f"{median([r['accepted'] for r in results]):.3f}", "", "", "", ""),
        ("ready: spawn to HTTP answer", "", f"{median(answered):.3f}", "", "", "",
         f"<= {READY_TARGET_S} s: {verdict(median(answered) <= READY_TARGET_S)}"),
        ("  slowest start, to HTTP answer", "", f"{max(answered):.3f}", "", "", "", ""),
        ("  listening while waiting for the model", "", "", f"{sum(int(r['waiting']) for r in results)}/{starts}",
         "", "", ""),
    ]


def header(args: argparse.Namespace, work: Path) -> str:
    mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    device, mount, fstype = max((m for m in mounts if str(work).startswith(m[1].rstrip("/") + "/")),
                                key=lambda m: len(m[1]))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "operator"],
                               capture_output=True, text=True).stdout.strip()
        commit += " + uncommitted changes in operator/" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"# bench/driver_transfer.py --sizes-gib {args.sizes_gib} --cog-gib {args.cog_gib} --runs {args.runs} "
            f"--starts {args.starts} | {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} | "
            f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, Linux {platform.release()} | work dir {work} "
            f"({fstype} {device} at {mount}) | Python {platform.python_version()}, cog {version('cog')} | "
            f"commit {commit}")


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-gib", default="1,4", help="file sizes for the reference sender and RSS (GiB)")
    parser.add_argument("--cog-gib", default="1", help="file sizes for Cog's own upload (GiB; empty: skip)")
    parser.add_argument("--runs", type=int, default=8, help="alternating runs per size, for each sender")
    parser.add_argument("--starts", type=int, default=7, help="starts of `cogtrain drive` for the ready figure")
    parser.add_argument("--dir", type=Path, default=None, help="work folder's parent (default: the temp dir)")
    args = parser.parse_args()
    sizes = [float(g) for g in args.sizes_gib.split(",") if g]
    cog_sizes = [float(g) for g in args.cog_gib.split(",") if g and float(g) > 0]
    work = Path(tempfile.mkdtemp(prefix="cogtrain-bench-", dir=args.dir)).resolve()
    layout = Layout(work)
    title = header(args, work)
    began, load_before = time.monotonic(), load()
    say(title)
    free, needed = shutil.disk_usage(work).free, 2.2 * max(sizes + cog_sizes + [0]) * GIB
    if free < needed:
        raise SystemExit(f"{work}: {free / GIB:.1f} GiB free, the largest size needs about {needed / GIB:.1f} GiB")
    rows: list[Row] = []
    try:
        layout.scratch.mkdir()
        layout.mount.mkdir()
        assert os.stat(layout.scratch).st_dev == os.stat(layout.mount).st_dev == os.stat(work).st_dev
        source = work / "source.bin"
        # warm-up, not counted: the driver's imports and cp come into the page cache
        make_source(source, 64 * MIB)
        reference_once(layout, source)
        bare_once(source, Path(os.devnull))
        cp_seconds(source, layout.scratch / "cp-target.bin")
        for gib in sizes:
            rows += reference_series(layout, source, gib, args.runs)
        if cog_sizes:
            model = make_model(work / "model")
        for gib in cog_sizes:
            rows += cog_series(layout, model, source, gib, args.runs)
        source.unlink()
        rows += ready_series(layout, args.starts)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    say("")
    say(title)
    say(f"# medians of {args.runs} alternating runs; cp: `cp --reflink=never` of the same page-cached source file "
        f"into the driver's scratch folder; took {time.monotonic() - began:.0f} s; {load_before} before, "
        f"{load()} after")
    table: list[Row] = [("figure", "size", "median s", "MiB/s", "cp MiB/s", "% of cp", "target"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        say("  ".join(cell.ljust(width) if i in (0, 1, 6) else cell.rjust(width)
                      for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip())


if __name__ == "__main__":
    main()
