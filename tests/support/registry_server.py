"""A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution 2.8) on loopback.

Three ways to run it: anonymous, htpasswd (Basic auth), and token auth (Bearer), the last with
a small token service here that signs JWTs the registry verifies against its root certificate,
as Docker Hub's and Harbor's token services do. Images are pushed through the registry HTTP API.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from support.cogserver import free_port

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues registry Bearer tokens (RS256 JWTs with an x5c chain) for known users."""

    def __init__(self, users: dict[str, str], service: str, issuer: str = "test-token-issuer") -> None:
        self.users = users
        self.service = service
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, scope: str | None, user: str | None) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            allowed = ["pull", "push"] if user == "admin" else ["pull"] if user else []
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlsplit(self.path).query)
                user = None
                header = self.headers.get("Authorization", "")
                service.requests.append({"query": query, "authorized": bool(header)})
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if service.users.get(name) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                token = service.issue(query.get("scope", [None])[0], user)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Registry:
    """A running docker-registry and a client that pushes images to it."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    push_auth: tuple[str, str] | None = None
    token_service: TokenService | None = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _headers(self, repository: str) -> dict[str, str]:
        if self.token_service is not None:
            token = self.token_service.issue(f"repository:{repository}:pull,push", "admin")
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _request(self, method: str, url: str, repository: str, **kwargs: Any) -> requests.Response:
        auth = self.push_auth if self.token_service is None else None
        headers = {**self._headers(repository), **kwargs.pop("headers", {})}
        response = self.session.request(method, url, auth=auth, headers=headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        start = self._request("POST", f"{self.url}/v2/{repository}/blobs/uploads/", repository)
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        self._request("PUT", f"{location}{separator}digest={digest}", repository, data=data,
                      headers={"Content-Type": "application/octet-stream"})
        return digest

    def push_manifest(self, repository: str, reference: str, manifest: dict[str, Any], media_type: str) -> str:
        body = json.dumps(manifest).encode()
        self._request("PUT", f"{self.url}/v2/{repository}/manifests/{reference}", repository, data=body,
                      headers={"Content-Type": media_type})
        return sha256(body)

    def push_image(self, repository: str, tag: str, labels: dict[str, str] | None,
                   architecture: str = "amd64", media_type: str = DOCKER_MANIFEST) -> str:
        """Push a one-layer image whose config carries `labels`; returns the manifest digest."""
        layer_tar = io.BytesIO()
        with tarfile.open(fileobj=layer_tar, mode="w") as archive:
            content = f"model for {repository}:{tag} ({architecture})\n".encode()
            info = tarfile.TarInfo("src/README")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        layer = gzip.compress(layer_tar.getvalue(), mtime=0)
        config = {
            "architecture": architecture, "os": "linux",
            "config": {"Entrypoint": ["/usr/bin/tini", "--"], "Env": ["COG_TRAIN_TYPE_STUB=train.py:train"],
                       **({"Labels": labels} if labels is not None else {})},
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar.getvalue())]},
        }
        config_bytes = json.dumps(config).encode()
        oci = media_type == OCI_MANIFEST
        manifest = {
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json" if oci else DOCKER_CONFIG,
                       "size": len(config_bytes), "digest": self.push_blob(repository, config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip" if oci else LAYER,
                        "size": len(layer), "digest": self.push_blob(repository, layer)}],
        }
        return self.push_manifest(repository, tag, manifest, media_type)

    def push_index(self, repository: str, tag: str, platforms: dict[str, dict[str, str] | None]) -> str:
        """Push one image per `os/arch` and an OCI index over them, in the order given."""
        entries = []
        for platform, labels in platforms.items():
            os_name, arch = platform.split("/")
            digest = self.push_image(repository, f"{tag}-{arch}", labels, architecture=arch, media_type=OCI_MANIFEST)
            size = len(self._request("GET", f"{self.url}/v2/{repository}/manifests/{digest}", repository,
                                     headers={"Accept": OCI_MANIFEST}).content)
            entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                            "platform": {"os": os_name, "architecture": arch}})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.push_manifest(repository, tag, index, OCI_INDEX)

    def blob_path(self, digest: str) -> Path:
        hex_digest = digest.split(":", 1)[1]
        return self.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_service is not None:
            self.token_service.stop()


def start_registry(workdir: Path, auth: str | None = None, users: dict[str, str] | None = None) -> Registry:
    """Start docker-registry on a free loopback port; auth is None, "htpasswd" or "token"."""
    if not os.path.exists(REGISTRY_BINARY):
        raise RuntimeError("docker-registry is not installed: run ./run-tests, which installs it (apt)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = workdir / "storage"
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-secret", "debug": {"addr": ""}},
    }
    users = users or {}
    token_service = None
    push_auth = None
    if auth == "htpasswd":
        lines = [f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for name, pw in users.items()]
        (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(workdir / "htpasswd")}}
        push_auth = next(iter(users.items()))
    elif auth == "token":
        token_service = TokenService(users, service="test-registry")
        (workdir / "token-ca.pem").write_bytes(token_service.cert_pem())
        config["auth"] = {"token": {"realm": token_service.realm, "service": "test-registry",
                                    "issuer": token_service.issuer, "rootcertbundle": str(workdir / "token-ca.pem")}}
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(process=process, port=port, root=root, push_auth=push_auth, token_service=token_service)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{registry.url}/v2/", timeout=1).status_code in (200, 401):
                return registry
        except requests.ConnectionError:
            time.sleep(0.05)
    registry.stop()
    raise RuntimeError("docker-registry did not start within 30 s")


@dataclass
class Canned:
    """One fixed answer of a FaultyRegistry: status, headers and body, optionally after a delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    content_length: bool = True  # False: the body ends when the connection closes (HTTP/1.0)


def canned_image(repository: str, tag: str, labels: dict[str, str] | None, config: dict[str, Any] | None = None,
                 manifest_extra: dict[str, Any] | None = None) -> tuple[dict[str, Canned], str]:
    """The answers of a registry holding one image (manifest by tag and digest, config blob); and its digest.

    `config` replaces the whole config document; `manifest_extra` adds fields to the manifest."""
    config_bytes = json.dumps(config if config is not None else {
        "architecture": "amd64", "os": "linux", "config": {"Labels": labels} if labels is not None else {},
        "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": len(config_bytes), "digest": sha256(config_bytes)},
                "layers": [], **(manifest_extra or {})}
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    answer = Canned(headers={"Content-Type": DOCKER_MANIFEST, "Docker-Content-Digest": digest}, body=body)
    return {f"/v2/{repository}/manifests/{tag}": answer, f"/v2/{repository}/manifests/{digest}": answer,
            f"/v2/{repository}/blobs/{sha256(config_bytes)}": Canned(body=config_bytes)}, digest


def canned_index(repository: str, tag: str, index: dict[str, Any]) -> dict[str, Canned]:
    """The answer of a registry whose `tag` is the index (any JSON, however malformed) given."""
    return {f"/v2/{repository}/manifests/{tag}": Canned(headers={"Content-Type": OCI_INDEX},
                                                         body=json.dumps(index).encode())}


class FaultyRegistry:
    """A loopback HTTP server that answers `status` (or never answers, status 0).

    With `upstream`, only the first `failures` requests fail; later ones are passed to the
    upstream registry, so a test can watch a client recover. `answers` gives fixed answers by
    path (the query left out); `headers` go with the `status` answer. With `trickle`, every
    other request gets a 200 whose body (and with `trickle_headers` its status line and headers
    too) comes one byte per `trickle` seconds, for up to `hang_seconds`: a slowloris registry.
    `bind` picks the loopback address (127.0.0.2 is another host than 127.0.0.1); `connections`
    counts the TCP connections accepted, `seen` the requests' paths and headers.
    """

    def __init__(self, status: int, hang_seconds: float = 5.0, upstream: str | None = None,
                 failures: int | None = None, *, answers: dict[str, Canned] | None = None,
                 headers: dict[str, str] | None = None, trickle: float = 0.0, trickle_headers: bool = False,
                 bind: str = "127.0.0.1") -> None:
        self.status = status
        self.hang = threading.Event()
        self.hang_seconds = hang_seconds
        self.upstream = upstream
        self.failures = failures
        self.answers = answers or {}
        self.headers = headers or {}
        self.trickle = trickle
        self.trickle_headers = trickle_headers
        self.requests = 0
        self.connections = 0
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                outer.seen.append((self.path, dict(self.headers.items())))
                path = urlsplit(self.path).path
                if path in outer.answers:
                    self._answer(outer.answers[path])
                    return
                if outer.upstream and outer.failures is not None and outer.requests > outer.failures:
                    self._forward()
                    return
                if outer.trickle:
                    self._trickle()
                    return
                if outer.status == 0:
                    outer.hang.wait(outer.hang_seconds)
                    return
                body = b'{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}'
                self._answer(Canned(outer.status, outer.headers, body))

            def _answer(self, answer: Canned) -> None:
                if answer.delay:
                    outer.hang.wait(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.content_length:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            def _trickle(self) -> None:
                """A 200 of 1 MiB that comes one byte at a time (headers too, with trickle_headers)."""
                head = (b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"X-Slow: " + b"s" * 64 + b"\r\nContent-Length: 1048576\r\n\r\n")
                given_up = time.monotonic() + outer.hang_seconds
                try:
                    if not outer.trickle_headers:
                        self.wfile.write(head)
                        head = b""
                    for byte in head + b"{" + b" " * (1 << 20):
                        if time.monotonic() > given_up or outer.hang.wait(outer.trickle):
                            return
                        self.wfile.write(bytes([byte]))
                except OSError:
                    return  # the client hung up: what a deadline does

            def _forward(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                response = requests.request(self.command, f"{outer.upstream}{self.path}", headers=headers,
                                            timeout=10, allow_redirects=False)
                self.send_response(response.status_code)
                for name in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Location"):
                    if name in response.headers:
                        self.send_header(name, response.headers[name])
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.content)

            do_HEAD = do_GET  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                accepted = super().get_request()
                outer.connections += 1
                return accepted

        self.server = Server((bind, free_port_on(bind)), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"{self.server.server_address[0]}:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


def free_port_on(address: str) -> int:
    """A port free right now on one loopback address."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port
