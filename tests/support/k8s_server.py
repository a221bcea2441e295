"""A Kubernetes API server for tests, built on kmock (by kopf's author), on loopback.

No real API server can run on the test machines. kmock's `KubernetesScaffold` (through
`support.kmock_adapter`, the one module that reaches into kmock's internals) gives the HTTP
server, request parsing, API discovery and Kubernetes-shaped errors; this module adds the state
and the API behaviour the operator relies on, which kmock 0.8's own emulator lacks: uid,
resourceVersion, generation, creationTimestamp, namespace and generateName stamping; the status
subresource split; merge and JSON patches; label and field selectors; watches from a
resourceVersion (with 410 Gone when it is too old); garbage collection of owned objects; pods/log
(what a test wrote as a container's log, followed until the container ends); and fault injection (HTTP errors, delays) for resilience tests. The code under test uses the
ordinary `kubernetes` client and kopf, unaware that it talks to a test server.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import random
import string
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock import KubernetesError, KubernetesObjectNotFoundError, KubernetesResourceNotFoundError
from kubernetes import client

from cogtrain.handlers import ApiClients
from support.kmock_adapter import KubernetesObjectConflictError, Scaffold, raw_request

Key = tuple[str, str, str | None, str]  # (group/version, plural, namespace, name)


@attrs.frozen
class GoneError(KubernetesError):
    status: int = 410
    reason: str = "Expired"
    message: str = "too old resource version"


@attrs.frozen
class InjectedError(KubernetesError):
    status: int = 500
    reason: str = "InternalError"
    message: str = "injected failure"


@dataclass
class Fault:
    """Make matching requests fail (`status`) or hang (`delay` seconds), `times` times."""

    method: str
    plural: str
    status: int = 500
    times: int = 1
    delay: float = 0.0
    subresource: str | None = None
    hits: int = 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge patches are treated the same)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 JSON patch: add, replace, remove, test."""
    result = copy.deepcopy(target)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise KubernetesError(status=422, reason="Invalid", message=f"test failed at {op['path']}")
        elif op["op"] == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        elif isinstance(parent, list):
            if last == "-":
                parent.append(op["value"])
            elif op["op"] == "add":
                parent.insert(int(last), op["value"])
            else:
                parent[int(last)] = op["value"]
        else:
            parent[last] = op["value"]
    return result


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        current: Any = obj
        for part in path.lstrip("=").split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current) == value) == negate:
            return False
    return True


@attrs.define(kw_only=True)
class ClusterEmulator(Scaffold):
    """A stateful, watchable Kubernetes API for the resources declared in `resources`."""

    store: dict[Key, dict[str, Any]] = attrs.field(factory=dict)
    history: list[tuple[int, Key, str, dict[str, Any]]] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    log: list[tuple[str, str, str | None, str | None]] = attrs.field(factory=list)  # method, plural, sub, ns
    # Every request as RBAC sees it: (apiGroup, resource, subresource, verb, namespace, name, Authorization).
    verbs: list[tuple[str, str, str | None, str, str | None, str | None, str | None]] = attrs.field(factory=list)
    _revision: Any = attrs.field(factory=lambda: itertools.count(1))
    _tick: asyncio.Event | None = attrs.field(default=None)
    _oldest_watchable: int = attrs.field(default=0)
    _watch_epoch: int = attrs.field(default=0)
    loop: Any = attrs.field(default=None)
    observers: list[Any] = attrs.field(factory=list)  # called with (key, kind, object) at every change
    selectors: list[tuple[str, str, str]] = attrs.field(factory=list)  # (verb, plural, labelSelector) of lists/watches
    # Answers SubjectAccessReviews: called with the review's spec; tests replace it to deny. A real
    # API server decides by RBAC; the emulator allows everything unless told otherwise.
    authorize: Any = attrs.field(default=lambda spec: True)
    # What each container has printed, by (namespace, pod, container): served as pods/log; tests append to it.
    pod_logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict)

    async def serve_directly(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """Serve resource requests here directly; discovery and the rest go through kmock's reactions.

        kmock matches each request against every reaction's recorded requests, which grows with
        the number of requests served; resource requests skip that, so long runs stay fast.
        """
        verbs = {
            kmock.action.LIST: self._serve_list,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update,
            kmock.action.DELETE: self._serve_delete,
        }
        resource = request.resource
        if resource is None or not resource.plural or request.action not in (*verbs, kmock.action.WATCH):
            return None
        if request.action == kmock.action.WATCH:
            return await self._stream(request)
        if request.subresource == "log" and request.action == kmock.action.FETCH:
            return await self._serve_log(request)
        status = 201 if request.action == kmock.action.CREATE else 200
        return aiohttp.web.json_response(await verbs[request.action](request), status=status)

    async def _stream(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request(request))
        try:
            async for event in self._serve_watch(request):
                if isinstance(event, dict):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response

    async def _serve_log(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """pods/log as the kubelet relays it: `pod_logs` so far (tailLines, limitBytes), and with follow=true what
        is appended to it until the container ends or the Pod goes."""
        await self._gate(request)
        key = self._key(request)
        pod = self.store.get(key)
        if pod is None:
            raise KubernetesObjectNotFoundError()
        container = request.params.get("container") or pod["spec"]["containers"][0]["name"]
        log_key = (key[2] or "", key[3], container)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw_request(request))
        if str(request.params.get("follow", "")).lower() not in ("1", "true"):
            text = self.pod_logs.get(log_key, "")
            if request.params.get("tailLines"):
                text = "".join(text.splitlines(keepends=True)[-int(request.params["tailLines"]):])
            data = text.encode()[: int(request.params.get("limitBytes") or 1 << 62)]
            await response.write(data)
            await response.write_eof()
            return response
        sent = 0
        try:
            while True:
                current = self.store.get(key)
                statuses = ((current or {}).get("status") or {}).get("containerStatuses") or []
                ended = current is None or any(
                    s.get("name") == container and "terminated" in (s.get("state") or {}) for s in statuses)
                text = self.pod_logs.get(log_key, "")
                if len(text) > sent:
                    await response.write(text[sent:].encode())
                    sent = len(text)
                if ended:
                    break
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response

    # --- helpers ------------------------------------------------------------------------------

    def _current_tick(self) -> asyncio.Event:
        """An event set at the next change (a fresh one per change; no lock, so no lost wake-ups)."""
        if self._tick is None:
            self._tick = asyncio.Event()
        return self._tick

    def _gv(self, request: kmock.Request) -> str:
        resource = request.resource
        if resource is None:
            raise KubernetesResourceNotFoundError()
        return f"{resource.group}/{resource.version}" if resource.group else resource.version or "v1"

    def _info(self, request: kmock.Request) -> Any:
        for resource in self.resources:
            if resource == request.resource or (
                resource.group == request.resource.group and resource.plural == request.resource.plural
            ):
                return self.resources[resource]
        raise KubernetesResourceNotFoundError()

    async def _gate(self, request: kmock.Request) -> None:
        plural = request.resource.plural if request.resource else ""
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        self.log.append((method, plural or "", request.subresource, request.namespace))
        group = request.resource.group if request.resource else ""
        self.verbs.append((group or "", plural or "", request.subresource, _verb(method, request), request.namespace,
                           request.name, (request.headers or {}).get("Authorization")))
        for fault in self.faults:
            if fault.hits < fault.times and fault.method == method and fault.plural == plural and (
                fault.subresource == request.subresource
            ):
                fault.hits += 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status:
                    raise InjectedError(status=fault.status, reason="Injected", message=f"injected HTTP {fault.status}")

    async def _record(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        revision = int(obj["metadata"]["resourceVersion"])
        self.history.append((revision, key, kind, copy.deepcopy(obj)))
        for observer in self.observers:
            observer(key, kind, obj)
        tick, self._tick = self._current_tick(), asyncio.Event()
        tick.set()

    def _stamp_revision(self, obj: dict[str, Any]) -> None:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._revision))

    def _selected(self, request: kmock.Request, key: Key, obj: dict[str, Any]) -> bool:
        gv, plural, namespace, _ = key
        if gv != self._gv(request) or plural != request.resource.plural:
            return False
        if request.namespace is not None and namespace != request.namespace:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if not _labels_match(labels, request.params.get("labelSelector", "")):
            return False
        return _fields_match(obj, request.params.get("fieldSelector", ""))

    # --- verbs ----------------------------------------------------------------------------------

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        await self._gate(request)
        self._info(request)
        self.selectors.append(("list", request.resource.plural, request.params.get("labelSelector", "")))
        items = [copy.deepcopy(obj) for key, obj in self.store.items() if self._selected(request, key, obj)]
        revision = str(self.history[-1][0] if self.history else 0)
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": revision}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        await self._gate(request)
        self.selectors.append(("watch", request.resource.plural, request.params.get("labelSelector", "")))
        yield b""
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        deadline = asyncio.get_running_loop().time() + timeout
        if since and since.isdigit() and int(since) < self._oldest_watchable:
            yield {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                               "code": 410, "reason": "Expired", "message": "too old resource version"}}
            return
        epoch = self._watch_epoch
        if since and since.isdigit():
            position = next((i for i, entry in enumerate(self.history) if entry[0] > int(since)), len(self.history))
        else:
            for key, obj in list(self.store.items()):
                if self._selected(request, key, obj):
                    yield {"type": "ADDED", "object": copy.deepcopy(obj)}
            position = len(self.history)
        while True:
            tick = self._current_tick()
            while position < len(self.history):
                _, key, kind, obj = self.history[position]
                position += 1
                if self._selected(request, key, obj):
                    yield {"type": kind, "object": obj}
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or epoch != self._watch_epoch:
                return
            try:
                await asyncio.wait_for(tick.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                pass

    def _key(self, request: kmock.Request, name: str | None = None) -> Key:
        return (self._gv(request), request.resource.plural, request.namespace, name or request.name or "")

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        await self._gate(request)
        obj = self.store.get(self._key(request))
        if obj is None:
            raise KubernetesObjectNotFoundError()
        return copy.deepcopy(obj)

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        await self._gate(request)
        info = self._info(request)
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else json.loads(request.body)
        if request.resource.plural == "subjectaccessreviews":  # answered, never stored
            allowed = bool(self.authorize(obj.get("spec") or {}))
            return {**obj, "status": {"allowed": allowed, **({} if allowed else {"reason": "denied by the test"})}}
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if request.namespace:
            meta["namespace"] = request.namespace
        key = self._key(request, meta.get("name"))
        if key in self.store:
            raise KubernetesObjectConflictError(reason="AlreadyExists",
                                                message=f'{request.resource.plural} "{meta.get("name")}" already exists')
        resource = request.resource
        obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        obj["kind"] = info.kind or obj.get("kind")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if "status" in info.subresources:
            obj.pop("status", None)
        self._stamp_revision(obj)
        self.store[key] = obj
        await self._record(key, "ADDED", obj)
        return copy.deepcopy(obj)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        await self._gate(request)
        info = self._info(request)
        key = self._key(request)
        current = self.store.get(key)
        if current is None:
            raise KubernetesObjectNotFoundError()
        body = request.data if request.data is not None else json.loads(request.body or b"null")
        expected = ((body.get("metadata") or {}) if isinstance(body, dict) else {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"].get("resourceVersion"):
            raise KubernetesObjectConflictError(reason="Conflict", message=(
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again"))
        content_type = {k.lower(): v for k, v in (request.headers or {}).items()}.get("content-type", "")
        if isinstance(body, list) and request.method == "PATCH" and "json-patch" not in content_type:
            # as the API server: a list is a JSON patch only when sent as one (a client's default is a merge patch)
            raise KubernetesError(status=400, reason="BadRequest", message=f"a list is not a {content_type} patch")
        patched = json_patch(current, body) if isinstance(body, list) else merge_patch(current, body)
        if request.subresource == "status":
            patched = {**current, "status": patched.get("status")}
        elif "status" in info.subresources:
            patched["status"] = current.get("status")
            if patched["status"] is None:
                patched.pop("status")
        for immutable in ("uid", "creationTimestamp", "namespace", "name"):
            if immutable in current["metadata"]:
                patched["metadata"][immutable] = current["metadata"][immutable]
        strip = ("metadata", "status")
        if {k: v for k, v in patched.items() if k not in strip} != {k: v for k, v in current.items() if k not in strip}:
            patched["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        self._stamp_revision(patched)
        if patched["metadata"].get("deletionTimestamp") and not patched["metadata"].get("finalizers"):
            await self._remove(key, patched)
        else:
            self.store[key] = patched
            await self._record(key, "MODIFIED", patched)
        return copy.deepcopy(patched)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        await self._gate(request)
        key = self._key(request)
        current = self.store.get(key)
        if current is None:
            raise KubernetesObjectNotFoundError()
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current = copy.deepcopy(current)
                current["metadata"]["deletionTimestamp"] = _now()
                self._stamp_revision(current)
                self.store[key] = current
                await self._record(key, "MODIFIED", current)
            return copy.deepcopy(current)
        await self._remove(key, current)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "details": {"name": key[3]}}

    async def _remove(self, key: Key, obj: dict[str, Any]) -> None:
        """Delete, then collect the garbage: objects owned by it go too (background propagation)."""
        self.store.pop(key, None)
        obj = copy.deepcopy(obj)
        self._stamp_revision(obj)
        await self._record(key, "DELETED", obj)
        uid = obj["metadata"].get("uid")
        for child_key, child in list(self.store.items()):
            owners = (child.get("metadata") or {}).get("ownerReferences") or []
            if any(owner.get("uid") == uid for owner in owners):
                await self._remove(child_key, child)

    def expire_watches(self) -> None:
        """End every open watch and make every resourceVersion seen so far too old (410 Gone), as after
        an etcd compaction: clients must list again."""
        def expire() -> None:
            self._oldest_watchable = (self.history[-1][0] + 1) if self.history else 1
            self._watch_epoch += 1
            tick, self._tick = self._current_tick(), asyncio.Event()
            tick.set()

        self.loop.call_soon_threadsafe(expire)


@dataclass
class KubeAPI(ApiClients):
    """A running emulator and the ways to reach it: URL, kubeconfig file, kubernetes client."""

    url: str
    emulator: ClusterEmulator
    api_client: client.ApiClient
    kubeconfig: Path
    loop: asyncio.AbstractEventLoop
    _stop: threading.Event
    _thread: threading.Thread

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _verb(method: str, request: kmock.Request) -> str:
    """The RBAC verb of a request, as the API server's authorizer names it."""
    params = request.params or {}
    if method == "GET":
        if str(params.get("watch", "")).lower() in ("1", "true"):
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if request.name else "deletecollection"}.get(method, method.lower())


def start_kube_api(workdir: Path, crds: list[dict[str, Any]] = ()) -> KubeAPI:  # type: ignore[assignment]
    """Start the emulator in its own thread and event loop; declare built-ins and the given CRDs."""
    ready = threading.Event()
    stop = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            emulator = ClusterEmulator()
            emulator.resources.load_bundled()
            for crd in crds:
                spec = crd["spec"]
                for version in spec["versions"]:
                    emulator.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = {
                        "kind": spec["names"]["kind"], "singular": spec["names"]["singular"],
                        "namespaced": spec["scope"] == "Namespaced", "shortnames": spec["names"].get("shortNames", []),
                        "subresources": list(version.get("subresources", {})),
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    }
            emulator.loop = asyncio.get_running_loop()
            async with emulator, kmock.Server(emulator) as server:
                state.update(url=str(server.url).rstrip("/"), emulator=emulator, loop=asyncio.get_running_loop())
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced to the starting thread
            state["error"] = error
            ready.set()

    thread = threading.Thread(target=serve, name="kube-api", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in state:
        raise RuntimeError(f"the test API server did not start: {state.get('error')!r}")
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": state["url"]}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
    }))
    configuration = client.Configuration(host=state["url"])
    configuration.connection_pool_maxsize = 32
    return KubeAPI(state["url"], state["emulator"], client.ApiClient(configuration), kubeconfig, state["loop"],
                   stop, thread)
