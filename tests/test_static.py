"""The project's static contracts, run with the suite so CI fails when they break: ruff, mypy --strict,
the import contracts of .importlinter, and the lean driver (a training Pod never loads the operator side)."""

from __future__ import annotations

import json
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
