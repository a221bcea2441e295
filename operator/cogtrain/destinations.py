"""Where the driver stores output files: a folder (a mounted PVC, `./weights`) or an S3-compatible bucket.

Both kinds are checked with a real write before the training starts (`check`), so a destination
that refuses writes fails the training in seconds instead of after hours of GPU time, and both
give files safe, unique names: a model cannot choose a path outside its destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from .contract import EXIT_CODES, Reason


class DriverError(Exception):
    """A training that did not succeed: its reason, and the exit code the contract gives that reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = EXIT_CODES[reason]


def safe_name(name: str) -> str:
    """A model-chosen file name made safe: no directories, no traversal, no odd characters."""
    base = urllib.parse.unquote(name).replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or "output"


def _unwritable(uri: str, why: str) -> DriverError:
    return DriverError(Reason.DESTINATION_UNWRITABLE, f"cannot write to the destination {uri}: {why}")


class Destination(Protocol):
    uri_prefix: str

    def check(self) -> None:
        """Raise DriverError unless a file can be written here now."""

    def put(self, source: Path, name: str) -> str:
        """Store `source` (which is consumed) under a safe, unique form of `name`; return its URI."""


class _Names:
    """Unique safe names within one destination: `w.bin`, `w-2.bin`, ..."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self.lock = threading.Lock()

    def take(self, name: str, exists: Any = lambda _: False) -> str:
        base = safe_name(name)
        stem, dot, suffix = base.partition(".")
        candidate, counter = base, 1
        while candidate in self._taken or exists(candidate):
            counter += 1
            candidate = f"{stem}-{counter}{dot}{suffix}"
        self._taken.add(candidate)
        return candidate


class LocalDestination:
    """A folder (a mounted PVC, or ./weights for `cogtrain run`)."""

    def __init__(self, folder: Path, uri_prefix: str) -> None:
        self.folder = folder
        self.uri_prefix = uri_prefix.rstrip("/")
        self._names = _Names()

    def check(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".cogtrain-check-"):
                pass
        except OSError as error:
            raise _unwritable(self.uri_prefix + "/", str(error.strerror or error)) from None

    def put(self, source: Path, name: str) -> str:
        with self._names.lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                target = self.folder / self._names.take(name, lambda n: (self.folder / n).exists())
                shutil.move(str(source), target)
            except OSError as error:
                raise _unwritable(self.uri_prefix + "/", str(error.strerror or error)) from None
        return f"{self.uri_prefix}/{target.name}"


MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class S3Destination:
    """s3://BUCKET/PREFIX on AWS or any S3-compatible store (MinIO, Ceph, R2, moto).

    Large files go up in parts (at most `concurrency` parts in memory at once). Every part carries
    a SHA-256 checksum that the store verifies, and each object records the whole file's SHA-256
    in its `sha256` metadata, which the driver also logs.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        environ: Mapping[str, str] | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
        concurrency: int = 4,
        log: TextIO = sys.stderr,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        env = os.environ if environ is None else environ
        self.bucket = bucket
        self.prefix = "/".join(p for p in prefix.split("/") if p)
        self.uri_prefix = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.log = log
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        self.client = session.client(
            "s3",
            endpoint_url=endpoint,
            # S3-compatible stores want path-style addressing; AWS itself picks what the bucket allows.
            config=Config(
                s3={"addressing_style": "path" if endpoint else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunk,
            max_concurrency=concurrency,
            use_threads=concurrency > 1,
        )
        self._names = _Names()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, error: Exception) -> DriverError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(error, NoCredentialsError):
            why = (
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "in the Secret named by destinationSecretRef"
            )
        elif isinstance(error, ClientError):
            details = error.response.get("Error", {})
            why = f"{details.get('Code', 'error')}: {details.get('Message') or 'the store refused the request'}"
        else:
            cause = getattr(error, "last_exception", None) or error.__cause__ or error
            why = str(cause).replace(self.client.meta.endpoint_url or "", "the endpoint ")
        return _unwritable(self.uri_prefix + "/", why)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Any failure of the S3 calls inside becomes one DestinationUnwritable sentence."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise self._error(error) from None

    def check(self) -> None:
        key = self._key(".cogtrain-write-check")
        with self._writing():
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", ChecksumAlgorithm="SHA256")
        with contextlib.suppress(DriverError), self._writing():
            self.client.delete_object(Bucket=self.bucket, Key=key)  # write-only credentials are fine

    def put(self, source: Path, name: str) -> str:
        with self._names.lock:
            key = self._key(self._names.take(name))
        digest = _sha256(source)
        size = source.stat().st_size
        with self._writing():
            self.client.upload_file(
                str(source), self.bucket, key, Config=self.transfer,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}},
            )
        source.unlink(missing_ok=True)
        uri = f"s3://{self.bucket}/{key}"
        self.log.write(f"stored {uri} ({size} bytes, sha256 {digest})\n")
        self.log.flush()
        return uri


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def destination_for(
    uri: str, root: Path, namespace: str, name: str, environ: Mapping[str, str] | None = None
) -> Destination:
    """The destination of one Training: files land under <uri>/<namespace>/<training>/.

    pvc://CLAIM/SUB/PATH is the claim mounted at `root`; s3://BUCKET/PREFIX takes its endpoint,
    region and credentials from the environment variables named in jobs.S3_ENV.
    """
    for scheme in ("pvc://", "s3://"):
        if uri.startswith(scheme):
            head, _, sub = uri[len(scheme) :].partition("/")
            break
    else:
        raise DriverError(
            Reason.DESTINATION_UNWRITABLE,
            f"the destination {uri or '(none)'} is not supported (use s3://BUCKET/PREFIX or pvc://CLAIM/PATH)",
        )
    parts = [p for p in sub.split("/") if p] + [namespace, name]
    if not head or any(part in (".", "..") for part in parts):
        raise DriverError(
            Reason.DESTINATION_UNWRITABLE,
            f"the destination {uri} needs a {'bucket' if scheme == 's3://' else 'claim'} and no . or .. in its path",
        )
    if scheme == "s3://":
        return S3Destination(head, "/".join(parts), environ)
    return LocalDestination(root.joinpath(*parts), "pvc://" + "/".join([head, *parts]))
