"""What bench/operator_create.py measures with: a real control plane with an audit log, the clocks and meters.

- `start_control_plane()`: the real Kubernetes control plane of tests/support/control_plane.py (etcd,
  kube-apiserver, kube-controller-manager, kube-scheduler; no node), with an audit policy that records every
  request of the two identities under test (`bench-operator`, `bench-bare`) and the benchmark's own Training
  creates; both identities are bound to cluster-admin by RBAC (not `system:masters`, which API Priority and
  Fairness exempts), so the API server treats them as it treats any client.
- `AuditLog`: the API server's own record, read as it grows: server-side timestamps (microseconds) of each
  Training create and each Job create, and every request per identity (verb, resource, watches).
- `Meter`: peak RSS (VmHWM) and CPU time of processes from /proc, polled; the machine's busy CPU from /proc/stat.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s_rest import ApiError, Rest

OPERATOR_USER = "bench-operator"
BARE_USER = "bench-bare"
ADMIN_USER = "cogtrain-test-admin"  # DIR/kubeconfig of ControlPlane: the benchmark itself
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def audit_policy() -> dict[str, Any]:
    """Everything the two clients under test do; of the benchmark's own requests, only Training creates."""
    return {
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "Metadata", "users": [OPERATOR_USER, BARE_USER]},
            {"level": "Metadata", "users": [ADMIN_USER], "verbs": ["create"],
             "resources": [{"group": "cog.run", "resources": ["trainings"]}]},
            {"level": "None"},
        ],
    }


def start_control_plane(folder: Path) -> Any:
    from support.control_plane import ControlPlane

    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "audit-policy.json"
    policy.write_text(json.dumps(audit_policy()))
    plane = ControlPlane(folder, extra_apiserver_args=(
        f"--audit-policy-file={policy}", f"--audit-log-path={folder / 'audit.log'}", "--audit-log-maxsize=0"))
    plane.start()
    return plane


def bind_cluster_admin(admin: Rest, users: Iterable[str]) -> None:
    admin.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bench-clients"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in users],
    })


def install_crd(admin: Rest, crd: dict[str, Any]) -> list[str]:
    """The Training CRD; what the API server refuses (a `metadata` schema, CEL rules it cannot compile) is taken
    out and the rest applied, as tests/support/e2e.py does. Returns what was taken out."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    removed: list[str] = []
    for _ in range(10):
        try:
            admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            break
        except ApiError as error:
            message = str(error)
            if "properties[metadata]: Forbidden" in message and schema["properties"].get("metadata") != {"type": "object"}:
                schema["properties"]["metadata"] = {"type": "object"}
                removed.append("the metadata schema (only `type: object` is allowed)")
                continue
            bad = {int(i) for i in re.findall(r"properties\[spec\]\.x-kubernetes-validations\[(\d+)\]\.rule", message)}
            rules = schema["properties"]["spec"].get("x-kubernetes-validations") or []
            if not bad:
                raise
            removed += [f"CEL rule `{rules[i]['rule'][:50]}...`" for i in sorted(bad)]
            schema["properties"]["spec"]["x-kubernetes-validations"] = [r for i, r in enumerate(rules) if i not in bad]
    else:
        raise RuntimeError("the API server kept refusing the CRD")
    wait_until("the CRD to be Established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        for c in (admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
                  .get("status") or {}).get("conditions") or []), 30)
    wait_until("the trainings resource to be served", lambda: _served(admin), 30)
    return removed


def _served(admin: Rest) -> bool:
    try:
        admin.get("/apis/cog.run/v1alpha1/trainings", limit=1)
        return True
    except ApiError:
        return False


def create_namespace(admin: Rest, name: str) -> None:
    admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_until(f"the default ServiceAccount of {name}", lambda: _exists(
        admin, f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60, 0.1)


def _exists(admin: Rest, path: str) -> bool:
    try:
        admin.get(path)
        return True
    except ApiError as error:
        if error.status == 404:
            return False
        raise


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


# --- the audit log ---------------------------------------------------------------------------------------------


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Request:
    user: str
    verb: str
    resource: str  # resource[/subresource]
    namespace: str
    name: str
    stage: str
    received: float
    done: float  # stageTimestamp
    code: int


class AuditLog:
    """The API server's audit log (JSON lines), read incrementally; one `Request` per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.events: list[Request] = []
        self.creates: dict[tuple[str, str, str], dict[str, float]] = {}  # (user, resource, namespace) -> name -> time
        self.last: dict[str, float] = {}  # user -> when its last request was answered
        self.lock = threading.Lock()

    def poll(self) -> None:
        with self.lock:
            if not self.path.exists():
                return
            with self.path.open("rb") as source:
                source.seek(self.offset)
                data = source.read()
            self.offset += len(data)
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            for line in lines:
                if line:
                    e = _event(json.loads(line))
                    self.events.append(e)
                    self.last[e.user] = max(self.last.get(e.user, 0.0), e.done)
                    if e.verb == "create" and e.code == 201 and e.stage == "ResponseComplete":
                        key = e.name[:-6] if e.resource == "jobs" else e.name  # <training name>-<5 hex of its uid>
                        self.creates.setdefault((e.user, e.resource, e.namespace), {}).setdefault(key, e.done)

    def requests(self, user: str, since: float = 0.0, until: float = float("inf")) -> list[Request]:
        """One entry per request: completed non-watch requests, and watches when they start."""
        self.poll()
        return [e for e in self.events if e.user == user and since <= e.received <= until and (
            (e.verb == "watch" and e.stage == "ResponseStarted") or (e.verb != "watch" and e.stage == "ResponseComplete"))]

    def created(self, user: str, resource: str, namespace: str) -> dict[str, float]:
        """name -> when the API server answered 201 to its create (for Jobs: the Training's name)."""
        self.poll()
        return dict(self.creates.get((user, resource, namespace), {}))

    def last_request(self, user: str) -> float:
        self.poll()
        return self.last.get(user, 0.0)


def _event(raw: dict[str, Any]) -> Request:
    ref = raw.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return Request(user=(raw.get("user") or {}).get("username", ""), verb=raw.get("verb", ""), resource=resource,
                   namespace=ref.get("namespace", ""), name=ref.get("name", ""), stage=raw.get("stage", ""),
                   received=_stamp(raw["requestReceivedTimestamp"]), done=_stamp(raw["stageTimestamp"]),
                   code=int((raw.get("responseStatus") or {}).get("code") or 0))


def by_kind(requests: list[Request]) -> Counter[str]:
    """Requests counted by `VERB resource` (LIST and WATCH named as such)."""
    return Counter(f"{r.verb.upper()} {r.resource}" for r in requests)


# --- processes and the machine ------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) of a process; empty when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    busy: float
    total: float


@dataclass
class Meter:
    """Named processes (the control plane's, the client under test, this one): CPU and memory, polled."""

    pids: dict[str, int] = field(default_factory=dict)
    peak_kb: dict[int, int] = field(default_factory=dict)
    rss_kb: dict[int, int] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    stop_flag: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, interval: float = 0.25) -> Meter:
        def run() -> None:
            while not self.stop_flag.wait(interval):
                self.sample()

        self.thread = threading.Thread(target=run, name="meter", daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        now = time.time()
        for pid in list(self.pids.values()):
            status = proc_status(pid)
            if status:
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), status.get("VmHWM", 0))
                self.rss_kb[pid] = status.get("VmRSS", 0)
                self.samples.setdefault(pid, []).append((now, cpu_seconds(pid)))

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.sample()

    def forget(self, name: str) -> None:
        self.sample()
        self.pids.pop(name, None)

    def peak_mb(self, pid: int) -> float:
        self.sample()
        return self.peak_kb.get(pid, 0) / 1024

    def rss_mb(self, pid: int) -> float:
        self.sample()
        return self.rss_kb.get(pid, 0) / 1024

    def busiest_second(self, pid: int, since: float, until: float) -> float:
        """The highest CPU use of one process over any 1 s within the window, in cores."""
        points = [(t, c) for t, c in self.samples.get(pid, []) if since <= t <= until]
        if len(points) >= 2 and points[-1][0] - points[0][0] < 1.0:  # a shorter window: its average
            return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        best = 0.0
        j = 0
        for i in range(len(points)):
            while j < len(points) and points[j][0] - points[i][0] < 1.0:
                j += 1
            if j < len(points):
                best = max(best, (points[j][1] - points[i][1]) / (points[j][0] - points[i][0]))
        return best

    def snapshot(self) -> Snapshot:
        busy, total = machine_busy()
        return Snapshot(time.time(), {name: cpu_seconds(pid) for name, pid in self.pids.items()}, busy, total)

    def stop(self) -> None:
        self.stop_flag.set()


@dataclass(frozen=True)
class Usage:
    wall: float
    cpu: dict[str, float]  # seconds per component
    machine: float  # busy CPU seconds of the whole machine

    @property
    def others(self) -> float:
        """Busy CPU seconds of processes that are not ours (other work on the machine)."""
        return max(0.0, self.machine - sum(v for v in self.cpu.values() if v == v))

    def line(self, order: tuple[str, ...]) -> str:
        parts = [f"{name} {self.cpu[name]:.1f}" for name in order if name in self.cpu and self.cpu[name] == self.cpu[name]]
        return (f"CPU s over {self.wall:.1f} s wall ({2 * self.wall:.0f} core-s on 2 cores; machine busy "
                f"{self.machine:.1f}): " + ", ".join(parts) + f", other processes {self.others:.1f}")


def usage(before: Snapshot, after: Snapshot) -> Usage:
    # a process started within the window (the client under test, at a restart) counts from zero
    cpu = {name: after.cpu[name] - before.cpu.get(name, 0.0) for name in after.cpu}
    return Usage(after.at - before.at, cpu, after.busy - before.busy)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load_header() -> str:
    """How loaded the machine is now: cores, load averages, memory, the busiest processes that are not ours."""
    one, five, fifteen = os.getloadavg()
    meminfo = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (f"{os.cpu_count()} cores, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min), "
            f"memory {meminfo['MemAvailable'] / 2**20:.1f} of {meminfo['MemTotal'] / 2**20:.1f} GiB available")


def busiest_processes(seconds: float = 1.0, top: int = 4, exclude: Iterable[int] = ()) -> list[str]:
    """The processes using the most CPU over `seconds`, other than `exclude` (and this one)."""
    skip = {os.getpid(), *exclude}

    def read() -> dict[int, tuple[float, str]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in skip:
                try:
                    name = (entry / "comm").read_text().strip()
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                found[int(entry.name)] = (cpu_seconds(int(entry.name)), (cmd or name)[:70])
        return found

    first = read()
    time.sleep(seconds)
    second = read()
    used = sorted(((second[p][0] - first[p][0], second[p][1]) for p in second if p in first), reverse=True)
    return [f"{cpu / seconds * 100:.0f}% {name}" for cpu, name in used[:top] if cpu / seconds >= 0.05]
