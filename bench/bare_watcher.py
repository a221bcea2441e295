"""The baseline of bench/operator_create.py: the least a client must do to turn Trainings into Jobs.

A watch on the Trainings of one namespace and, for each new one (no `status.jobName`, not finished), in a
thread pool of kopf's size (16): read its ServiceAccount (the pull secrets), resolve the model's schema through
the same cached resolver (a real registry), check the inputs, build the Job, create it, and write the same
status the operator writes. No kopf: no progress or diff-base storage, no indexes, no per-object workers, and
nothing followed after the Job. Same `kubernetes` client and connection pool size as `cogtrain operator`.

Run by the benchmark: .venv/bin/python bench/bare_watcher.py --kubeconfig FILE --namespace NS
"""

from __future__ import annotations

import argparse
import datetime
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from cogtrain import api
from cogtrain.checks import check
from cogtrain.contract import Reason
from cogtrain.jobs import build_job
from cogtrain.pull_secrets import read_pull_secrets
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from cogtrain.status import Validation, status_patch

GROUP, VERSION, PLURAL = api.GROUP, api.VERSION, api.PLURAL
FINISHED = {"Succeeded", "Failed", "Canceled"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--driver-image", default="example.com/cogtrain:bench")
    args = parser.parse_args()

    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = 32  # as `cogtrain operator`
    api_client = client.ApiClient(configuration)
    core, batch, custom = client.CoreV1Api(api_client), client.BatchV1Api(api_client), client.CustomObjectsApi(api_client)
    settings = Settings(driver_image=args.driver_image)
    resolver = SchemaResolver(RegistryClient(timeout=10))
    namespace = args.namespace
    seen: set[str] = set()
    lock = threading.Lock()

    def handle(body: dict[str, Any]) -> None:
        try:
            training = api.Training.model_validate(body)
            spec = training.spec
            keyring, _ = read_pull_secrets(core, namespace, [], spec.service_account_name or "default", 30)
            model = resolver.resolve(spec.model, keyring)
            checked = check(training, model, settings)
            manifest = build_job(training, model.pinned, checked.input, settings, checked.secret_list_names)
            batch.create_namespaced_job(namespace, manifest, _request_timeout=30)
            message = f"created Job {manifest['metadata']['name']} running {model.pinned}"
            fields = status_patch(
                api.Phase.PENDING, Reason.JOB_CREATED, message, training.metadata.generation,
                (body.get("status") or {}).get("conditions") or [], datetime.datetime.now(datetime.UTC),
                Validation(True, Reason.INPUTS_VALID, f"the inputs match the training schema of {model.pinned}"),
                imageDigest=model.pinned, jobName=manifest["metadata"]["name"])
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, training.metadata.name,
                                                         {"status": fields}, _request_timeout=30)
        except Exception as error:  # noqa: BLE001  (a baseline: say it and go on)
            print(f"bare watcher: {body['metadata']['name']}: {error!r}", file=sys.stderr, flush=True)

    pool = ThreadPoolExecutor(args.workers)

    def offer(body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        if status.get("jobName") or status.get("phase") in FINISHED:
            return
        with lock:
            if body["metadata"]["uid"] in seen:
                return
            seen.add(body["metadata"]["uid"])
        pool.submit(handle, body)

    while True:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        for item in listing.get("items") or []:
            offer(item)
        version = listing["metadata"]["resourceVersion"]
        print("bare watcher: listed", len(listing.get("items") or []), flush=True)
        try:
            while True:
                stream = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                                              resource_version=version, timeout_seconds=300,
                                              allow_watch_bookmarks=True)
                for event in stream:
                    obj = event["object"]
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] == "ADDED":
                        offer(obj)
        except ApiException as error:
            if error.status != 410:
                raise
            # the watch is too old: list again


if __name__ == "__main__":
    sys.exit(main())
