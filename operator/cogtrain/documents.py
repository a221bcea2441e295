"""Read JSON and YAML documents from files, with one clear error for anything unreadable.

YAML is read the way `kubectl` reads it (sigs.k8s.io/yaml): an unquoted date stays a string,
since the API server would store it as one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _KubectlLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe YAML without timestamp resolution."""


_KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


class DocumentError(Exception):
    """A file that cannot be read or parsed; the message names the file and the reason."""


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DocumentError(f"{path}: is a directory, not a file") from None
    except OSError as error:
        raise DocumentError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DocumentError(
            f"{path}: not valid UTF-8 (byte 0x{data[error.start]:02x} at line {line}); save the file as UTF-8"
        ) from None


def parse_documents(text: str, source: str) -> list[Any]:
    """All documents in a JSON or YAML text (JSON is YAML, but is parsed as JSON when it looks like it)."""
    try:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")) and not source.endswith((".yaml", ".yml")):
            try:
                return [json.loads(text)]
            except json.JSONDecodeError:
                pass  # maybe YAML flow style; let the YAML parser say what is wrong
        return list(yaml.load_all(text, Loader=_KubectlLoader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DocumentError(f"{source}: not valid YAML or JSON: {error.problem}{where}") from None
    except yaml.YAMLError as error:
        raise DocumentError(f"{source}: not valid YAML or JSON: {error}") from None
    except RecursionError:
        raise DocumentError(f"{source}: nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer beyond Python's digit limit
        raise DocumentError(f"{source}: unreadable value: {error}") from None


def load_document(path: str | Path) -> Any:
    """The single document in a JSON or YAML file (an empty file is an empty document: None)."""
    documents = parse_documents(read_text(path), str(path))
    documents = [d for d in documents if d is not None]
    if len(documents) > 1:
        raise DocumentError(f"{path}: holds {len(documents)} documents; expected one")
    return documents[0] if documents else None
