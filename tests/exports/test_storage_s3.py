"""Export storage against a real S3 HTTP endpoint (moto's server, see conftest.py)."""

from __future__ import annotations

import hashlib
import io
import random
import time
import tracemalloc
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage
from storages.backends.s3 import S3Storage

from exports.storage import export_storage, presigned_download_url
from tests.exports.conftest import S3Target


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _save(key: str, data: bytes) -> str:
    return str(export_storage().save(key, File(io.BytesIO(data), name=key.rsplit("/", 1)[-1])))


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - http:// test endpoints
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def _disposition(headers: dict[str, str]) -> tuple[str, str | None]:
    message = Message()
    message["Content-Disposition"] = headers["content-disposition"]
    return message.get_content_disposition() or "", message.get_filename()


def test_export_storage_is_private_encrypted_s3(s3_settings: S3Target) -> None:
    storage = export_storage()
    assert isinstance(storage, S3Storage)
    assert storage.bucket_name == s3_settings.bucket
    assert storage.endpoint_url == s3_settings.endpoint
    assert storage.default_acl == "private"
    assert storage.object_parameters == {"ServerSideEncryption": "AES256"}
    assert storage.querystring_auth is True
    assert storage.querystring_expire == 300
    assert storage.file_overwrite is False
    assert storage.location == ""
    assert export_storage() is storage  # one instance (boto3 sessions) per configuration


@pytest.mark.parametrize("size", [70_000, 9 * 1024 * 1024], ids=["single-put", "multipart"])
def test_saved_file_reads_back_encrypted_and_private(s3_settings: S3Target, size: int) -> None:
    key = "exports/tenant_alpha/17/dm.xpt"
    data = _payload(size, seed=size)

    assert _save(key, data) == key
    stored = s3_settings.client.get_object(Bucket=s3_settings.bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ServerSideEncryption"] == "AES256"
    grants = s3_settings.client.get_object_acl(Bucket=s3_settings.bucket, Key=key)["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]
    assert all(grant["Grantee"].get("Type") == "CanonicalUser" for grant in grants)

    status, _, _ = _get(s3_settings.object_url(key))
    assert status == 403


def test_unsigned_get_of_a_public_object_succeeds_so_403_means_private(s3_settings: S3Target) -> None:
    # Control for the test above: the endpoint does serve anonymous GETs when allowed.
    s3_settings.client.put_object(Bucket=s3_settings.bucket, Key="public/probe.txt", Body=b"probe",
                                  ACL="public-read")
    assert _get(s3_settings.object_url("public/probe.txt"))[0::2] == (200, b"probe")


def test_encryption_can_be_turned_off(s3_settings: S3Target, settings: Any) -> None:
    settings.EXPORTS_S3_ENCRYPTION = False
    _save("exports/tenant_alpha/3/ae.xpt", b"plain")
    head = s3_settings.client.head_object(Bucket=s3_settings.bucket, Key="exports/tenant_alpha/3/ae.xpt")
    assert "ServerSideEncryption" not in head


def test_existing_key_is_not_overwritten_unless_asked(s3_settings: S3Target, settings: Any) -> None:
    key = "exports/tenant_alpha/5/vs.xpt"
    assert _save(key, b"first") == key
    second = _save(key, b"second")
    assert second != key
    assert second.startswith("exports/tenant_alpha/5/vs")
    body = s3_settings.client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read()
    assert body == b"first"

    # The services' retry path: delete, then save under the same key.
    export_storage().delete(key)
    assert _save(key, b"retry") == key

    settings.EXPORTS_S3_FILE_OVERWRITE = True
    assert _save(key, b"forced") == key
    assert s3_settings.client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read() == b"forced"


def test_keys_of_two_tenants_are_kept_apart(s3_settings: S3Target) -> None:
    files = {"exports/tenant_alpha/1/dm.xpt": b"alpha rows", "exports/tenant_beta/1/dm.xpt": b"beta rows"}
    for key, data in files.items():
        assert _save(key, data) == key

    listed = s3_settings.client.list_objects_v2(Bucket=s3_settings.bucket, Prefix="exports/")
    assert sorted(item["Key"] for item in listed["Contents"]) == sorted(files)
    for key, data in files.items():
        assert s3_settings.client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read() == data
        with export_storage().open(key, "rb") as handle:
            assert handle.read() == data


@pytest.fixture
def via_gateway(s3_settings: S3Target, s3_gateway: str, settings: Any) -> S3Target:
    """The same bucket, reached through the gateway that checks presigned signatures."""
    settings.EXPORTS_S3_ENDPOINT_URL = s3_gateway
    return s3_settings


@pytest.mark.parametrize("filename", ["dm.xpt", "随访 dm (v2).xpt"])
def test_presigned_url_downloads_the_bytes_as_an_attachment(via_gateway: S3Target, filename: str) -> None:
    key = "exports/tenant_alpha/9/dm.xpt"
    data = _payload(200_000, seed=9)
    via_gateway.client.put_object(Bucket=via_gateway.bucket, Key=key, Body=data)

    url = presigned_download_url(export_storage(), key, filename=filename)
    assert url is not None
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]

    status, headers, body = _get(url)
    assert status == 200
    assert body == data
    assert _disposition(headers) == ("attachment", filename)
    assert headers["content-type"] == "application/octet-stream"


def test_presigned_url_cannot_be_edited(via_gateway: S3Target) -> None:
    key = "exports/tenant_alpha/9/dm.xpt"
    via_gateway.client.put_object(Bucket=via_gateway.bucket, Key=key, Body=b"rows")
    url = presigned_download_url(export_storage(), key, filename="dm.xpt")
    assert url is not None
    parts = urlsplit(url)
    other_tenant = urlunsplit(parts._replace(path=parts.path.replace("tenant_alpha", "tenant_beta")))
    longer = urlunsplit(parts._replace(query=parts.query.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")))

    assert _get(url)[0] == 200
    assert _get(other_tenant)[0] == 403
    assert _get(longer)[0] == 403


def test_expired_presigned_url_is_refused(via_gateway: S3Target) -> None:
    key = "exports/tenant_alpha/9/dm.xpt"
    via_gateway.client.put_object(Bucket=via_gateway.bucket, Key=key, Body=b"rows")
    short = presigned_download_url(export_storage(), key, filename="dm.xpt", expires=1)
    control = presigned_download_url(export_storage(), key, filename="dm.xpt")
    assert short is not None and control is not None

    time.sleep(2)
    status, _, body = _get(short)
    assert status == 403
    assert b"expired" in body
    assert _get(control)[0::2] == (200, b"rows")


@pytest.mark.parametrize(("arguments", "message"), [
    ({"key": "exports/a/1/dm.xpt", "filename": "dm.xpt", "expires": 0}, "exports/a/1/dm.xpt"),
    ({"key": "exports/a/1/dm.xpt", "filename": "dm.xpt", "expires": 8 * 24 * 3600}, "1..604800"),
    ({"key": "exports/a/1/dm.xpt", "filename": "dm\r\nSet-Cookie: x=1", "expires": 300}, "control characters"),
    ({"key": "exports/a/1/dm.xpt", "filename": "", "expires": 300}, "empty"),
    ({"key": "", "filename": "dm.xpt", "expires": 300}, "does not name a file"),
])
def test_presigned_url_refuses_bad_input(s3_settings: S3Target, arguments: dict[str, Any], message: str) -> None:
    key = arguments.pop("key")
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        presigned_download_url(export_storage(), key, **arguments)


def test_bad_addressing_style_is_named(s3_settings: S3Target, settings: Any) -> None:
    settings.EXPORTS_S3_ADDRESSING_STYLE = "subdomain"
    with pytest.raises(ImproperlyConfigured, match="EXPORTS_S3_ADDRESSING_STYLE"):
        export_storage()


def test_without_a_bucket_exports_use_the_local_default_storage(settings: Any, tmp_path: Path) -> None:
    settings.EXPORTS_S3_BUCKET = ""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    storage = export_storage()
    assert storage is default_storage
    assert isinstance(storage, FileSystemStorage)  # the lazy proxy reports its class

    key = "exports/tenant_alpha/4/dm.xpt"
    assert _save(key, b"local rows") == key
    assert (tmp_path / "exports" / "tenant_alpha" / "4" / "dm.xpt").read_bytes() == b"local rows"
    assert presigned_download_url(storage, key, filename="dm.xpt") is None


def test_large_files_stream_through_bounded_memory(s3_settings: S3Target, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    source = tmp_path / "big.xpt"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        rng = random.Random(64)
        for _ in range(size // (1024 * 1024)):
            block = rng.randbytes(1024 * 1024)
            digest.update(block)
            out.write(block)
    storage = export_storage()
    key = "exports/tenant_alpha/64/big.xpt"
    assert not storage.exists(key)  # also loads boto3's service model before measuring

    tracemalloc.start()
    try:
        with source.open("rb") as handle:
            assert storage.save(key, File(handle, name="big.xpt")) == key
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_back = hashlib.sha256()
        with storage.open(key, "rb") as stored:
            while block := stored.read(1024 * 1024):
                read_back.update(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert read_back.hexdigest() == digest.hexdigest()
    # Generous bounds, well under the file's 64 MiB: two 8 MiB parts in flight while
    # uploading, an 8 MiB spool (then disk) while reading.
    assert upload_peak < 40 * 1024 * 1024, upload_peak
    assert read_peak < 40 * 1024 * 1024, read_peak
