"""The earlier benchmark, kept as `bench/operator_create.py --emulator`: Trainings created at once against the
test API server (kmock-based) on loopback, not the real control plane.

The operator runs as `cogtrain operator -A --standalone` in its own process; schema lookups come
from its cache (one warm-up Training first). Prints p50/p99 time from create to Job created and
to status Pending, the total, and the operator's peak RSS; then runs a bare script that makes the
same API calls itself (read service account, create Job, write status) from a 16-thread pool, on
the same server in the same run, and prints the ratio.
Run: .venv/bin/python bench/operator_create.py --emulator [--emulator-count COUNT]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cogtrain import api  # noqa: E402
from cogtrain.crd import training_crd  # noqa: E402
from cogtrain.jobs import build_job  # noqa: E402
from cogtrain.pull_secrets import read_pull_secrets  # noqa: E402
from cogtrain.registry import RegistryClient  # noqa: E402
from cogtrain.resolver import SchemaResolver  # noqa: E402
from cogtrain.settings import Settings  # noqa: E402
from cogtrain.validation import validate_input  # noqa: E402
from support.k8s_server import start_kube_api  # noqa: E402
from support.registries import cog_labels  # noqa: E402
from support.registry_server import start_registry  # noqa: E402

COUNT = 200


class Clock:
    """Stamps every change the API server records, as it happens."""

    def __init__(self, emulator: Any) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        emulator.observers.append(self.record)

    def record(self, key: Any, kind: str, obj: dict[str, Any]) -> None:
        now = time.perf_counter()
        _, plural, _, name = key
        if plural == "jobs" and kind == "ADDED":
            self.seen.setdefault(("job", obj["metadata"]["labels"].get("cog.run/training", "")), now)
        if plural == "trainings" and (obj.get("status") or {}).get("phase") == "Pending":
            self.seen.setdefault(("pending", name), now)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def training(namespace: str, name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "cog.run/v1alpha1", "kind": "Training", "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": image, "input": {"train_data": "https://example.com/d.zip", "seed": 1},
                     "destination": "s3://bench/"}}


def create_all(kube: Any, namespace: str, image: str, prefix: str) -> dict[str, float]:
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"{prefix}-{i:03d}"
        created[name] = time.perf_counter()
        kube.custom.create_namespaced_custom_object("cog.run", "v1alpha1", namespace, "trainings",
                                                    training(namespace, name, image))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(create, range(COUNT)))
    return created


def wait_all(clock: Clock, kind: str, names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((kind, n) in clock.seen for n in names):
            return
        time.sleep(0.01)
    missing = [n for n in names if (kind, n) not in clock.seen]
    raise SystemExit(f"timed out: {len(missing)} without {kind}")


def report(label: str, created: dict[str, float], clock: Clock, kinds: tuple[str, ...]) -> dict[str, list[float]]:
    figures = {}
    for kind in kinds:
        latencies = [clock.seen[(kind, n)] - t for n, t in created.items()]
        figures[kind] = latencies
        total = max(clock.seen[(kind, n)] for n in created) - min(created.values())
        print(f"  {label:9} create -> {'Job created' if kind == 'job' else 'status Pending':14}"
              f" p50 {percentile(latencies, 0.5) * 1e3:7.1f} ms   p99 {percentile(latencies, 0.99) * 1e3:7.1f} ms"
              f"   all {COUNT} within {total:5.2f} s")
    return figures


def bare_script(kube: Any, namespace: str, image: str, clock: Clock) -> dict[str, float]:
    """The same API calls without kopf: what the operator's per-Training work costs at the least."""
    resolver = SchemaResolver(RegistryClient())
    settings = Settings(driver_image="example.com/cogtrain:bench")
    created = create_all(kube, namespace, image, "bare")

    def handle(name: str) -> None:
        body = kube.custom.get_namespaced_custom_object("cog.run", "v1alpha1", namespace, "trainings", name)
        model = api.Training.model_validate(body)
        keyring, _ = read_pull_secrets(kube.core, namespace, [], "default")
        resolved = resolver.resolve(model.spec.model, keyring)
        result = validate_input(resolved.schema, model.spec.input)
        job = build_job(model, resolved.pinned, result.input, settings)
        kube.batch.create_namespaced_job(namespace, job)
        kube.custom.patch_namespaced_custom_object_status("cog.run", "v1alpha1", namespace, "trainings", name,
                                                          {"status": {"phase": "Pending", "jobName": job["metadata"]["name"]}})

    resolver.resolve(image)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(handle, sorted(created)))
    wait_all(clock, "pending", list(created))
    return created


def main(count: int = 200) -> None:
    global COUNT
    COUNT = count
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    registry = start_registry(workdir / "registry")
    registry.push_image("acme/model", "1.0", cog_labels("training-output"))
    image = f"{registry.host}/acme/model:1.0"
    kube = start_kube_api(workdir, [training_crd()])
    clock = Clock(kube.emulator)
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    operator = subprocess.Popen([str(Path(sys.executable).parent / "cogtrain"), "operator", "-A", "--standalone",
                                 "--log-format", "plain"], env=env,
                                stdout=(workdir / "operator.log").open("w"), stderr=subprocess.STDOUT)
    try:
        warm = {"warm-up": time.perf_counter()}
        kube.custom.create_namespaced_custom_object("cog.run", "v1alpha1", "bench", "trainings",
                                                    training("bench", "warm-up", image))
        wait_all(clock, "pending", list(warm), timeout=60)
        rss_before = peak_rss_mb(operator.pid)

        started = time.perf_counter()
        created = create_all(kube, "bench", image, "tr")
        wait_all(clock, "job", list(created))
        wait_all(clock, "pending", list(created))
        elapsed = time.perf_counter() - started
        print(f"operator benchmark: {COUNT} Trainings created at once (kmock-based API server on loopback)")
        figures = report("operator", created, clock, ("job", "pending"))
        print(f"  operator  total {elapsed:.2f} s; peak RSS {peak_rss_mb(operator.pid):.0f} MB "
              f"(after one warm-up Training: {rss_before:.0f} MB)")
    finally:
        operator.terminate()
        operator.wait(timeout=60)

    bare = bare_script(kube, "bare", image, clock)
    baseline = report("bare", bare, clock, ("job",))
    ratio = percentile(figures["job"], 0.5) / percentile(baseline["job"], 0.5)
    ratio99 = percentile(figures["job"], 0.99) / percentile(baseline["job"], 0.99)
    print(f"  ratio operator / bare script, create -> Job: p50 {ratio:.2f}x, p99 {ratio99:.2f}x")
    kube.stop()
    registry.stop()
    threading.Event().wait(0.1)


if __name__ == "__main__":
    main()
