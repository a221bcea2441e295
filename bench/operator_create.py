"""Benchmark: the operator at scale on a real control plane, side by side with a bare client making the same calls.

The control plane is the real Kubernetes v1.37.2 of tests/support/control_plane.py (etcd, kube-apiserver,
kube-controller-manager with every controller, kube-scheduler) on loopback, with no node: each Job's Pod is
created by the real Job controller and stays Pending, marked Unschedulable by the real scheduler, as on a
cluster whose GPUs are all taken. Nothing is suspended, so create -> Job is measured with all the follow-up
traffic (Job, Pod and scheduler updates) the operator also has to handle. To end a lifecycle, the benchmark
writes each Pod Succeeded with the driver's report, as a kubelet would; the Job controller then completes
the Job and the operator marks the Training Succeeded.

Two clients, each its own process, each watching only its own namespace, never at the same time:
- the operator: `cogtrain operator -n NS --standalone` (kopf, 16 worker threads, 4 more for status writes);
- the bare client (bench/bare_watcher.py): a watch and a 16-thread pool making the operator's calls before the
  Job (read the ServiceAccount, resolve the schema through the same cache and real registry, check the
  inputs, create the Job, write the same status), and nothing else.
Timings come from the API server's audit log (server-side, microseconds): a Training's create answered ->
its Job's create answered. Requests are counted there too, per client identity. RSS is VmHWM from
/proc/PID/status of the client process, polled; CPU per process from /proc/PID/stat.

1. Trainings created at once (--sizes, default 200 and 1,000), the operator and the bare client alternating;
   each lifecycle carried to the end (Pods written Succeeded, the operator's Trainings Succeeded).
2. --existing (5,000) finished Trainings with their Jobs and Pods (Succeeded, as a finished training leaves
   them; the Jobs are `spec.managedBy` another controller so the Job controller leaves them be), then a
   restart with --new (100) Trainings created while the client was down (given --restart-timeout, 240 s,
   before it is reported unfinished; done when those are handled: a finished Training runs no handler), then
   --new more created at once.
3. Requests per Training over a lifecycle and watches opened, at each size.

Last measured (docs/operator.md, "Scale", has the table and what changed), `--sizes 1000 --existing 5000 --new 100`
on 2 cores, 2026-12-04 23:47 UTC: 1,000 at once, create -> Job p99 12.5 s against the bare client's 11.8 s (1.06x,
target 1.5x: met; 1.33x, 1.21x and 1.23x in earlier runs of this code; 2.67x before the last changes), 8.0
requests per Training; restart over 5,000 finished -> first new Job 20.5 s (target 30 s: met; 20.1 s and 22.4 s in
two runs of part 2 alone; 33.9 s and 34.9 s in two earlier runs, cause not established); peak RSS
226 MB over 5,000. Who is the bottleneck: in a burst the two shared cores (40 core-s of 40 available; the API
server 20.1 CPU-s for either client's 1,000, the operator 13.5 against the bare client's 5.5, its event loop
following the Training, Job and Pod watches); at a restart the operator's own CPU (22 CPU-s: kopf's per-object
processing of 15,000 listed objects, decoding the listed pages).

Run: .venv/bin/python bench/operator_create.py [--sizes 200,1000] [--existing 5000] [--new 100]
     .venv/bin/python bench/operator_create.py --sizes 50 --existing 300 --new 20      (a quick check)
     .venv/bin/python bench/operator_create.py --operator-source DIR   (the operator from DIR/cogtrain, e.g. patched)
     .venv/bin/python bench/operator_create.py --emulator        (the earlier kmock-emulator benchmark)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import kopf  # noqa: E402
import scale_support as ss  # noqa: E402
from k8s_rest import Rest, jobs, pods, trainings  # noqa: E402

from cogtrain import api  # noqa: E402
from cogtrain.checks import check  # noqa: E402
from cogtrain.contract import Reason  # noqa: E402
from cogtrain.crd import training_crd  # noqa: E402
from cogtrain.jobs import build_job  # noqa: E402
from cogtrain.registry import RegistryClient  # noqa: E402
from cogtrain.resolver import SchemaResolver  # noqa: E402
from cogtrain.settings import Settings  # noqa: E402
from cogtrain.status import Validation, status_patch  # noqa: E402
from cogtrain.storage import DiffBase  # noqa: E402
from support.registries import cog_labels  # noqa: E402
from support.registry_server import start_registry  # noqa: E402

DRIVER_IMAGE = "example.com/cogtrain:bench"
MODEL = "training-output"
FINISHED = ("Succeeded", "Failed", "Canceled")
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")
TARGET_RATIO, TARGET_RSS_MB, TARGET_RESTART_S = 1.5, 300.0, 30.0
OLD = "2026-01-01T00:00:00Z", "2026-01-01T00:30:00Z"  # start and end of the seeded (finished) trainings


@dataclass
class Bench:
    folder: Path
    plane: Any
    admin: Rest
    audit: ss.AuditLog
    meter: ss.Meter
    image: str
    kubeconfigs: dict[str, Path]
    args: argparse.Namespace
    notes: list[str] = field(default_factory=list)


def training_body(namespace: str, name: str, image: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata_: dict[str, Any] = {"name": name, "namespace": namespace}
    return {"apiVersion": "cog.run/v1alpha1", "kind": "Training", "metadata": metadata_,
            "spec": spec or {"model": image, "input": {"train_data": "https://example.com/d.zip", "seed": 1},
                             "destination": "s3://bench/"}}


# --- the clients under test -----------------------------------------------------------------------------------


class Client:
    """The operator or the bare watcher, as its own process, scoped to one namespace."""

    def __init__(self, bench: Bench, kind: str, namespace: str) -> None:
        self.bench, self.kind, self.namespace = bench, kind, namespace
        self.user = ss.OPERATOR_USER if kind == "operator" else ss.BARE_USER
        self.log = bench.folder / "logs" / f"{kind}-{namespace}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def command(self) -> list[str]:
        if self.kind == "bare":
            return [sys.executable, str(HERE / "bare_watcher.py"), "--kubeconfig", str(self.bench.kubeconfigs["bare"]),
                    "--namespace", self.namespace, "--driver-image", DRIVER_IMAGE]
        arguments = ["operator", "-n", self.namespace, "--standalone", "--log-format", "full",
                     "--driver-image", DRIVER_IMAGE]
        source = self.bench.args.operator_source
        if source:  # another copy of the package (a proposed patch), first on the path
            boot = f"import sys; sys.path.insert(0, {str(Path(source).resolve())!r}); from cogtrain.cli import main; sys.exit(main())"
            return [sys.executable, "-c", boot, *arguments]
        return [str(Path(sys.executable).parent / "cogtrain"), *arguments]

    def start(self) -> Client:
        env = {**_environ(), "KUBECONFIG": str(self.bench.kubeconfigs[self.kind])}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self.bench.meter.watch(self.kind, self.popen.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"the {self.kind} exited with {self.popen.returncode}; {self.log} ends:\n{tail}")

    def stop(self) -> None:
        if self.popen is None:
            return
        self.bench.meter.forget(self.kind)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.popen = None


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COGTRAIN_") and k != "KUBECONFIG"}


# --- creating, waiting, finishing -------------------------------------------------------------------------------


def create_at_once(bench: Bench, namespace: str, names: list[str]) -> None:
    """Every Training at once, from 32 threads (the benchmark is `system:masters`: never throttled)."""
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda name: bench.admin.create(trainings(namespace), training_body(namespace, name, bench.image)),
                      names))


def created_at(bench: Bench, namespace: str, names: list[str]) -> dict[str, float]:
    found = ss.wait_until("the audit log to show every Training created", lambda: (
        found if set(names) <= (found := bench.audit.created(ss.ADMIN_USER, "trainings", namespace)).keys() else None),
        30, 0.1)
    return {n: found[n] for n in names}


def wait_jobs(bench: Bench, client: Client, names: list[str], timeout: float) -> dict[str, float]:
    """Training name -> when the API server answered the create of its Job (by this client)."""
    deadline = time.monotonic() + timeout
    while True:
        found = bench.audit.created(client.user, "jobs", client.namespace)
        if set(names) <= found.keys():
            return {n: found[n] for n in names}
        client.alive()
        if time.monotonic() > deadline:
            missing = len(set(names) - found.keys())
            raise TimeoutError(f"{client.kind}: {missing} of {len(names)} Trainings without a Job after {timeout:g} s")
        time.sleep(0.2)


def quiet(bench: Bench, client: Client, seconds: float = 2.0, timeout: float = 60.0) -> float:
    """Wait until the client has made no request for `seconds`; when its last request was answered."""
    deadline = time.monotonic() + timeout
    while True:
        last = bench.audit.last_request(client.user)
        if time.time() - last >= seconds or time.monotonic() > deadline:
            return last
        time.sleep(0.25)


def succeeded_pod_status(pod: dict[str, Any], report: str, start: str, end: str) -> dict[str, Any]:
    """What the kubelet writes when the driver exits 0 with its report (the model sidecar stopped after)."""
    def terminated(name: str, image: str, message: str | None) -> dict[str, Any]:
        state: dict[str, Any] = {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": end,
                                 "containerID": f"containerd://{random.getrandbits(128):032x}"}
        if message:
            state["message"] = message
        return {"name": name, "image": image, "imageID": f"{image.split('@')[0]}@sha256:{'0' * 64}", "ready": False,
                "restartCount": 0, "started": False, "state": {"terminated": state}}

    spec = pod["spec"]
    return {
        "phase": "Succeeded", "startTime": start, "hostIP": "10.0.0.10", "podIP": "10.1.0.10",
        "conditions": [{"type": kind, "status": value, "lastTransitionTime": end, **extra} for kind, value, extra in (
            ("PodScheduled", "True", {}), ("Initialized", "True", {}),
            ("Ready", "False", {"reason": "PodCompleted"}), ("ContainersReady", "False", {"reason": "PodCompleted"}))],
        "initContainerStatuses": [terminated(c["name"], c["image"], None) for c in spec.get("initContainers") or []],
        "containerStatuses": [terminated(c["name"], c["image"], report if c["name"] == "driver" else None)
                              for c in spec.get("containers") or []],
    }


def report_of(namespace: str, training: str) -> str:
    return f'{{"status":"succeeded","output":{{"weights":"s3://bench/{namespace}/{training}/weights.bin"}}}}'


def finish_pods(bench: Bench, namespace: str, expected: int, timeout: float) -> None:
    """Wait for the Job controller's Pods, then write each Succeeded with the driver's report, as the kubelet would."""
    found = ss.wait_until(f"{expected} Pods in {namespace}", lambda: (
        items if len(items := bench.admin.list_all(pods(namespace), labelSelector="cog.run/training")) >= expected
        else None), timeout, 1.0)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def finish(pod: dict[str, Any]) -> None:
        training = pod["metadata"]["labels"]["cog.run/training"]
        status = succeeded_pod_status(pod, report_of(namespace, training), now, now)
        bench.admin.merge(pods(namespace, pod["metadata"]["name"]) + "/status", {"status": status})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(finish, [p for p in found if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]))


def _phase(training: dict[str, Any]) -> str:
    """The phase, and for Failed the Failed condition's reason (`Failed/DriverResultMissing`)."""
    status = training.get("status") or {}
    phase = status.get("phase") or "none"
    if phase == "Failed":
        reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Failed"), "")
        return f"Failed/{reason}"
    return str(phase)


def wait_finished(bench: Bench, namespace: str, expected: int, timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        phases = Counter(_phase(t) for t in bench.admin.list_all(trainings(namespace)))
        if sum(v for k, v in phases.items() if k.split("/")[0] in FINISHED) >= expected:
            return phases
        if time.monotonic() > deadline:
            raise TimeoutError(f"Trainings in {namespace} not finished after {timeout:g} s: {dict(phases)}")
        time.sleep(2.0)


# --- 1. Trainings created at once ---------------------------------------------------------------------------------


@dataclass
class Burst:
    kind: str
    size: int
    latencies: list[float]
    all_jobs: float  # first create -> last Job
    peak_mb: float  # VmHWM at the end of the lifecycle
    usage: ss.Usage  # create .. all Jobs
    busiest: float  # the client's busiest second, in cores, during create .. all Jobs
    requests: list[ss.Request]  # the whole lifecycle (after the warm-up)
    lifetime: list[ss.Request]  # from process start to stop
    phases: Counter[str]
    lifecycle: float  # first create -> all finished (operator) or all Pods written (bare)


def burst(bench: Bench, kind: str, size: int, index: int) -> Burst:
    namespace = f"{kind}-{size}-{index}"
    ss.create_namespace(bench.admin, namespace)
    client = Client(bench, kind, namespace).start()
    try:
        create_at_once(bench, namespace, ["warm-up"])  # the registry lookup, once; and proof it is watching
        wait_jobs(bench, client, ["warm-up"], 120)
        quiet(bench, client, 1.0, 30)
        names = [f"t-{i:05d}" for i in range(size)]
        before = bench.meter.snapshot()
        began = time.time()
        create_at_once(bench, namespace, names)
        made = created_at(bench, namespace, names)
        job_at = wait_jobs(bench, client, names, bench.args.timeout)
        after = bench.meter.snapshot()
        done = max(job_at.values())
        latencies = [job_at[n] - made[n] for n in names]
        finish_pods(bench, namespace, size + 1, bench.args.timeout)
        phases = wait_finished(bench, namespace, size + 1, bench.args.timeout) if kind == "operator" else Counter()
        lifecycle = time.time() - began
        end = quiet(bench, client, 2.0, 60)
        peak = bench.meter.peak_mb(client.pid)
        requests = bench.audit.requests(client.user, began, end + 0.001)
        lifetime = bench.audit.requests(client.user, client.started, time.time())
        usage = ss.usage(before, after)
        busiest = bench.meter.busiest_second(client.pid, began, done)
    finally:
        client.stop()
    return Burst(kind, size, latencies, done - min(made.values()), peak, usage, busiest, requests, lifetime,
                 phases, lifecycle)


# --- 2. thousands of finished Trainings, then a restart ---------------------------------------------------------


def seed(bench: Bench, namespace: str, count: int) -> tuple[float, int]:
    """`count` finished Trainings as the operator leaves them (status Succeeded with its jobName and kopf's
    diff-base), each with its Job (Complete) and its Pod (Succeeded, the driver's report). Returns
    (seconds, requests)."""
    sample = training_body(namespace, "seed", bench.image)
    spec = bench.admin.request("POST", trainings(namespace), sample, query={"dryRun": "All"})["spec"]  # defaulted
    storage = DiffBase()  # the operator's own, so its diff-base is where the operator keeps it
    shape = kopf.Body({"metadata": {"name": "seed", "namespace": namespace}, "spec": spec})
    patch = kopf.Patch()
    storage.store(body=shape, patch=patch, essence=storage.build(body=shape))
    diff_base = dict(patch["status"])
    settings = Settings(driver_image=DRIVER_IMAGE)
    resolved = SchemaResolver(RegistryClient()).resolve(bench.image)
    checked = check(api.Training.model_validate({**sample, "metadata": {**sample["metadata"], "uid": "x"}}), resolved,
                    settings)
    start, end = OLD

    def one(i: int) -> None:
        name = f"done-{i:05d}"
        created = bench.admin.create(trainings(namespace), training_body(namespace, name, bench.image, spec))
        manifest = build_job(api.Training.model_validate(created), resolved.pinned, checked.input, settings,
                             checked.secret_list_names)
        manifest["spec"]["managedBy"] = "bench.cog.run/seeded"  # the Job controller leaves it as written
        job_name = manifest["metadata"]["name"]
        output = {"weights": f"s3://bench/{namespace}/{name}/weights.bin"}
        status = status_patch(api.Phase.SUCCEEDED, Reason.SUCCEEDED, "the training succeeded",
                              created["metadata"].get("generation"), [], end,
                              Validation(True, Reason.INPUTS_VALID,
                                         f"the inputs match the training schema of {resolved.pinned}"),
                              imageDigest=resolved.pinned, jobName=job_name, startTime=start, output=output,
                              weights=output["weights"])
        status.update(diff_base)
        bench.admin.merge(trainings(namespace, name) + "/status", {"status": status})
        job = bench.admin.create(jobs(namespace), manifest)
        bench.admin.merge(jobs(namespace, job_name) + "/status", {"status": {
            "startTime": start, "completionTime": end, "succeeded": 1, "ready": 0, "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": end, "lastProbeTime": end,
                            "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"}
                           for kind in ("SuccessCriteriaMet", "Complete")]}})
        uid = job["metadata"]["uid"]
        template = job["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{job_name}-{random.getrandbits(20):05x}",
            "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/controller-uid": uid,
                       "batch.kubernetes.io/job-name": job_name, "controller-uid": uid, "job-name": job_name},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid,
                                 "controller": True, "blockOwnerDeletion": True}]},
            # no scheduler takes it (it finished long ago); no nodeName, which the Pod GC would act on
            "spec": {**template["spec"], "schedulerName": "bench-seeded"}}
        made = bench.admin.create(pods(namespace), pod)
        bench.admin.merge(pods(namespace, made["metadata"]["name"]) + "/status",
                          {"status": succeeded_pod_status(made, report_of(namespace, name), start, end)})

    began = time.time()
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(count)))
    return time.time() - began, 6 * count


def processed_times(log: Path) -> list[float]:
    """When kopf logged each "... is processed" (one per Training handled), from the operator's log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if " is processed: " in line and line.startswith("["):
            stamp = line[1:24]  # [2026-11-30 02:56:16,949]
            try:
                found.append(time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000)
            except ValueError:
                continue
    return sorted(found)


@dataclass
class Restart:
    kind: str
    limit: float  # how long the restart was given (--restart-timeout)
    first_job: float | None  # process start -> first Job of the Trainings created while it was down (None: not within limit)
    all_jobs: float | None  # process start -> all of them
    jobs_made: int  # of those, how many had a Job when the measurement ended
    handled: float | None  # process start -> the Trainings created while down handled once (kopf's "is processed")
    handled_count: int
    settled: float | None  # process start -> no request for 2 s
    startup: list[ss.Request]
    usage: ss.Usage
    live: list[float]  # create -> Job of the Trainings created at once afterwards
    live_all: float | None
    live_usage: ss.Usage | None
    peak_mb: float
    rss_mb: float


def restart(bench: Bench, kind: str, namespace: str, existing: int, new: int) -> Restart:
    """Trainings created while the client is down, then it starts over everything: how soon they get Jobs and
    when it is done with every Training; then `new` more at once. A start-up longer than --restart-timeout is
    reported as such (and the rest skipped), so the run stays bounded."""
    limit = bench.args.restart_timeout
    queued = [f"q-{kind}-{i:04d}" for i in range(new)]
    create_at_once(bench, namespace, queued)
    created_at(bench, namespace, queued)
    before = bench.meter.snapshot()
    client = Client(bench, kind, namespace).start()
    # Every Training that needs handling has been handled once: the ones created while it was down (a finished
    # Training runs no handler since the `when=` filter on resume; an operator that still resumes finished
    # ones, e.g. an older one through --operator-source, shows it in the count printed, not in this time).
    target = new
    first = every = handled = settled = live_all = None
    made_jobs: dict[str, float] = {}
    live: list[float] = []
    live_usage = None
    try:
        deadline = client.started + limit
        while time.time() < deadline:
            client.alive()
            made_jobs = {n: t for n, t in bench.audit.created(client.user, "jobs", namespace).items() if n in queued}
            done = kind != "operator" or len(processed_times(client.log)) >= target
            if len(made_jobs) == len(queued) and done:
                break
            time.sleep(0.5)
        if made_jobs:
            first = min(made_jobs.values()) - client.started
        if len(made_jobs) == len(queued):
            every = max(made_jobs.values()) - client.started
        times = processed_times(client.log) if kind == "operator" else []
        if len(times) >= target:
            handled = times[target - 1] - client.started
        if every is not None and (kind != "operator" or handled is not None):
            settled = quiet(bench, client, 2.0, limit) - client.started
        startup = bench.audit.requests(client.user, client.started, time.time())
        usage = ss.usage(before, bench.meter.snapshot())
        if settled is not None:
            names = [f"l-{kind}-{i:04d}" for i in range(new)]
            before = bench.meter.snapshot()
            create_at_once(bench, namespace, names)
            made = created_at(bench, namespace, names)
            live_jobs = wait_jobs(bench, client, names, bench.args.timeout)
            live_usage = ss.usage(before, bench.meter.snapshot())
            live = [live_jobs[n] - made[n] for n in names]
            live_all = max(live_jobs.values()) - min(made.values())
            quiet(bench, client, 2.0, 60)
        peak, rss = bench.meter.peak_mb(client.pid), bench.meter.rss_mb(client.pid)
    finally:
        client.stop()
    return Restart(kind, limit, first, every, len(made_jobs), handled, len(times), settled, startup, usage, live,
                   live_all, live_usage, peak, rss)


# --- printing ----------------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def row(label: str, operator: str, bare: str, ratio: str = "") -> None:
    print(f"  {label:<52} {operator:>14} {bare:>14} {ratio:>8}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else ""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_bursts(results: list[Burst], sizes: list[int]) -> dict[int, dict[str, Burst]]:
    merged: dict[int, dict[str, Burst]] = {}
    for size in sizes:
        by_kind: dict[str, Burst] = {}
        for kind in ("operator", "bare"):
            runs = [r for r in results if r.kind == kind and r.size == size]
            if not runs:
                continue
            first = runs[0]
            by_kind[kind] = Burst(kind, size, [v for r in runs for v in r.latencies], max(r.all_jobs for r in runs),
                                  max(r.peak_mb for r in runs), first.usage, max(r.busiest for r in runs),
                                  [q for r in runs for q in r.requests], [q for r in runs for q in r.lifetime],
                                  sum((r.phases for r in runs), Counter()), max(r.lifecycle for r in runs))
        merged[size] = by_kind
        op, bare = by_kind.get("operator"), by_kind.get("bare")
        if not op or not bare:
            continue
        runs = len([r for r in results if r.kind == "operator" and r.size == size])
        print(f"\n  {size:,} Trainings created at once{f' ({runs} rounds each, pooled)' if runs > 1 else ''}")
        row("", "operator", "bare client", "ratio")
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = ss.percentile(op.latencies, q), ss.percentile(bare.latencies, q)
            row(f"create -> Job {name}", ms(a), ms(b), ratio(a, b))
        row("all Jobs exist, from the first create", ms(op.all_jobs), ms(bare.all_jobs), ratio(op.all_jobs, bare.all_jobs))
        row("client's busiest second until then (cores)", f"{op.busiest:.2f}", f"{bare.busiest:.2f}")
        row("peak RSS (VmHWM), whole lifecycle", f"{op.peak_mb:.0f} MB", f"{bare.peak_mb:.0f} MB",
            ratio(op.peak_mb, bare.peak_mb))
        per_op, per_bare = len(op.requests) / (size * runs), len(bare.requests) / (size * runs)
        row("API requests per Training (lifecycle / create only)", f"{per_op:.1f}", f"{per_bare:.1f}",
            ratio(per_op, per_bare))
        row("watches opened, whole process life", str(sum(1 for r in op.lifetime if r.verb == "watch")),
            str(sum(1 for r in bare.lifetime if r.verb == "watch")))
        other = ", ".join(f"{k} {v}" for k, v in op.phases.items() if k != "Succeeded")
        row("Trainings Succeeded (all Pods were written Succeeded)", f"{op.phases.get('Succeeded', 0) - runs:,}", "-")
        if other:
            print(f"    not Succeeded (warm-up included): {other}")
        row("first create -> all Trainings finished", ms(op.lifecycle), "-")
        for b in (op, bare):
            print(f"    {b.kind:8} create..all Jobs: {b.usage.line(('operator', 'bare', *CONTROL_PLANE, 'bench'))}")
    return merged


def print_requests(merged: dict[int, dict[str, Burst]], sizes: list[int]) -> None:
    print("\n3. API politeness: the operator's requests per Training over a whole lifecycle (created -> Job -> "
          "Pod Pending/Unschedulable -> Succeeded), by kind")
    present = [s for s in sizes if "operator" in merged.get(s, {})]
    kinds: Counter[str] = Counter()
    per: dict[int, Counter[str]] = {}
    for size in present:
        op = merged[size]["operator"]
        runs = max(1, len(op.latencies) // size)
        counts = ss.by_kind(op.requests)
        per[size] = Counter({k: v / (size * runs) for k, v in counts.items()})
        kinds.update(counts)
    print(f"  {'':<40}" + "".join(f"{f'at {s:,}':>10}" for s in present))
    for kind, _ in kinds.most_common():
        print(f"  {kind:<40}" + "".join(f"{per[s][kind]:>10.2f}" for s in present))
    print(f"  {'total':<40}" + "".join(f"{sum(per[s].values()):>10.2f}" for s in present))
    for size in present:
        op = merged[size]["operator"]
        watched = Counter(r.resource for r in op.lifetime if r.verb == "watch")
        print(f"  watches at {size:,}: {sum(watched.values())} opened ({', '.join(f'{k} {v}' for k, v in sorted(watched.items()))})"
              f"; the bare client: {sum(1 for r in merged[size]['bare'].lifetime if r.verb == 'watch')}")


def print_restart(results: dict[str, Restart], existing: int, new: int, seeded: tuple[float, int]) -> None:
    op, bare = results.get("operator"), results.get("bare")
    print(f"\n2. {existing:,} finished Trainings, with their Jobs (Complete) and Pods (Succeeded), in one namespace; "
          f"seeded in {seeded[0]:.0f} s ({seeded[1] / seeded[0]:.0f} requests/s)")
    if not op or not bare:
        return

    def at(r: Restart, value: float | None) -> str:
        return ms(value) if value is not None else f"> {r.limit:.0f} s"

    def both(label: str, a: float | None, b: float | None) -> None:
        row(label, at(op, a), at(bare, b), ratio(a, b) if a is not None and b is not None else "")

    row("", "operator", "bare client", "ratio")
    both(f"restart -> first Job of {new} created while down", op.first_job, bare.first_job)
    both(f"restart -> all {new} of their Jobs", op.all_jobs, bare.all_jobs)
    if op.all_jobs is None:
        row(f"  of the {new}, with a Job when it was given up", f"{op.jobs_made}", f"{bare.jobs_made}")
    row(f"restart -> the {new} created while down handled (kopf log)", at(op, op.handled), "-")
    row(f"  Trainings kopf handled during start-up (of {existing + new:,})", f"{op.handled_count:,}", "-")
    both("restart -> quiet (no request for 2 s)", op.settled, bare.settled)
    row("requests during start-up", f"{len(op.startup):,}", f"{len(bare.startup):,}",
        ratio(len(op.startup), len(bare.startup)))
    if op.live and bare.live:
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = ss.percentile(op.live, q), ss.percentile(bare.live, q)
            row(f"then {new} at once: create -> Job {name}", ms(a), ms(b), ratio(a, b))
        both(f"then {new} at once: all Jobs exist", op.live_all, bare.live_all)
    else:
        row(f"then {new} at once", "not run" if not op.live else "", "not run" if not bare.live else "")
    row("peak RSS (VmHWM)", f"{op.peak_mb:.0f} MB", f"{bare.peak_mb:.0f} MB", ratio(op.peak_mb, bare.peak_mb))
    row("RSS at the end (VmRSS)", f"{op.rss_mb:.0f} MB", f"{bare.rss_mb:.0f} MB", ratio(op.rss_mb, bare.rss_mb))
    top = ", ".join(f"{k} {v:,}" for k, v in ss.by_kind(op.startup).most_common(8))
    print(f"    operator start-up requests: {top}")
    print(f"    bare start-up requests: {', '.join(f'{k} {v:,}' for k, v in ss.by_kind(bare.startup).most_common(5))}")
    for r in (op, bare):
        print(f"    {r.kind:8} start-up: {r.usage.line(('operator', 'bare', *CONTROL_PLANE, 'bench'))}")
        if r.live_usage:
            print(f"    {r.kind:8} {new} at once: {r.live_usage.line(('operator', 'bare', *CONTROL_PLANE, 'bench'))}")


# --- main -------------------------------------------------------------------------------------------------------


def setup(args: argparse.Namespace, folder: Path) -> tuple[Bench, Any]:
    registry = start_registry(folder / "registry")
    registry.push_image("acme/model", "1.0", cog_labels(MODEL))
    plane = ss.start_control_plane(folder / "cluster")
    admin = Rest(plane.kubeconfig)
    removed = ss.install_crd(admin, training_crd())
    ss.bind_cluster_admin(admin, (ss.OPERATOR_USER, ss.BARE_USER))
    kubeconfigs = {"operator": plane.client_kubeconfig("bench-operator", ss.OPERATOR_USER),
                   "bare": plane.client_kubeconfig("bench-bare", ss.BARE_USER)}
    meter = ss.Meter().start()
    for process in plane.processes:
        meter.watch(process.name, process.popen.pid)
    meter.watch("bench", os.getpid())
    bench = Bench(folder, plane, admin, ss.AuditLog(folder / "cluster" / "audit.log"), meter,
                  f"{registry.host}/acme/model:1.0", kubeconfigs, args)
    if removed:
        bench.notes.append("the API server refused the generated CRD; applied without " + "; ".join(removed))
    return bench, registry


def header(args: argparse.Namespace, startup: float, others: list[str]) -> None:
    print("operator benchmark on a real control plane: Kubernetes v1.37.2 (etcd, kube-apiserver, "
          "kube-controller-manager, kube-scheduler) on loopback, no node")
    print(f"  run: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]) or 'operator_create.py'}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; Python {platform.python_version()}, "
          f"kopf {metadata.version('kopf')}, kubernetes client {metadata.version('kubernetes')}")
    print(f"  machine: {ss.load_header()}")
    print(f"  other processes busy at the start: {'; '.join(others) or 'none above 5% of a core'}")
    print(f"  control plane up in {startup:.1f} s; model image in a docker-registry on loopback (schema cached "
          "after one warm-up Training per client)")
    print("  operator: `cogtrain operator -n NS --standalone` (kopf, 16 workers)"
          + (f" from {args.operator_source}" if args.operator_source else "")
          + "; bare client: bench/bare_watcher.py (a watch, 16 threads, the same calls up to the status write);"
          " each its own process and namespace, identities bound to cluster-admin (throttled by API Priority and"
          " Fairness like any client); times from the API server's audit log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,1000", help="Trainings created at once, comma-separated (default 200,1000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per size, alternating which client goes first")
    parser.add_argument("--existing", type=int, default=5000, help="finished Trainings for part 2 (0: skip part 2)")
    parser.add_argument("--new", type=int, default=100, help="Trainings created around the restart in part 2")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one wait may take")
    parser.add_argument("--restart-timeout", type=float, default=240,
                        help="seconds a restart over --existing Trainings is given before it is reported unfinished")
    parser.add_argument("--operator-source", help="run the operator from this copy of the `cogtrain` package's parent "
                        "folder (e.g. a patched copy of operator/)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, audit log)")
    parser.add_argument("--emulator", action="store_true", help="run the earlier kmock-emulator benchmark instead")
    parser.add_argument("--emulator-count", type=int, default=200)
    args = parser.parse_args()
    if args.emulator:
        import emulator_create

        emulator_create.main(args.emulator_count)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    began = time.time()
    others = ss.busiest_processes()
    folder = Path(tempfile.mkdtemp(prefix="bench-operator-scale-"))
    bench, registry = None, None
    try:
        started = time.time()
        bench, registry = setup(args, folder)
        header(args, time.time() - started, others)
        for note in bench.notes:
            print(f"  note: {note}")
        print("\n1. Trainings created at once: create -> Job (the API server's answer to each), both clients in turn")
        results: list[Burst] = []
        for size in sizes:
            for index in range(args.rounds):
                order = ("operator", "bare") if index % 2 == 0 else ("bare", "operator")
                for kind in order:
                    results.append(burst(bench, kind, size, index))
        merged = print_bursts(results, sizes)
        restarts: dict[str, Restart] = {}
        seeded = (0.0, 0)
        if args.existing:
            ss.create_namespace(bench.admin, "scale")
            seeded = seed(bench, "scale", args.existing)
            for kind in ("operator", "bare"):
                restarts[kind] = restart(bench, kind, "scale", args.existing, args.new)
            print_restart(restarts, args.existing, args.new, seeded)
        print_requests(merged, sizes)
        print_targets(merged, restarts, sizes, args)
        print(f"\ntotal {time.time() - began:.0f} s; machine at the end: {ss.load_header()}")
        if args.keep:
            print(f"working folder: {folder}")
    finally:
        if bench is not None:
            bench.meter.stop()
            bench.plane.stop()
        if registry is not None:
            registry.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def print_targets(merged: dict[int, dict[str, Burst]], restarts: dict[str, Restart], sizes: list[int],
                  args: argparse.Namespace) -> None:
    print("\ntargets")
    check_size = 1000 if 1000 in merged else max(merged, default=0)
    pair = merged.get(check_size, {})
    if "operator" in pair and "bare" in pair:
        a, b = ss.percentile(pair["operator"].latencies, 0.99), ss.percentile(pair["bare"].latencies, 0.99)
        print(f"  create -> Job p99 within {TARGET_RATIO}x the bare client at {check_size:,}: {ms(a)} vs {ms(b)}, "
              f"{a / b:.2f}x: {verdict(a <= TARGET_RATIO * b)}")
    op = restarts.get("operator")
    if op:
        print(f"  operator RSS under {TARGET_RSS_MB:.0f} MB with {args.existing:,} Trainings and their Jobs and Pods: "
              f"peak {op.peak_mb:.0f} MB (at the end {op.rss_mb:.0f} MB): {verdict(op.peak_mb < TARGET_RSS_MB)}")
        first = f"{op.first_job:.1f} s" if op.first_job is not None else f"none within {op.limit:.0f} s"
        print(f"  restart to first new Job under {TARGET_RESTART_S:.0f} s with {args.existing:,} Trainings: "
              f"{first}: {verdict(op.first_job is not None and op.first_job < TARGET_RESTART_S)}")
    present = [s for s in sizes if "operator" in merged.get(s, {})]
    if len(present) >= 2:
        small, large = present[0], present[-1]
        per = {s: len(merged[s]["operator"].requests) / len(merged[s]["operator"].latencies) for s in (small, large)}
        print(f"  requests per Training bounded as Trainings grow: {per[small]:.1f} at {small:,}, {per[large]:.1f} at "
              f"{large:,} ({per[large] / per[small]:.2f}x): {verdict(per[large] <= 1.25 * per[small])}")


if __name__ == "__main__":
    sys.exit(main())
