"""A real S3-compatible endpoint on loopback: moto in server mode, in its own process, with IAM enforced.

Two IAM users are made before authentication is switched on: `writer` may do anything with S3,
`reader` may only read. Every later request must be signed with one of their keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import boto3
import requests

from support.cogserver import free_port

BUCKET = "trainings"
_SETUP_ACTIONS = 7  # create_bucket + 2 x (create_user, create_access_key, put_user_policy)


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str
    writer: dict[str, str]
    reader: dict[str, str]

    def env(self, who: str = "writer") -> dict[str, str]:
        """The AWS_* settings a destination Secret would hold."""
        keys = self.writer if who == "writer" else self.reader
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", **keys}

    def client(self, who: str = "writer") -> object:
        keys = self.writer if who == "writer" else self.reader
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _user(iam: object, name: str, actions: list[str]) -> dict[str, str]:
    iam.create_user(UserName=name)  # type: ignore[attr-defined]
    key = iam.create_access_key(UserName=name)["AccessKey"]  # type: ignore[attr-defined]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-s3", PolicyDocument=json.dumps(policy))  # type: ignore[attr-defined]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def start_s3() -> S3Server:
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_ACTIONS))
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except requests.RequestException:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **setup)
    writer = _user(iam, "writer", ["s3:*"])
    reader = _user(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
    return S3Server(process, endpoint, writer, reader)
