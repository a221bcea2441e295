"""Benchmark: schema lookups against a real registry (docker-registry on loopback).

Prints the cost of a cold lookup (time and HTTP round trips, anonymous and with Bearer tokens),
of a cached lookup, and of 100 concurrent lookups of one uncached image. Ratios are against the
cold lookup measured in the same run. Run: .venv/bin/python bench/registry_lookup.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cogtrain.credentials import Keyring  # noqa: E402
from cogtrain.registry import RegistryClient  # noqa: E402
from cogtrain.resolver import SchemaResolver  # noqa: E402
from support.registries import USERS, cog_labels  # noqa: E402
from support.registry_server import start_registry  # noqa: E402


def cold(image: str, keyring: Keyring | None, runs: int = 20) -> tuple[float, int]:
    """Median seconds and round trips of a lookup by a fresh client (nothing known, nothing cached)."""
    times, trips = [], set()
    for _ in range(runs):
        client = RegistryClient()
        started = time.perf_counter()
        SchemaResolver(client).resolve(image, keyring)
        times.append(time.perf_counter() - started)
        trips.add(client.round_trips)
    assert len(trips) == 1
    return statistics.median(times), trips.pop()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    anonymous = start_registry(workdir / "anonymous")
    token = start_registry(workdir / "token", auth="token", users=USERS)
    try:
        labels = cog_labels("all-inputs")
        anonymous.push_image("acme/all-inputs", "1.0", labels)
        token.push_image("acme/all-inputs", "1.0", labels)
        for i in range(3):
            anonymous.push_image(f"acme/concurrent-{i}", "1.0", labels)
        keyring = Keyring.from_docker_config({"auths": {token.host: {"username": "reader",
                                                                     "password": USERS["reader"]}}}, "bench")
        anon_image = f"{anonymous.host}/acme/all-inputs:1.0"
        token_image = f"{token.host}/acme/all-inputs:1.0"

        cold_anon, trips_anon = cold(anon_image, None)
        cold_token, trips_token = cold(token_image, keyring)
        warm_client = RegistryClient()
        warm_resolver = SchemaResolver(warm_client)
        warm_resolver.resolve(token_image, keyring)
        warm_client._tokens.clear()
        before = warm_client.round_trips
        SchemaResolver(warm_client).resolve(token_image, keyring)
        trips_known_registry = warm_client.round_trips - before

        resolver = SchemaResolver(RegistryClient())
        resolver.resolve(token_image, keyring)
        samples = []
        for _ in range(20000):
            started = time.perf_counter()
            resolver.resolve(token_image, keyring)
            samples.append(time.perf_counter() - started)
        samples.sort()
        cached_p50, cached_p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99)]

        print("schema lookup benchmark (docker-registry 2.8 on loopback)")
        print(f"  cold lookup, anonymous:        {cold_anon * 1e3:7.2f} ms   {trips_anon} round trips (manifest, config)")
        print(f"  cold lookup, Bearer token:     {cold_token * 1e3:7.2f} ms   {trips_token} round trips "
              "(challenge, token, manifest, config)")
        print(f"  cold lookup, registry known:   {'':7}      {trips_known_registry} round trips (token, manifest, config)")
        print(f"  cached lookup:                 {cached_p50 * 1e6:7.2f} us p50, {cached_p99 * 1e6:.2f} us p99 "
              f"({cold_token / cached_p50:,.0f}x faster than a cold Bearer lookup)")

        for i in range(3):
            client = RegistryClient()
            shared = SchemaResolver(client)
            barrier = threading.Barrier(100)
            image = f"{anonymous.host}/acme/concurrent-{i}:1.0"

            def lookup(_: int, shared: SchemaResolver = shared, image: str = image,
                       barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                return shared.resolve(image).digest

            started = time.perf_counter()
            with ThreadPoolExecutor(100) as pool:
                digests = set(pool.map(lookup, range(100)))
            elapsed = time.perf_counter() - started
            assert len(digests) == 1
            print(f"  100 concurrent lookups #{i + 1}:     {elapsed * 1e3:7.2f} ms   {shared.stats.fetches} fetch, "
                  f"{client.round_trips} round trips, {shared.stats.coalesced} coalesced, "
                  f"{shared.stats.cache_hits} cache hits ({elapsed / cold_anon:.1f}x one cold lookup)")
    finally:
        anonymous.stop()
        token.stop()


if __name__ == "__main__":
    main()
