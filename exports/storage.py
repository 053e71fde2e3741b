"""Where export files live: a private, encrypted S3 bucket when EXPORTS_S3_BUCKET is set
(AWS or an S3-compatible store such as MinIO or Aliyun OSS), else Django's default
storage (the local filesystem in development and tests).

Keys are used exactly as given ("exports/<schema>/<job>/<name>"): no location prefix and
no rewriting, so a tenant's schema in the key keeps tenants apart.

Downloads from S3 go through a presigned GET link (`presigned_download_url`) so file
bytes never pass through a web pod; for local storage the API streams the file itself.
"""

from __future__ import annotations

import functools
import hashlib
from typing import IO, Any

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import Storage, default_storage
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.http import content_disposition_header
from storages.backends.s3 import S3Storage

# Matches the API's signed download link (exports/api/views.py LINK_MAX_AGE).
LINK_MAX_AGE = 300
# SigV4 presigned URLs cannot outlive seven days.
_SIGV4_MAX_EXPIRES = 7 * 24 * 3600
# Reading an S3 object through the storage spools it; above this it spills to disk
# (django-storages' default 0 would keep a whole export in memory).
_SPOOL_MAX_MEMORY = 8 * 1024 * 1024
# Uploads from a file object hold up to this many parts in memory (boto3's default, 10
# parts of 8 MiB, let a 40 MiB upload peak at 45 MiB; measured with tracemalloc).
_UPLOAD_PART = 8 * 1024 * 1024
_UPLOAD_CONCURRENCY = 2
_ADDRESSING_STYLES = frozenset({"", "auto", "path", "virtual"})
_CHECKSUM_MODES = frozenset({"when_supported", "when_required"})


def file_digest(handle: IO[bytes]) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a whole file, left rewound for the next reader."""
    handle.seek(0)
    digest = hashlib.file_digest(handle, "sha256")  # type: ignore[arg-type]  # binary files have readinto
    size = handle.tell()
    handle.seek(0)
    return size, digest.hexdigest()


def export_storage() -> Storage:
    """The storage for export files: S3 when EXPORTS_S3_BUCKET is set, else the default
    storage. One instance per configuration (boto3 sessions are costly to build)."""
    if not getattr(settings, "EXPORTS_S3_BUCKET", ""):
        return default_storage
    return _s3_export_storage()


def s3_storage_options() -> dict[str, Any]:
    """The S3Storage keyword arguments built from the EXPORTS_S3_* settings; every option
    is explicit so the global AWS_* settings of the default storage do not leak in."""
    bucket = settings.EXPORTS_S3_BUCKET
    style = getattr(settings, "EXPORTS_S3_ADDRESSING_STYLE", "")
    if style not in _ADDRESSING_STYLES:
        raise ImproperlyConfigured(
            f"EXPORTS_S3_ADDRESSING_STYLE must be one of {sorted(_ADDRESSING_STYLES)}, not {style!r}.")
    checksums = getattr(settings, "EXPORTS_S3_CHECKSUMS", "when_supported")
    if checksums not in _CHECKSUM_MODES:
        raise ImproperlyConfigured(
            f"EXPORTS_S3_CHECKSUMS must be one of {sorted(_CHECKSUM_MODES)}, not {checksums!r}.")
    client_config = Config(
        signature_version="s3v4",  # presigned SigV2 links are refused by newer regions
        s3={"addressing_style": style} if style else {},
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        retries={"mode": "standard", "max_attempts": 5},
    )
    parameters: dict[str, str] = {}
    if getattr(settings, "EXPORTS_S3_ENCRYPTION", True):
        parameters["ServerSideEncryption"] = "AES256"
    return {
        "bucket_name": bucket,
        "region_name": getattr(settings, "EXPORTS_S3_REGION", "") or None,
        "endpoint_url": getattr(settings, "EXPORTS_S3_ENDPOINT_URL", "") or None,
        "default_acl": getattr(settings, "EXPORTS_S3_DEFAULT_ACL", "private") or None,
        "object_parameters": parameters,
        "querystring_auth": True,
        "querystring_expire": LINK_MAX_AGE,
        "file_overwrite": bool(getattr(settings, "EXPORTS_S3_FILE_OVERWRITE", False)),
        "location": "",
        "custom_domain": None,  # a CDN domain would serve unsigned URLs
        "addressing_style": style or None,
        "signature_version": "s3v4",
        "client_config": client_config,
        "transfer_config": _transfer_config(),
        "max_memory_size": _SPOOL_MAX_MEMORY,
        "gzip": False,  # files must stay byte-identical to their recorded SHA-256
    }


def _transfer_config() -> TransferConfig:
    config = TransferConfig(multipart_threshold=_UPLOAD_PART, multipart_chunksize=_UPLOAD_PART,
                            max_concurrency=_UPLOAD_CONCURRENCY)
    # Parts read from a file object wait in memory; boto3 does not take this as an argument.
    config.max_in_memory_upload_chunks = _UPLOAD_CONCURRENCY
    return config


@functools.cache
def _s3_export_storage() -> S3Storage:
    return S3Storage(**s3_storage_options())


@receiver(setting_changed)
def _forget_storage(*, setting: str, **_: Any) -> None:
    # Tests (and override_settings) change EXPORTS_S3_*; the next call must see them.
    if setting.startswith("EXPORTS_S3_"):
        _s3_export_storage.cache_clear()


def presigned_download_url(storage: Storage, key: str, *, filename: str,
                           expires: int = LINK_MAX_AGE) -> str | None:
    """A presigned GET URL for `key` that makes the browser save it as `filename` (as
    application/octet-stream), valid `expires` seconds; None when `storage` is not S3
    (the caller then streams the file itself)."""
    if not isinstance(storage, S3Storage):
        return None
    if not key or key.endswith("/"):
        raise ValueError(f"Export storage key {key!r} does not name a file.")
    if not filename or any(ord(char) < 32 or ord(char) == 127 for char in filename):
        raise ValueError(f"Download filename {filename!r} for {key!r} is empty or has control characters.")
    if not 1 <= expires <= _SIGV4_MAX_EXPIRES:
        raise ValueError(f"Presigned URL lifetime for {key!r} must be 1..{_SIGV4_MAX_EXPIRES} s, not {expires}.")
    if not storage.querystring_auth or storage.custom_domain:
        # Either would make url() return an unsigned link to a private object.
        raise ImproperlyConfigured("The export storage must sign its URLs (querystring_auth, no custom_domain).")
    disposition = content_disposition_header(True, filename)
    if disposition is None:  # only for as_attachment=False, never here; keeps mypy exact
        raise ValueError(f"No Content-Disposition for {filename!r}.")
    return str(storage.url(key, parameters={"ResponseContentDisposition": disposition,
                                            "ResponseContentType": "application/octet-stream"},
                           expire=expires, http_method="GET"))
