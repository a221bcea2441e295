"""Benchmark: one large output file from Cog's model server, through the driver, to a local folder.

A test-only model's train() writes a file of the given size and returns it; Cog's own server
uploads it to `cogtrain drive` (a separate process, as in the training Pod), which streams it to
scratch and stores it under a pvc-style destination folder on the same disk. Printed:

- the driver's throughput: file size / the time from the first to the last byte of Cog's upload
  as the driver received and wrote it (its own log line), next to a plain `cp` of a just-written
  file of the same size on the same disk, alternating, in the same run;
- the whole path: file size / (stored file's last write − the moment train() returned), which
  also counts Cog's own preparation before it starts the upload;
- the driver's peak RSS (ru_maxrss of its process) for 1 GiB and 4 GiB files.

Run: .venv/bin/python bench/driver_transfer.py [--throughput-gib 2] [--rss-gib 1,4] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cogserver import free_port, start_cog_server  # noqa: E402

TRAIN = '''
import os, tempfile, time
from cog import Input, Path


def train(size_mib: int = Input(default=1)) -> Path:
    block = os.urandom(1024 * 1024)
    path = Path(tempfile.mkdtemp()) / "weights.bin"
    with open(path, "wb") as out:
        for _ in range(size_mib):
            out.write(block)
    print(f"RETURNED_AT={time.time():.6f}", flush=True)
    return path
'''

SCHEMA_INPUT = {"properties": {"size_mib": {"default": 1, "title": "Size Mib", "type": "integer", "x-order": 0}},
                "title": "TrainingInput", "type": "object"}


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "cog.yaml").write_text('build:\n  python_version: "3.11"\ntrain: "train.py:train"\n')
    (folder / "train.py").write_text(TRAIN)
    template = Path(__file__).resolve().parent.parent / "tests" / "driver-models" / "setup-fails" / ".cog"
    schema = json.loads((template / "openapi_schema.json").read_text())
    schema["components"]["schemas"]["TrainingInput"] = SCHEMA_INPUT
    (folder / ".cog").mkdir()
    (folder / ".cog" / "openapi_schema.json").write_text(json.dumps(schema))
    return folder


def drive_once(model: Path, work: Path, size_mib: int) -> dict[str, float]:
    """One training through `cogtrain drive`; returns seconds, bytes and the driver's peak RSS."""
    listen = free_port()
    os.sync()  # every measured run starts with no dirty pages waiting for the disk
    server = start_cog_server(model, ["--await-explicit-shutdown", "true",
                                      "--upload-url", f"http://127.0.0.1:{listen}/upload/"])
    mount = work / "mnt"
    try:
        env = {**os.environ, "COGTRAIN_INPUT_size_mib": str(size_mib)}
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "cogtrain"), "drive", f"--model-url={server.url}",
             f"--listen=127.0.0.1:{listen}", "--training-id=bench", "--destination=pvc://bench/out",
             f"--destination-root={mount}", f"--scratch={work / 'scratch'}", "--namespace=ml", "--name=big",
             f"--termination-log={work / 'termination-log'}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out = process.stdout.read() if process.stdout else ""
        err = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"cogtrain drive failed ({process.returncode}): {err[-2000:]}")
        server.process.wait(timeout=60)
    finally:
        server.stop()
    returned = float(re.search(r"RETURNED_AT=([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    received = float(re.search(r"received weights.bin: \d+ bytes in ([0-9.]+) s", err).group(1))  # type: ignore[union-attr]
    stored = mount / "out" / "ml" / "big" / "weights.bin"
    size = stored.stat().st_size
    assert size == size_mib * 1024 * 1024
    seconds = stored.stat().st_mtime - returned
    stored.unlink()
    return {"seconds": seconds, "driver_seconds": received, "bytes": size, "rss_mib": usage.ru_maxrss / 1024}


def cp_seconds(size_mib: int, work: Path) -> float:
    """`cp` of a just-written file of the same size on the same disk (both in the page cache, like the driver's)."""
    source, target = work / "cp-source.bin", work / "cp-target.bin"
    os.sync()
    block = os.urandom(1024 * 1024)
    with source.open("wb") as out:
        for _ in range(size_mib):
            out.write(block)
    started = time.perf_counter()  # no sync in between: like the driver, cp gets a just-written file
    subprocess.run(["cp", str(source), str(target)], check=True)
    seconds = time.perf_counter() - started
    source.unlink()
    target.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--throughput-gib", type=int, default=2)
    parser.add_argument("--rss-gib", default="1,4")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cogtrain-bench-", dir=args.dir))
    try:
        model = make_model(work / "model")
        mib = args.throughput_gib * 1024
        runs = []
        for _ in range(args.runs):  # alternate, so noise from the shared machine hits both
            drive = drive_once(model, work, mib)
            copy = cp_seconds(mib, work)
            runs.append((drive, copy))
        median = len(runs) // 2
        drive_s = sorted(d["driver_seconds"] for d, _ in runs)[median]
        whole_s = sorted(d["seconds"] for d, _ in runs)[median]
        cp_s = sorted(c for _, c in runs)[median]
        size = runs[0][0]["bytes"]
        print(f"{args.throughput_gib} GiB output file, median of {len(runs)} alternating runs on the same disk:")
        print(f"  the driver (receive from Cog's upload, write, store):  {size / drive_s / 2**20:6.0f} MiB/s ({drive_s:.2f} s)")
        print(f"  plain cp of a just-written file of that size:         {size / cp_s / 2**20:6.0f} MiB/s ({cp_s:.2f} s)")
        print(f"  driver / cp throughput: {cp_s / drive_s:.0%} (target: at least 70%)")
        print(f"  whole path, train() returns -> file stored (Cog's own upload preparation included): "
              f"{size / whole_s / 2**20:.0f} MiB/s ({whole_s:.2f} s, {cp_s / whole_s:.0%} of cp)")
        print(f"  driver peak RSS at {args.throughput_gib} GiB: {max(d['rss_mib'] for d, _ in runs):.0f} MiB")
        for gib in (int(g) for g in args.rss_gib.split(",") if g):
            result = drive_once(model, work, gib * 1024)
            print(f"driver peak RSS, {gib} GiB file: {result['rss_mib']:.0f} MiB "
                  f"({result['bytes'] / result['seconds'] / 2**20:.0f} MiB/s) (target: under 100 MB, same for all sizes)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
