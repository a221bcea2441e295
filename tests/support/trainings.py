"""Trainings of the test registry's models, and taking one through a successful run on the simulated cluster."""

from __future__ import annotations

from typing import Any

from support.cluster_sim import Cluster
from support.registries import Registries

DATA = "https://example.com/data.zip"


def model(registries: Registries, name: str = "training-output") -> str:
    return f"{registries.anonymous.host}/acme/{name}:1.0"


def spec(registries: Registries, **extra: Any) -> dict[str, Any]:
    return {"model": model(registries), "input": {"train_data": DATA, "seed": 3}, **extra}


def succeed(cluster: Cluster, name: str, report: dict[str, Any]) -> dict[str, Any]:
    job = cluster.job(name)
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase(name, "Running")
    cluster.finish_pod(pod, 0, report)
    cluster.complete_job(job)
    return cluster.wait_phase(name, "Succeeded")
