"""TLS for the admission webhook when cert-manager is not used: a CA and a serving certificate that
the operator generates once, keeps in a Secret (so restarts and upgrades keep them), and whose CA
it writes into the ValidatingWebhookConfiguration's caBundle.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TLSBundle:
    ca: bytes  # PEM
    cert: bytes  # PEM
    key: bytes  # PEM, the serving certificate's private key

    def write(self, folder: Path) -> tuple[Path, Path]:
        """The files kopf's webhook server reads (it reloads them when they change)."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "tls.crt", folder / "tls.key"
        key.touch(mode=0o600)
        key.write_bytes(self.key)
        cert.write_bytes(self.cert + self.ca)
        return cert, key


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the webhook Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def generate(names: list[str], now: datetime.datetime | None = None) -> TLSBundle:
    """A new CA and a serving certificate for `names` (DNS names or IP addresses), ECDSA P-256."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cog-training-operator webhook CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TLSBundle(ca=_pem(ca), cert=_pem(cert), key=key_pem)


def usable(bundle: TLSBundle, names: list[str], now: datetime.datetime | None = None) -> bool:
    """Whether a stored bundle still serves `names` for at least RENEW_BEFORE."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        x509.load_pem_x509_certificate(bundle.ca)
        serialization.load_pem_private_key(bundle.key, password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    have |= {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    return set(names) <= have and cert.not_valid_after_utc - now > RENEW_BEFORE


def _from_secret(secret: Any) -> TLSBundle | None:
    data = (secret.data if secret is not None else None) or {}
    try:
        return TLSBundle(*(base64.b64decode(data[key]) for key in ("ca.crt", "tls.crt", "tls.key")))
    except (KeyError, ValueError):
        return None


def ensure_secret(core: client.CoreV1Api, namespace: str, name: str, names: list[str],
                  timeout: float = 30.0) -> TLSBundle:
    """The bundle kept in Secret `name`, made (or renewed) when missing, broken, expiring or for other names.

    Two operators starting at once both create; the loser of the 409 reads the winner's bundle.
    """
    try:
        secret = core.read_namespaced_secret(name, namespace, _request_timeout=timeout)
    except ApiException as error:
        if error.status != 404:
            raise
        secret = None
    bundle = _from_secret(secret)
    if bundle is not None and usable(bundle, names):
        return bundle
    bundle = generate(names)
    data = {
        "ca.crt": base64.b64encode(bundle.ca).decode(),
        "tls.crt": base64.b64encode(bundle.cert).decode(),
        "tls.key": base64.b64encode(bundle.key).decode(),
    }
    metadata: dict[str, Any] = {
        "name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "cog-training-operator"}
    }
    body: Any = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": metadata, "data": data}
    if secret is None:
        try:
            core.create_namespaced_secret(namespace, body, _request_timeout=timeout)
        except ApiException as error:
            if error.status != 409:
                raise
            return ensure_secret(core, namespace, name, names, timeout)
    else:  # a merge patch carrying the resourceVersion read: a conflicting writer makes it fail (409)
        version = secret.metadata.resource_version if secret.metadata else None
        core.patch_namespaced_secret(
            name, namespace, {"metadata": {"resourceVersion": version}, "data": data}, _request_timeout=timeout
        )
    return bundle


def patch_ca_bundle(admission: client.AdmissionregistrationV1Api, configuration: str, ca: bytes,
                    timeout: float = 30.0) -> bool:
    """Put the CA into every webhook of the ValidatingWebhookConfiguration; False when it does not exist."""
    try:
        current = admission.read_validating_webhook_configuration(configuration, _request_timeout=timeout)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    bundle = base64.b64encode(ca).decode()
    webhooks = current.webhooks or []
    if all((webhook.client_config.ca_bundle or "") == bundle for webhook in webhooks):
        return True
    # A JSON patch, guarded by each webhook's name: a merge patch would replace the whole list.
    operations: list[dict[str, Any]] = []
    for index, webhook in enumerate(webhooks):
        operations.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.name})
        operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle})
    admission.patch_validating_webhook_configuration(configuration, operations, _request_timeout=timeout)
    return True
