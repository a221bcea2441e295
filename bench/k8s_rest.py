"""A small JSON client of the Kubernetes API for the benchmarks: one urllib3 pool, client certificates.

The benchmark's own requests (seeding thousands of objects, finishing Pods) go through this rather than
the `kubernetes` client, whose model (de)serialization costs more CPU than the API server spends on the
request: on a 2-core machine the load generator must stay out of the figures' way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml

MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class Rest:
    """JSON over HTTPS with the client certificate of a kubeconfig (as `ControlPlane` writes them)."""

    def __init__(self, kubeconfig: Path, pool: int = 64, timeout: float = 60.0) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.http = urllib3.PoolManager(
            maxsize=pool, block=True, cert_reqs="CERT_REQUIRED", ca_certs=cluster["certificate-authority"],
            cert_file=user["client-certificate"], key_file=user["client-key"], retries=False,
            timeout=urllib3.Timeout(connect=10, read=timeout),
        )

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                query: dict[str, Any] | None = None, ok: tuple[int, ...] = ()) -> Any:
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "User-Agent": "cogtrain-bench"}
        if data is not None:
            headers["Content-Type"] = content_type
        response = self.http.request(method, url, body=data, headers=headers, preload_content=True)
        if response.status >= 300 and response.status not in ok:
            raise ApiError(response.status, method, path, response.data.decode(errors="replace"))
        return json.loads(response.data) if response.data else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def merge(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, MERGE)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path, ok=(404,))

    def list_all(self, path: str, page: int = 500, **query: Any) -> list[dict[str, Any]]:
        """Every item of a list, in pages (as kopf and client-go list)."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            params = {"limit": page, **query, **({"continue": token} if token else {})}
            answer = self.get(path, **params)
            items += answer.get("items") or []
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return items


def trainings(namespace: str, name: str = "") -> str:
    return f"/apis/cog.run/v1alpha1/namespaces/{namespace}/trainings" + (f"/{quote(name)}" if name else "")


def jobs(namespace: str, name: str = "") -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs" + (f"/{quote(name)}" if name else "")


def pods(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{quote(name)}" if name else "")
