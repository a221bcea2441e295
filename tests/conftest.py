"""The fixtures the test modules share: Cog model servers, registries, S3 and the Kubernetes API emulator.

Everything else the tests share (the servers' code, paths, helpers) is in the `support` package; this file
also checks that every test is marked `unit` or `integration` (see pyproject.toml's markers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

# The helpers' own asserts report their values as the tests' do: register them before anything imports them.
pytest.register_assert_rewrite("support")

from cogtrain.schema import TrainingSchema, parse_schema  # noqa: E402
from support.cogserver import CogServer, prepare_model, start_cog_server  # noqa: E402
from support.control_plane import cluster_fixture  # noqa: E402
from support.k8s_server import KubeAPI, start_kube_api  # noqa: E402
from support.paths import load_schema_document, model_dirs  # noqa: E402
from support.registries import USERS, Registries, cog_labels, predict_only_labels  # noqa: E402
from support.registry_server import OCI_MANIFEST, start_registry  # noqa: E402
from support.s3_server import S3Server, start_s3  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Ctrl-C works in the processes the tests start, however the suite was started: a shell without job control
    starts a background command (`./run-tests &`) with SIGINT ignored, and every child inherits that, so the tests
    that press Ctrl-C on the CLI and the model server's SIGINT shutdown waited for good (seen in a CI rerun)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


KINDS = ("unit", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is exactly one of `unit` (fast, starts no server or subprocess) and `integration`."""
    wrong = [f"{item.nodeid}: {kinds or 'neither'}" for item in items
             if len(kinds := sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})) != 1]
    if wrong:
        raise pytest.UsageError("mark each test with exactly one of @pytest.mark.unit and @pytest.mark.integration "
                                "(per test, or pytestmark per module):\n  " + "\n  ".join(wrong))


class StartsSomething(AssertionError):
    """A `unit` test started a server or a process: mark it `integration`."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*_: object, **__: object) -> NoReturn:
        raise StartsSomething(f"a unit test {what}: mark it @pytest.mark.integration")
    return refuse


@contextmanager
def _starting_nothing() -> Iterator[None]:
    """While a unit test (and the fixtures it asks for) runs: no process started or forked, no socket listening."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
        patch.setattr(socket.socket, "listen", _refuse("started a server"))
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                patch.setattr(os, name, _refuse(f"called os.{name}"))
        yield


def _guarded(item: pytest.Item) -> Iterator[None]:
    """A unit test's phase, its fixtures' setup included, with starting processes and servers refused."""
    if item.get_closest_marker("unit") is None:
        return (yield)
    with _starting_nothing():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.fixture(scope="session")
def schemas() -> dict[str, TrainingSchema]:
    return {name: parse_schema(load_schema_document(name)) for name in model_dirs()}


@pytest.fixture(scope="session")
def cog_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CogServer]]:
    """Cog's own train-mode server, one per model, started on first use."""
    started: dict[str, CogServer] = {}

    class Servers(dict):
        def __missing__(self, name: str) -> CogServer:
            model = prepare_model(model_dirs()[name], tmp_path_factory.mktemp("cog") / name)
            server = start_cog_server(model)
            started[name] = server
            self[name] = server
            return server

    yield Servers()
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """Three real registries (anonymous, htpasswd, token auth) holding the test images."""
    base = tmp_path_factory.mktemp("registries")
    started = []
    try:
        anonymous = start_registry(base / "anonymous")
        started.append(anonymous)
        htpasswd = start_registry(base / "htpasswd", auth="htpasswd", users=USERS)
        started.append(htpasswd)
        token = start_registry(base / "token", auth="token", users=USERS)
        started.append(token)
        digests = {}
        for model in ("all-inputs", "hello-train", "training-output", "edge-cases"):
            digests[model] = anonymous.push_image(f"acme/{model}", "1.0", cog_labels(model))
        digests["oci"] = anonymous.push_image("acme/oci", "1.0", cog_labels("training-output"), media_type=OCI_MANIFEST)
        digests["plain"] = anonymous.push_image("acme/plain", "1.0", None)
        digests["predict-only"] = anonymous.push_image("acme/predict-only", "1.0", predict_only_labels())
        old = {"org.cogmodel.openapi_schema": cog_labels("hello-train")["run.cog.openapi_schema"]}
        digests["old-label"] = anonymous.push_image("acme/old-label", "1.0", old)
        digests["broken"] = anonymous.push_image("acme/broken", "1.0", {"run.cog.openapi_schema": "{not json"})
        digests["multi"] = anonymous.push_index(
            "acme/multi", "1.0", {"linux/arm64": {"run.cog.openapi_schema": "{}"}, "linux/amd64": cog_labels("all-inputs")})
        digests["arm-only"] = anonymous.push_index("acme/arm-only", "1.0", {"linux/arm64": cog_labels("all-inputs")})
        digests["tamper-config"] = anonymous.push_image("acme/tamper-config", "1.0", cog_labels("hello-train"))
        digests["tamper-manifest"] = anonymous.push_image("acme/tamper-manifest", "1.0", cog_labels("hello-train"))
        for registry in (htpasswd, token):
            digests[f"private-{registry is token}"] = registry.push_image("acme/private", "1.0", cog_labels("all-inputs"))
        yield Registries(anonymous, htpasswd, token, digests)
    finally:
        for registry in started:
            registry.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible endpoint (moto server) with a `trainings` bucket and IAM enforced."""
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """A Kubernetes API (kmock-based emulator) on loopback, serving built-ins and the Training CRD."""
    from cogtrain.crd import training_crd

    api = start_kube_api(tmp_path_factory.mktemp("kube"), [training_crd()])
    yield api
    api.stop()


# The real control plane and one node agent (tests marked e2e), started once per session on first use.
cluster = cluster_fixture()
