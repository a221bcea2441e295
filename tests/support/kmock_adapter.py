"""Everything the Kubernetes API emulator needs from kmock beyond its public API, in one place.

kmock 0.8 (pinned in pyproject.toml) is used through its public names (`kmock.KubernetesScaffold`,
`kmock.Server`, `kmock.Request`, `kmock.action`, its public errors) everywhere else; what it does not
export, or exports only as private methods and attributes, is reached here and nowhere else, so that
a kmock upgrade has one small module to check:

- `KubernetesObjectConflictError` (HTTP 409), which kmock does not export;
- `Scaffold`: kmock's `KubernetesScaffold` with a public hook, `serve_directly`, in front of its private
  request handler (`_handle`), so that resource requests skip kmock's reaction matching;
- `raw_request`: the aiohttp request behind a kmock request (private `_raw_request`), to stream watches;
- the parsing of the cluster-scoped Namespace paths (`/api/v1/namespaces[/NAME]`), which kmock 0.8
  cannot do, patched into kmock's request parser when this module is imported.
"""

from __future__ import annotations

import aiohttp.web
import attrs
import kmock
from kmock._internal import parsing
from kmock._internal.k8s import KubernetesObjectConflictError

__all__ = ["KubernetesObjectConflictError", "Scaffold", "raw_request"]


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 cannot parse the cluster-scoped Namespace paths (`/api/v1/namespaces[/NAME]`), which
    kopf lists and watches when it serves named namespaces; everything else is kmock's own parse."""
    parts = [part for part in path.split("?", 1)[0].split("/") if part]
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _kmock_parse_path(path)


_kmock_parse_path = parsing.parse_path
parsing.parse_path = _parse_path


@attrs.define(kw_only=True)
class Scaffold(kmock.KubernetesScaffold):
    """kmock's Kubernetes scaffold (HTTP server, discovery, Kubernetes-shaped errors) with a hook to serve
    requests before kmock's own reactions see them."""

    async def serve_directly(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        """The response to `request`, or None to leave it to kmock's reactions (discovery and the rest)."""
        return None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        response = await self.serve_directly(request)
        return response if response is not None else await super()._handle(request)


def raw_request(request: kmock.Request) -> aiohttp.web.BaseRequest:
    """The aiohttp request a kmock request was parsed from (to prepare a streamed response on it)."""
    raw = request._raw_request
    assert raw is not None, "kmock gives every served request its aiohttp request"
    return raw
