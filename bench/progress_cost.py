"""Benchmark: what reading running Trainings' progress costs the operator and the API server, per Training.

The operator reads the tail of each running Training's driver log (pods/log, at most 100 lines and 64 KiB)
every `progress_interval_seconds` (20), at most `progress_reads_per_second` (10) in all, and writes the status
only when the record changed. Measured here, on this machine:

- the operator's CPU per read: `handlers._driver_log` + `last_record` through the real Kubernetes client against
  a loopback HTTP server that answers like the API server with a full 64 KiB tail (the record on its last line,
  the worst case for the parse), and the status comparison; the caller thread's CPU time (`thread_time`);
- requests per running Training per minute, at the interval and past the cap, from the settings;
- the driver's side: the bytes its progress records add to its stdout, through `LogTee`, for a chatty model.

Run: .venv/bin/python bench/progress_cost.py [--reads 2000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client

from cogtrain.driver import LogTee
from cogtrain.handlers import PROGRESS_TAIL_BYTES, Runtime, _driver_log
from cogtrain.progress import MARKER, Tracker, last_record
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings


def tail_body() -> bytes:
    """A driver log tail as the API server answers it: 64 KiB of model lines, a full record on the last line."""
    writer = LogTee(io.StringIO(), records=True)
    writer.metrics({f"metric_{i:02d}": i * 0.5 for i in range(32)})
    writer.write(" 45%|####5     | 45/100 [00:01<00:01, 44.1it/s]\n")
    writer.tick(final=True)
    record = [line for line in writer.stream.getvalue().split("\n") if line.startswith(MARKER)][-1]  # type: ignore[attr-defined]
    line = "step 45/100 loss 0.1234 lr 0.0001 " + "x" * 600 + "\n"
    body = line * ((PROGRESS_TAIL_BYTES - len(record) - 1) // len(line))
    return (body + record + "\n").encode()


def serve(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def operator_cpu(reads: int) -> tuple[float, float, int]:
    """(CPU ms per read through the client, CPU ms of the parse alone, bytes read per read)."""
    body = tail_body()
    server = serve(body)
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    runtime = Runtime(settings=Settings(), api_client=client.ApiClient(configuration),
                      resolver=SchemaResolver(RegistryClient()))
    status = {"phase": "Running"}
    for _ in range(20):  # warm up: connections, imports
        _driver_log(runtime, "ns", "pod", 100)
    samples = []
    for _ in range(reads):
        started = time.thread_time()
        text, _ = _driver_log(runtime, "ns", "pod", 100)
        record = last_record(text)
        assert record is not None
        fields = record.status()
        _ = all(status.get(key) == value for key, value in fields.items())
        samples.append(time.thread_time() - started)
    parse = []
    text = body.decode()
    for _ in range(reads):
        started = time.thread_time()
        last_record(text)
        parse.append(time.thread_time() - started)
    server.shutdown()
    return statistics.mean(samples) * 1000, statistics.mean(parse) * 1000, len(body)


def driver_overhead(lines: int = 200_000) -> tuple[int, int, int, float]:
    """(model log bytes, record bytes added, records, CPU seconds of the tee) for a model printing `lines` short
    lines with 8 metrics."""
    out = io.StringIO()
    clock = [0.0]
    writer = LogTee(out, records=True, tracker=Tracker(), clock=lambda: clock[0])
    writer.metrics({f"m{i}": 0.5 * i for i in range(8)})
    batches = ["".join(f"step {j}/{lines} loss {1 / (j + 1):.4f}\n" for j in range(i, i + 100))
               for i in range(0, lines, 100)]  # a webhook's batch: 100 lines, 0.5 s apart
    started = time.process_time()
    for batch in batches:
        writer.write(batch)
        clock[0] += 0.5
        writer.tick()
    cpu = time.process_time() - started
    text = out.getvalue()
    records = [line for line in text.split("\n") if line.startswith(MARKER)]
    return sum(map(len, batches)), sum(len(r) + 1 for r in records), len(records), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    settings = Settings()
    per_read, parse, size = operator_cpu(args.reads)
    interval, cap = settings.progress_interval_seconds, settings.progress_reads_per_second
    per_minute = 60 / interval
    full = cap * interval
    print(f"operator, per read of a {size // 1024} KiB tail: {per_read:.2f} ms CPU through the client "
          f"({parse:.2f} ms of it the parse), over {args.reads} reads")
    print(f"per running Training per minute: {per_minute:.0f} pods/log GETs, at most {per_minute:.0f} status PATCHes "
          f"(only when the record changed), {per_minute * per_read:.1f} ms operator CPU, "
          f"{per_minute * size / 1024:.0f} KiB read")
    print(f"the cap, {cap:g} reads/s: the interval stays {interval:g} s up to {full:.0f} running Trainings; past that "
          f"each is read every N/{cap:g} s (1,000 running: every {1000 / cap:.0f} s, "
          f"{60 * cap / 1000:.1f} reads a minute each); the operator then spends {cap * per_read / 10:.1f}% of a core")
    model, added, records, cpu = driver_overhead()
    print(f"driver: {records} records, {added / 1024:.0f} KiB added to {model / 1024:.0f} KiB of model log "
          f"({100 * added / model:.1f}%) for 200,000 short lines printed over {200_000 // 100 * 0.5:.0f} s; "
          f"the tee (parse, records, echo) took {cpu:.2f} s CPU, {cpu / (model / 2**20):.2f} s per MiB")


if __name__ == "__main__":
    main()
