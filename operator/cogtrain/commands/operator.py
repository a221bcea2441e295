"""`cogtrain operator`: run the operator (in a cluster, or against your kubeconfig)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import kopf
from kubernetes import client, config

from .. import handlers
from ..settings import settings_from
from ..webhook import WebhookConfig
from . import EXIT_OK, UsageError

DESCRIPTION = (
    "Watch Trainings and run them as Jobs. Uses KUBECONFIG / ~/.kube/config, or the in-cluster "
    "service account. Flags follow `kopf run`; each setting can also come from COGTRAIN_* variables."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch Trainings in every namespace")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; glob patterns as in kopf)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=None,
        help="do not coordinate with other instances (no kopf peering)",
    )
    parser.add_argument("--peering", metavar="NAME", help="the kopf peering object shared by instances")
    parser.add_argument("--priority", type=int, help="this instance's peering priority")
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable; also COGTRAIN_INSECURE_REGISTRIES)",
    )
    parser.add_argument("--driver-image", help="the image running `cogtrain drive` (COGTRAIN_DRIVER_IMAGE)")
    parser.add_argument("--gpu-resource-name", help="default GPU resource, e.g. nvidia.com/gpu")
    parser.add_argument("--default-destination", help="where outputs go when a Training names no destination")
    parser.add_argument(
        "--default-destination-secret",
        help="Secret (in each Training's namespace) with s3:// settings, when a Training names none",
    )
    parser.add_argument("--registry-timeout", type=float, help="seconds to wait for a registry (default 10)")
    webhook = parser.add_argument_group("admission webhook (docs/install.md)")
    webhook.add_argument("--webhook-port", type=int, help="serve the validating webhook over HTTPS on this port")
    webhook.add_argument("--webhook-service", default="cog-training-operator-webhook",
                         help="the webhook's Service, in POD_NAMESPACE: the certificate's DNS names")
    webhook.add_argument("--webhook-cert-dir", type=Path, help="tls.crt and tls.key from cert-manager (reloaded)")
    webhook.add_argument("--webhook-secret", help="self-signed: the Secret (in POD_NAMESPACE) to keep them in")
    webhook.add_argument("--webhook-configuration", help="self-signed: the ValidatingWebhookConfiguration to patch")
    webhook.add_argument("--webhook-failure-policy", choices=["Ignore", "Fail"], default="Ignore",
                         help="when the model's schema cannot be read in time: admit with a warning, or deny")
    webhook.add_argument("--webhook-lookup-timeout", type=float, default=3.0,
                         help="seconds a review may spend reading a model's schema (default 3)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at :PORT/metrics")


def run(args: argparse.Namespace) -> int:
    """Run the operator until interrupted: kopf with this project's handlers."""
    if not args.all_namespaces and not args.namespace:
        raise UsageError("give --all-namespaces (-A) or one --namespace NS per namespace to watch")
    kopf.configure(
        verbose=args.verbose, debug=args.debug, quiet=args.quiet, log_format=kopf.LogFormat[args.log_format.upper()]
    )
    if not (args.verbose or args.debug):
        handlers.quiet_event_handlers()
    try:
        config.load_config()  # type: ignore[no-untyped-call]  # KUBECONFIG, ~/.kube/config, or in-cluster
    except config.ConfigException as error:
        raise UsageError(f"no Kubernetes configuration: {error}") from None
    settings = settings_from(
        os.environ,
        insecure_registries=args.insecure_registry,
        driver_image=args.driver_image,
        gpu_resource_name=args.gpu_resource_name,
        default_destination=args.default_destination,
        default_destination_secret=args.default_destination_secret,
        registry_timeout=args.registry_timeout,
    )
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # kopf runs up to 16 handlers at once
    runtime = handlers.Runtime.create(
        settings, client.ApiClient(configuration), webhook_config=webhook_config(args, os.environ),
        metrics_port=args.metrics_port or None,
    )
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
        memo=kopf.Memo(runtime=runtime),
    )
    return EXIT_OK


def webhook_config(args: argparse.Namespace, environ: Mapping[str, str]) -> WebhookConfig | None:
    """The admission webhook's settings from the flags; None when --webhook-port is not given."""
    if not args.webhook_port:
        return None
    if not (args.webhook_cert_dir or args.webhook_secret):
        raise UsageError("--webhook-port needs --webhook-cert-dir (cert-manager) or --webhook-secret (self-signed)")
    return WebhookConfig(
        port=args.webhook_port,
        service=args.webhook_service,
        namespace=environ.get("POD_NAMESPACE") or "default",
        cert_dir=args.webhook_cert_dir,
        secret=args.webhook_secret,
        configuration=args.webhook_configuration,
        failure_policy=args.webhook_failure_policy,
        lookup_timeout=args.webhook_lookup_timeout,
    )
