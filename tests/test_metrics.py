"""The operator's Prometheus endpoint, scraped over HTTP while the operator runs Trainings for real."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogtrain.crd import training_crd
from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.cogserver import free_port
from support.k8s_server import KubeAPI, start_kube_api
from support.metrics import scrape
from support.registries import Registries
from support.trainings import spec, succeed

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_kube(tmp_path: Path) -> Iterator[KubeAPI]:
    """An API server of this module's own: the gauges count every Training the operator sees, and the shared
    one holds what earlier tests left there, still being picked up when the first scrape is taken."""
    kubeconfig = os.environ.get("KUBECONFIG")
    api = start_kube_api(tmp_path, [training_crd()])
    yield api
    api.stop()
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = kubeconfig


@pytest.fixture()
def metrics_operator(own_kube: KubeAPI) -> Iterator[tuple[RunningOperator, int]]:
    port = free_port()
    runtime = Runtime(settings=Settings(driver_image="example.com/cogtrain:test", default_destination="s3://w/"),
                      api_client=own_kube.api_client, resolver=SchemaResolver(RegistryClient(timeout=2)),
                      metrics_port=port)
    operator = RunningOperator(own_kube, runtime).start()
    yield operator, port
    operator.stop()


def test_metrics_follow_trainings_through_their_phases(metrics_operator: tuple[RunningOperator, int],
                                                       registries: Registries) -> None:
    operator, port = metrics_operator
    kube = operator.kube
    cluster = Cluster(kube, f"ns-{uuid.uuid4().hex[:8]}")
    before = scrape(port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    cluster.create_training("good", spec(registries))
    succeed(cluster, "good", {"status": "succeeded", "output": "s3://w/ns/good/weights.bin"})
    cluster.create_training("bad", spec(registries, input={"train_data": "https://x/d.zip", "seed": "seven"}))
    cluster.wait_phase("bad", "Failed")
    after = scrape(port)

    assert delta("cogtrain_training_time_to_start_seconds_count") == 1
    assert delta("cogtrain_training_time_to_completion_seconds_count", phase="Succeeded") == 1
    assert delta("cogtrain_training_failures_total", reason="InvalidInput") == 1
    assert delta("cogtrain_trainings", phase="Succeeded") == 1 and delta("cogtrain_trainings", phase="Failed") == 1
    assert delta("cogtrain_registry_lookups_total") == 2, "one schema lookup per Training"
    assert delta("cogtrain_registry_cache_hits_total") >= 1, "the second Training's model came from the cache"
    assert after[("cogtrain_training_time_to_start_seconds_bucket", (("le", "+Inf"),))] >= 1

    # Deleted Trainings leave the phase gauge.
    kube.custom.delete_namespaced_custom_object("cog.run", "v1alpha1", cluster.namespace, "trainings", "bad")
    wait_for(lambda: scrape(port).get(("cogtrain_trainings", (("phase", "Failed"),)), 0)
             == after[("cogtrain_trainings", (("phase", "Failed"),))] - 1 or None, what="the gauge to drop")
