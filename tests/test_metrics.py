"""The operator's Prometheus endpoint, scraped over HTTP while the operator runs Trainings for real."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.cogserver import free_port
from support.k8s_server import KubeAPI
from support.metrics import scrape
from support.registries import Registries
from support.trainings import spec, succeed

pytestmark = pytest.mark.integration


@pytest.fixture()
def metrics_operator(kube: KubeAPI) -> Iterator[tuple[RunningOperator, int]]:
    port = free_port()
    runtime = Runtime(settings=Settings(driver_image="example.com/cogtrain:test", default_destination="s3://w/"),
                      api_client=kube.api_client, resolver=SchemaResolver(RegistryClient(timeout=2)),
                      metrics_port=port)
    operator = RunningOperator(kube, runtime).start()
    yield operator, port
    operator.stop()


def test_metrics_follow_trainings_through_their_phases(metrics_operator: tuple[RunningOperator, int],
                                                       kube: KubeAPI, registries: Registries) -> None:
    _, port = metrics_operator
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
