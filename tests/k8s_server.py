"""A Kubernetes API server for tests: kmock's emulator (by kopf's author) on loopback.

No real API server can run on the test machines; the emulator stores objects and serves
reads, lists and watches over real HTTP, so the code under test uses the ordinary
`kubernetes` client, unaware it talks to a test server.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import kmock
from kubernetes import client


@dataclass
class KubeAPI:
    url: str
    emulator: Any
    api_client: client.ApiClient
    _stop: threading.Event
    _thread: threading.Thread

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def start_kube_api() -> KubeAPI:
    ready = threading.Event()
    stop = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
                emulator.resources.load_bundled()
                state["url"] = str(server.url).rstrip("/")
                state["emulator"] = emulator
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced by the waiting thread below
            state["error"] = error
            ready.set()

    thread = threading.Thread(target=serve, name="kmock", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in state:
        raise RuntimeError(f"kmock did not start: {state.get('error')}")
    api_client = client.ApiClient(client.Configuration(host=state["url"]))
    return KubeAPI(state["url"], state["emulator"], api_client, stop, thread)
