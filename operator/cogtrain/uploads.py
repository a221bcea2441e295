"""S3 transfers of `cogtrain train`, with the user's own AWS environment: a local `-i NAME=@FILE` up to the
destination, and `-o`'s weights down from it.

Both stream: boto3's transfer manager moves files in parts of `CHUNK` bytes, at most `CONCURRENCY` at once,
so memory stays bounded whatever the file's size. Uploads carry a SHA-256 checksum per part that the store
verifies (and keeps with the object).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024
CONCURRENCY = 4


class TransferError(Exception):
    """An S3 transfer that failed, in one sentence."""


def s3_client(environ: Mapping[str, str] | None = None) -> Any:
    """boto3's S3 client from the environment (AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)."""
    import boto3
    from botocore.config import Config

    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    config = Config(s3={"addressing_style": "path" if endpoint else "auto"},
                    retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=CONCURRENCY,
                          max_io_queue=CONCURRENCY * 2)


def _sentence(uri: str, error: Exception) -> TransferError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return TransferError(f"{uri}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a store other than AWS)")
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return TransferError(f"{uri}: {details.get('Code', 'error')}: "
                             f"{details.get('Message') or 'the store refused the request'}")
    return TransferError(f"{uri}: {error}")


def _errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, Boto3Error


def upload(client: Any, source: Path, bucket: str, key: str) -> str:
    """Upload a local file (multipart above CHUNK, SHA-256 checksummed); its s3:// URI."""
    uri = f"s3://{bucket}/{key}"
    try:
        client.upload_file(str(source), bucket, key, Config=_transfer_config(),
                           ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    except _errors() as error:
        raise _sentence(uri, error) from None
    except OSError as error:  # the file went away or became unreadable after it was checked
        raise TransferError(f"{uri}: cannot read {source}: {error.strerror or error}") from None
    return uri


def download(client: Any, uri: str, target: Path) -> None:
    """Download s3://BUCKET/KEY to `target` (through a temporary name beside it: no half file is left as it)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    try:
        client.download_file(bucket, key, str(partial), Config=_transfer_config())
    except _errors() as error:
        partial.unlink(missing_ok=True)
        raise _sentence(uri, error) from None
    except BaseException:  # a local failure (disk full, Ctrl-C): no half file left behind
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
