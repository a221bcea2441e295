"""Registry credentials the Kubernetes way: image pull Secrets and docker config files.

Matching follows the kubelet's keyring (pkg/credentialprovider): a config key is a host,
optionally with a port and a path prefix, and `*` globs whole host labels (`*.example.com`);
more specific keys are tried first; `index.docker.io` (as in `https://index.docker.io/v1/`)
serves Docker Hub images. All matching credentials are offered, in order, so a rotated secret
still works. Passwords never appear in reprs, logs or messages; only the source's name does.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .documents import DocumentError, read_text
from .reference import ImageReference

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
_DEFAULT_REGISTRY_KEY = "index.docker.io"


@dataclass(frozen=True)
class Credential:
    """A username and password (or identity token) and where they came from."""

    username: str
    password: str = field(repr=False)
    source: str = ""  # e.g. 'secret "regcred"' or '~/.docker/config.json'

    def fingerprint(self) -> str:
        """Identifies the credential in cache keys without revealing it."""
        digest = hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()
        return digest[:16]


def _split_key(key: str) -> tuple[str, str]:
    """A config key as the kubelet stores it: (host[:port], effective path)."""
    value = key.split("://", 1)[1] if "://" in key else key
    host, slash, path = value.partition("/")
    path = slash + path
    if path.startswith(("/v1/", "/v2/")):
        path = path[3:]
    return host.lower(), "" if path in ("", "/") else path


def _split_host(host: str) -> tuple[list[str], str]:
    if host.startswith("["):
        end = host.index("]")
        return [host[: end + 1]], host[end + 2 :]
    name, _, port = host.partition(":")
    return name.split("."), port


def _matches(key_host: str, key_path: str, host: str, path: str) -> bool:
    key_parts, key_port = _split_host(key_host)
    parts, port = _split_host(host.lower())
    if key_port != port or len(key_parts) != len(parts):
        return False
    if not path.startswith(key_path):
        return False
    return all(fnmatch.fnmatchcase(part, glob) for glob, part in zip(key_parts, parts, strict=True))


@dataclass(frozen=True)
class Keyring:
    """Credentials by registry key, looked up for an image as the kubelet does."""

    entries: tuple[tuple[str, str, Credential], ...] = ()

    @classmethod
    def from_docker_config(cls, config: Any, source: str) -> Keyring:
        """Read a docker config (`{"auths": {...}}`) or a legacy dockercfg (`{host: {...}}`)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: not a docker config object")
        auths = config.get("auths", config) if "auths" in config else config
        if not isinstance(auths, Mapping):
            raise ValueError(f"{source}: auths is not an object")
        entries = []
        for key, entry in auths.items():
            if not isinstance(entry, Mapping):
                continue
            credential = _credential(entry, source)
            if credential is None:
                continue
            host, path = _split_key(str(key))
            entries.append((host, path, credential))
        return cls(tuple(entries))

    def merged(self, *others: Keyring) -> Keyring:
        entries = list(self.entries)
        for other in others:
            entries.extend(other.entries)
        return Keyring(tuple(entries))

    def lookup(self, reference: ImageReference) -> list[Credential]:
        """Every credential that applies to the image, most specific key first."""
        host, path = reference.registry, f"/{reference.repository}"
        ordered = sorted(self.entries, key=lambda e: e[0] + e[1], reverse=True)
        found = [cred for key_host, key_path, cred in ordered if _matches(key_host, key_path, host, path)]
        if not found and reference.registry == "docker.io":
            found = [cred for key_host, key_path, cred in ordered
                     if key_host == _DEFAULT_REGISTRY_KEY and not key_path]
        unique: list[Credential] = []
        for credential in found:
            if credential not in unique:
                unique.append(credential)
        return unique

    @property
    def sources(self) -> list[str]:
        names: list[str] = []
        for _, _, credential in self.entries:
            if credential.source not in names:
                names.append(credential.source)
        return names


def _credential(entry: Mapping[str, Any], source: str) -> Credential | None:
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if ":" in decoded:
            username, password = decoded.split(":", 1)
    token = entry.get("identitytoken")
    if not password and isinstance(token, str) and token:
        password = token
    if not isinstance(username, str) or not isinstance(password, str) or not (username or password):
        return None
    return Credential(username=username, password=password, source=source)


def keyring_from_secrets(secrets: Iterable[Mapping[str, Any]]) -> tuple[Keyring, list[str]]:
    """A keyring from image pull Secrets (API objects as dicts), and a note per unusable Secret."""
    keyring = Keyring()
    notes = []
    for secret in secrets:
        name = secret.get("metadata", {}).get("name", "?")
        source = f'secret "{name}"'
        secret_type = secret.get("type")
        data = secret.get("data") or {}
        key = {DOCKER_CONFIG_JSON: ".dockerconfigjson", DOCKER_CFG: ".dockercfg"}.get(str(secret_type))
        if key is None:
            notes.append(f"{source} is of type {secret_type}, not {DOCKER_CONFIG_JSON}; it was not used")
            continue
        try:
            config = json.loads(base64.b64decode(data.get(key, ""), validate=True))
            keyring = keyring.merged(Keyring.from_docker_config(config, source))
        except (binascii.Error, ValueError, TypeError):
            notes.append(f"{source} has no readable {key}; it was not used")
    return keyring, notes


def keyring_from_file(path: str) -> Keyring:
    """A keyring from a docker `config.json` (what `docker login` writes); DocumentError if unreadable."""
    try:
        return Keyring.from_docker_config(json.loads(read_text(path)), path)
    except ValueError as error:
        raise DocumentError(f"{path}: not a docker config.json ({error})") from None
