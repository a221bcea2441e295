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
import stat
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from .contract import EXIT_CODES, SOURCE_ENV_PREFIX, Reason, StorageRef


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
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = "/".join(p for p in prefix.split("/") if p)
        self.uri_prefix = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.log = log
        self.client = s3_client(os.environ if environ is None else environ)
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
        return _unwritable(self.uri_prefix + "/", _s3_why(error, self.client, "destinationSecretRef"))

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


def s3_client(env: Mapping[str, str]) -> Any:
    """An S3 client from the AWS SDK's settings in `env` (contract.S3_ENV); none set: boto3's own chain."""
    import boto3
    from botocore.config import Config

    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    return session.client(
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


def _s3_why(error: Exception, client: Any, secret_field: str) -> str:
    """One sentence for a failed S3 call: the store's error code and message, never a credential."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return f"no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the Secret named by {secret_field}"
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", "error"))
        # A HEAD request's answer has no body: its status is all there is.
        code = {"404": "NoSuchKey", "403": "AccessDenied"}.get(code, code)
        message = details.get("Message")
        if message in (None, "", "Not Found", "Forbidden"):
            message = {"NoSuchKey": "no such object", "AccessDenied": "access denied"}.get(
                code, "the store refused the request")
        return f"{code}: {message}"
    cause = getattr(error, "last_exception", None) or error.__cause__ or error
    return str(cause).replace(client.meta.endpoint_url or "", "the endpoint ")


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


# File inputs from cluster storage (docs/driver.md, "File inputs from cluster storage").


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class InputSource(Protocol):
    """A file input in cluster storage, opened anew each time the model server fetches it."""

    uri: str

    def check(self) -> None:
        """Raise DriverError (InputRejected) unless the file can be read now."""

    def open(self) -> tuple[Readable, int]:
        """The file's content and its size in bytes; DriverError (InputRejected) if it cannot be read."""


def _unreadable(uri: str, why: str) -> DriverError:
    return DriverError(Reason.INPUT_REJECTED, f"cannot read {uri}: {why}")


def _opened_path(fd: int, fallback: str) -> str:
    """Where an open file really is: the kernel's own answer (no race with a symbolic link changed after the
    open), else the resolved name."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


class ClaimFile:
    """A file on a mounted claim: `root` is the claim's mount, `path` its relative, checked path.

    The file actually opened must lie inside the mount: a symbolic link on the claim that leads out of
    it (to the driver's own files) is refused, judged from the open file itself. Only a regular file is
    read (opening a FIFO does not wait: O_NONBLOCK).
    """

    def __init__(self, root: Path, ref: StorageRef) -> None:
        self.root, self.ref, self.uri = root, ref, str(ref)

    def open(self) -> tuple[Readable, int]:
        real_root = os.path.realpath(self.root)
        target = os.path.join(real_root, *self.ref.parts)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as error:
            raise _unreadable(self.uri, str(error.strerror or error)) from None
        try:
            opened = _opened_path(fd, target)
            if os.path.commonpath([opened, real_root]) != real_root:
                raise _unreadable(self.uri, "it leads outside the claim (a symbolic link); only files on the claim "
                                  "are read")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise _unreadable(self.uri, f"it is {kind}")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0), info.st_size
        except BaseException:
            os.close(fd)
            raise

    def check(self) -> None:
        stream, _ = self.open()
        stream.close()


class _S3Body:
    """An object's streaming body whose failures are OSErrors, as a socket's or a file's are."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self.body.read(None if size < 0 else size)
        except Exception as error:  # noqa: BLE001  (botocore's and urllib3's own errors)
            raise OSError(f"the object's download broke off: {type(error).__name__}: {error}") from None
        return data

    def close(self) -> None:
        self.body.close()


class S3Object:
    """An object in an S3-compatible store, read with the client given (the credentials the Job passes)."""

    def __init__(self, client: Any, ref: StorageRef, secret_field: str) -> None:
        self.client, self.ref, self.uri, self.secret_field = client, ref, str(ref), secret_field

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as error:
            raise _unreadable(self.uri, _s3_why(error, self.client, self.secret_field)) from None

    def check(self) -> None:
        with self._reading():
            self.client.head_object(Bucket=self.ref.root, Key=self.ref.path)

    def open(self) -> tuple[Readable, int]:
        with self._reading():
            answer = self.client.get_object(Bucket=self.ref.root, Key=self.ref.path)
        return _S3Body(answer["Body"]), int(answer["ContentLength"])


class InputFiles:
    """Where one training's s3:// and pvc:// file inputs are read.

    pvc://CLAIM/PATH: the claim mounted read-only at `inputs_root/CLAIM`, or the destination's own claim
    where it is mounted (`destination_root`). s3://BUCKET/KEY: with the settings the Job passes under
    contract.SOURCE_ENV_PREFIX (spec.inputSecretRef), else the destination's (AWS_*), else boto3's chain.
    """

    def __init__(self, destination: str, destination_root: Path, inputs_root: Path,
                 environ: Mapping[str, str] | None = None) -> None:
        claim = destination[len("pvc://"):].split("/", 1)[0]
        self.destination_claim = claim if destination.startswith("pvc://") else None
        self.destination_root, self.inputs_root = destination_root, inputs_root
        self.environ = os.environ if environ is None else environ
        self._client: Any = None

    def _s3(self) -> tuple[Any, str]:
        own = {k[len(SOURCE_ENV_PREFIX):]: v for k, v in self.environ.items() if k.startswith(SOURCE_ENV_PREFIX)}
        if self._client is None:
            self._client = s3_client(own or self.environ)
        return self._client, "inputSecretRef" if own else "destinationSecretRef"

    def source(self, ref: StorageRef) -> InputSource:
        if ref.scheme == "s3":
            client, secret_field = self._s3()
            return S3Object(client, ref, secret_field)
        root = self.destination_root if ref.root == self.destination_claim else self.inputs_root / ref.root
        return ClaimFile(root, ref)
