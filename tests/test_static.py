"""The project's static contracts, run with the suite so CI fails when they break: ruff, mypy --strict,
the import contracts of .importlinter, and the lean driver (a training Pod never loads the operator side)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cogtrain.contract import DriverReport, ExitCode, Reason

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", "operator", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run(str(BIN / "mypy"), "--strict", "operator/cogtrain")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept() -> None:
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


# What a pure module must not import directly, as its way to files, sockets, processes or the cluster: the standard
# library's and the clients', and the operator's own modules that call the Kubernetes API or read files.
IO_MODULES = ("os", "io", "pathlib", "glob", "socket", "ssl", "select", "selectors", "asyncio", "subprocess",
              "shutil", "tempfile", "http", "urllib", "urllib3", "requests", "aiohttp", "boto3", "botocore",
              "kubernetes", "kopf", "cogtrain.preflight", "cogtrain.pull_secrets", "cogtrain.access",
              "cogtrain.certs", "cogtrain.documents", "cogtrain.credentials")


@pytest.mark.parametrize("module", ["checks", "status", "contract"])
def test_the_pure_contract_catches_each_way_to_do_io(tmp_path: Path, module: str) -> None:
    """A pure module (the `pure` contract) that imports any of them breaks the contract: a copy of the package
    with the imports added to one pure module, checked with the project's .importlinter."""
    package = tmp_path / "cogtrain"
    shutil.copytree(ROOT / "operator" / "cogtrain", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = package / f"{module}.py"
    imports = "".join(f"from . import {name.removeprefix('cogtrain.')}  # noqa\n" if name.startswith("cogtrain.")
                      else f"import {name}  # noqa\n" for name in IO_MODULES)
    source.write_text(source.read_text().replace("from __future__ import annotations\n",
                                                 "from __future__ import annotations\n" + imports, 1))
    result = subprocess.run([str(BIN / "lint-imports"), "--no-cache", "--config", str(ROOT / ".importlinter")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0, result.stdout
    missed = [name for name in IO_MODULES if f"cogtrain.{module} is not allowed to import {name}:" not in result.stdout]
    assert not missed, result.stdout


def test_the_driver_never_loads_the_kubernetes_client() -> None:
    """What `cogtrain drive` imports, in a fresh interpreter: the contract, destinations and progress, not the operator."""
    probe = (
        "import sys, json; from cogtrain import cli; "
        "parser = cli.build_parser('drive'); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'kopf', 'requests', 'boto3', 'yaml', 'cogtrain'))))"
    )
    result = _run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not {m for m in loaded if not m.startswith("cogtrain")}, loaded
    assert loaded <= {
        "cogtrain", "cogtrain.cli", "cogtrain.commands", "cogtrain.commands.drive",
        "cogtrain.contract", "cogtrain.destinations", "cogtrain.driver", "cogtrain.jsonstream", "cogtrain.progress",
    }, loaded


@pytest.mark.parametrize("listen", ["garbage", "127.0.0.1:99999"])
def test_a_driver_that_cannot_start_still_reports_and_exits_final(tmp_path: Path, listen: str) -> None:
    """No traceback and exit 1 (which the Job would retry): a DriverFailed report and a final code."""
    log = tmp_path / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "cogtrain.cli", "drive", f"--listen={listen}", "--training-id=t", "--name=n",
         "--destination=pvc://claim", f"--destination-root={tmp_path}", f"--scratch={tmp_path / 'scratch'}",
         f"--termination-log={log}", "--setup-timeout=1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == ExitCode.DRIVER_FAILED, result.stderr
    assert "Traceback" not in result.stderr
    report = DriverReport.decode(log.read_text())
    assert report is not None and report.reason is Reason.DRIVER_FAILED
