"""Argo CD's Lua customizations of the Training, run the way Argo CD runs them, and their argocd-cm form.

Argo CD runs a health or action script in gopher-lua (Lua 5.1) with only the base, table, package
and a safe `os` library open, the resource as the global `obj`, and reads the table the script
returns. `run_health`, `run_discovery` and `run_action` do the same with a real Lua 5.1 (lupa);
`health_tests` and `action_tests` read Argo CD's own test files (health_test.yaml, action_test.yaml).

`render_argocd_cm` and `render_helm_values` give the install snippets in gitops/argocd/; run
`.venv/bin/python tests/support/argocd.py` to write them again after changing a Lua file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
GITOPS = ROOT / "gitops" / "argocd"
CUSTOMIZATION = GITOPS / "resource_customizations" / "cog.run" / "Training"
HEALTH_KEY = "resource.customizations.health.cog.run_Training"
ACTIONS_KEY = "resource.customizations.actions.cog.run_Training"
ACTIONS = ("cancel", "suspend", "resume")
HEALTH_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})
# What Argo CD's safe os library keeps of Lua's os.
_SAFE_OS = ("time", "date", "clock", "difftime")


def _runtime(obj: Mapping[str, Any]) -> Any:
    """A Lua 5.1 state as Argo CD prepares one: no string, math, io or debug library, `obj` set."""
    from lupa import lua51

    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True)
    lua.execute(
        "debug.setmetatable('', nil)\n"  # no string library: no ('x'):sub() either
        "local os_ = os\n"
        f"os = {{{', '.join(f'{name} = os_.{name}' for name in _SAFE_OS)}}}\n"
        "package.loaded.os = os\n"
        "string, math, io, debug, coroutine, package.loaded.string, package.loaded.math = nil\n"
        "package.loaded.io, package.loaded.debug, package.loaded.coroutine = nil\n"
    )
    lua.globals().obj = to_lua(lua, json.loads(json.dumps(obj)))
    return lua


def to_lua(lua: Any, value: Any) -> Any:
    """A JSON value as Argo CD hands it to Lua: objects and arrays become tables (arrays from 1), null nil."""
    if isinstance(value, Mapping):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    return value


def from_lua(value: Any) -> Any:
    """A value a script returned, as JSON: a table with keys 1..n is an array, any other table an object."""
    from lupa import lua51

    if lua51.lua_type(value) == "table":
        items = dict(value.items())
        if items and all(isinstance(key, int) for key in items) and sorted(items) == list(range(1, len(items) + 1)):
            return [from_lua(items[index]) for index in range(1, len(items) + 1)]
        return {str(key): from_lua(item) for key, item in items.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _execute(obj: Mapping[str, Any], script: str) -> Any:
    result = from_lua(_runtime(obj).execute(script))
    assert isinstance(result, dict), f"a script must return a table, not {result!r}"
    return result


def run_health(obj: Mapping[str, Any], script: str | None = None) -> dict[str, str]:
    """health.lua's verdict on `obj`: {status, message}."""
    health = _execute(obj, script if script is not None else (CUSTOMIZATION / "health.lua").read_text())
    assert set(health) <= {"status", "message"}, health
    assert health.get("status") in HEALTH_STATUSES, f"not a health status Argo CD knows: {health}"
    return {"status": health["status"], "message": health.get("message", "")}


def run_discovery(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """discovery.lua's actions for `obj`, by name, each as Argo CD lists it (disabled false unless set)."""
    found = _execute(obj, (CUSTOMIZATION / "actions" / "discovery.lua").read_text())
    assert set(found) <= set(ACTIONS), f"an action without a script: {sorted(set(found) - set(ACTIONS))}"
    return sorted(({"name": name, "disabled": False, **fields} for name, fields in found.items()),
                  key=lambda action: action["name"])


def run_action(obj: Mapping[str, Any], action: str) -> dict[str, Any]:
    """The object an action's script returns for `obj` (Argo CD patches the live object to it)."""
    result: dict[str, Any] = _execute(obj, (CUSTOMIZATION / "actions" / action / "action.lua").read_text())
    return result


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def health_tests() -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Argo CD's health_test.yaml: (input path, object, expected {status, message})."""
    tests = load(CUSTOMIZATION / "health_test.yaml")["tests"]
    return [(test["inputPath"], load(CUSTOMIZATION / test["inputPath"]), test["healthStatus"]) for test in tests]


def action_tests() -> dict[str, list[dict[str, Any]]]:
    """Argo CD's actions/action_test.yaml: discoveryTests and actionTests."""
    return load(CUSTOMIZATION / "actions" / "action_test.yaml")


# --- the argocd-cm keys ------------------------------------------------------------------------


class _Literal(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the Lua reads as it is in its file."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Literal.add_representer(str, _string)


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_Literal, sort_keys=False, width=1000)


def customization_data() -> dict[str, str]:
    """The two argocd-cm keys: health.lua, and the actions (discovery.lua and each action.lua)."""
    actions = CUSTOMIZATION / "actions"
    definitions = [{"name": name, "action.lua": (actions / name / "action.lua").read_text()} for name in ACTIONS]
    return {
        HEALTH_KEY: (CUSTOMIZATION / "health.lua").read_text(),
        ACTIONS_KEY: _dump({"discovery.lua": (actions / "discovery.lua").read_text(), "definitions": definitions}),
    }


_HEADER = "# Generated from resource_customizations/cog.run/Training by tests/support/argocd.py: do not edit.\n"


def render_argocd_cm() -> str:
    """argocd-cm with the Training's keys only: a patch (kustomize, or `kubectl patch --patch-file`)."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "argocd-cm", "namespace": "argocd",
                               "labels": {"app.kubernetes.io/part-of": "argocd"}},
                  "data": customization_data()}
    return _HEADER + _dump(config_map)


def render_helm_values() -> str:
    """Values for the argo-cd Helm chart (argo/argo-cd) that add the keys to its argocd-cm."""
    return _HEADER + _dump({"configs": {"cm": customization_data()}})


SNIPPETS = {GITOPS / "argocd-cm.yaml": render_argocd_cm, GITOPS / "argo-cd-values.yaml": render_helm_values}


if __name__ == "__main__":
    for path, render in SNIPPETS.items():
        path.write_text(render())
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
