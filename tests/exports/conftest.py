"""A real S3 HTTP endpoint for the export storage tests: moto's server mode in its own
process, plus a small signing gateway in front of it for presigned links.

moto serves presigned GETs without checking their signature or expiry (moto 5.2.5
`S3Response._key_response` only compares the response-* parameters), so an expired link
would still download. The gateway checks both from the SigV4 specification (written
here, not taken from botocore, so it is an independent check) and forwards valid
requests to moto unchanged.

Also `broker_down`: the Celery app pointed at a port where nothing listens.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest

# Fake credentials for moto; they guard nothing.
FAKE_ACCESS_KEY = "AKIAEXPORTSTEST00001"
FAKE_SECRET_KEY = "exports-test-secret-not-a-real-key"
REGION = "eu-west-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answers(url: str, process: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                raise RuntimeError(f"moto server exited with {process.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our http:// endpoint
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer on {url} within 60 s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server as a separate process; yields its endpoint URL."""
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY}
    with tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False) as log:
        log_path = log.name
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(f"{endpoint}/moto-api/", process, log_path)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        os.unlink(log_path)


# --- the signing gateway ---------------------------------------------------------------

def _sigv4_signature(*, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                     secret: str) -> str:
    """The SigV4 signature of a presigned request (AWS "Authenticating Requests: Using
    Query Parameters"), from the query parameters other than X-Amz-Signature."""
    params = dict(query)
    canonical_query = "&".join(
        f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}"
        for key, value in sorted(query) if key != "X-Amz-Signature")
    signed = params["X-Amz-SignedHeaders"].split(";")
    canonical_headers = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    canonical_request = "\n".join([method, path, canonical_query, canonical_headers,
                                   params["X-Amz-SignedHeaders"], "UNSIGNED-PAYLOAD"])
    _, day, region, service, terminal = params["X-Amz-Credential"].split("/")
    scope = f"{day}/{region}/{service}/{terminal}"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                         hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, terminal):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _refusal(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


def _gateway_handler(upstream: str, secret: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _refuse(self, code: str, message: str) -> None:
            body = _refusal(code, message)
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _check(self) -> tuple[str, str] | None:
            parts = urlsplit(self.path)
            query = parse_qsl(parts.query, keep_blank_values=True)
            params = dict(query)
            if "X-Amz-Signature" not in params:
                return None  # not presigned: moto applies the object's ACL
            try:
                signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                expires = int(params["X-Amz-Expires"])
                headers = {name.lower(): value for name, value in self.headers.items()}
                expected = _sigv4_signature(method=self.command, path=parts.path, query=query,
                                            headers=headers, secret=secret)
            except (KeyError, ValueError):
                return ("AuthorizationQueryParametersError", "Malformed presigned URL")
            if datetime.now(UTC) > signed_at + timedelta(seconds=expires):
                return ("AccessDenied", "Request has expired")
            if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
                return ("SignatureDoesNotMatch", "The request signature we calculated does not match")
            return None

        def _forward(self) -> None:
            refusal = self._check()
            if refusal is not None:
                self._refuse(*refusal)
                return
            connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
            try:
                connection.request(self.command, self.path, headers={"Host": target.netloc})
                response = connection.getresponse()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in {"connection", "transfer-encoding", "keep-alive", "server", "date"}:
                        self.send_header(name, value)
                self.end_headers()
                while chunk := response.read(64 * 1024):
                    self.wfile.write(chunk)
            finally:
                connection.close()

        do_GET = _forward  # http.server's handler names
        do_HEAD = _forward

    return Handler


@pytest.fixture(scope="session")
def s3_gateway(s3_server: str) -> Iterator[str]:
    """A GET/HEAD gateway to moto that refuses expired or badly signed presigned URLs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _gateway_handler(s3_server, FAKE_SECRET_KEY))
    thread = threading.Thread(target=server.serve_forever, name="s3-gateway", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- settings --------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Target:
    endpoint: str
    bucket: str
    client: Any  # boto3 S3 client talking to moto directly

    def object_url(self, key: str) -> str:
        return f"{self.endpoint}/{self.bucket}/{quote(key)}"


@pytest.fixture
def s3_settings(settings: Any, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Target:
    """A fresh private bucket on the moto server, and EXPORTS_S3_* pointing at it."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_S3_ACCESS_KEY_ID",
                 "AWS_S3_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    # Never read a developer's ~/.aws files.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)

    bucket = f"suifang-exports-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name=REGION,
                          aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})

    settings.EXPORTS_S3_BUCKET = bucket
    settings.EXPORTS_S3_REGION = REGION
    settings.EXPORTS_S3_ENDPOINT_URL = s3_server
    settings.EXPORTS_S3_ADDRESSING_STYLE = "path"  # no bucket subdomains on 127.0.0.1
    settings.EXPORTS_S3_DEFAULT_ACL = "private"
    settings.EXPORTS_S3_ENCRYPTION = True
    settings.EXPORTS_S3_FILE_OVERWRITE = False
    settings.EXPORTS_S3_CHECKSUMS = "when_supported"
    return S3Target(endpoint=s3_server, bucket=bucket, client=client)


@pytest.fixture
def broker_down():  # type: ignore[no-untyped-def]
    """The Celery app pointed at a port where nothing listens (a broker that is down),
    then back: real connection attempts, refused by the operating system."""
    from config.celery import app

    def switch(url: str) -> None:
        app.conf.broker_url = url
        app.conf.broker_write_url = None
        app._pool = None
        app.amqp._producer_pool = None

    saved = app.conf.broker_url
    switch("redis://127.0.0.1:9/0")
    yield
    switch(saved)
