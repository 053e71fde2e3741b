"""Files of file items: uploaded first (checked against the item's accepted types and
size, by their content as well as their name), then referred to by id in the entry's
values. Stored through the storage layer (local disk by default, S3 in production)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import structlog
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils.translation import gettext as _

from config.db import tenant_connection
from config.errors import ValidationFailed
from ecrf.definition import iter_items
from ecrf.models import EntryFile, FormDefinition
from ecrf.validation import flatten_values, item_code_of

log = structlog.get_logger(__name__)

# What the first bytes of a file say it is. A declared type that its content does not
# back is refused: an "image/png" that is really HTML must never be served to a browser.
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "application/dicom": (),  # checked at offset 128 below
}
TEXT_TYPES = frozenset({"text/plain", "text/csv"})


def sniff(content: bytes) -> str | None:
    """The media type the content itself shows, or None when we cannot tell."""
    for media_type, prefixes in SIGNATURES.items():
        if any(content.startswith(prefix) for prefix in prefixes):
            if media_type == "image/webp" and content[8:12] != b"WEBP":
                continue
            return media_type
    if content[128:132] == b"DICM":
        return "application/dicom"
    try:
        text = content[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lowered = text.lower()
    if "<script" in lowered or "<html" in lowered or "<svg" in lowered:
        return "text/html"
    return "text/plain"


def file_item(*, definition: dict[str, Any], item: str) -> dict[str, Any] | None:
    return next((i for i in iter_items(definition.get("items") or []) if i.get("code") == item
                 and i.get("type") == "file"), None)


def entry_file_upload(*, subject: Any, form: FormDefinition, definition: dict[str, Any], item: str, name: str,
                      content: bytes, user_id: int | None) -> EntryFile:
    """Check and store an uploaded file for `item` of `form`; nothing is stored when it
    is refused."""
    spec = file_item(definition=definition, item=item)
    if spec is None:
        raise ValidationFailed({"item": [_("No file item with this code in the form.")]})
    accepted = list((spec.get("file") or {}).get("types") or [])
    limit = int((spec.get("file") or {}).get("max_bytes") or 10 * 1024 * 1024)
    if not content:
        raise ValidationFailed({"file": [_("The file is empty.")]})
    if len(content) > limit:
        raise ValidationFailed({"file": [_("A file may be at most %(max)s KB here.") % {"max": limit // 1024}]})
    found = sniff(content)
    if found is None or found not in accepted or (found in TEXT_TYPES and not set(accepted) & TEXT_TYPES):
        raise ValidationFailed({"file": [_("Accepted here: %(types)s. This file is not one of them.")
                                         % {"types": ", ".join(accepted)}]})
    safe_name = "".join(ch for ch in (name or "file").rsplit("/", 1)[-1] if ch.isprintable())[:200] or "file"
    file_id = uuid.uuid4().hex
    path = default_storage.save(f"ecrf/{tenant_connection.schema_name}/{file_id}", ContentFile(content))
    stored = EntryFile.objects.create(id=file_id, subject_id=subject.pk, form=form, item=item, storage_path=path,
                                      name=safe_name, content_type=found, size=len(content),
                                      sha256=hashlib.sha256(content).hexdigest(), uploaded_by_id=user_id)
    log.info("ecrf.file_uploaded", file_id=file_id, subject_id=subject.pk, size=len(content), type=found)
    return stored


def file_value(stored: EntryFile) -> dict[str, Any]:
    """What an entry stores for the file (and what the upload returns)."""
    return {"id": stored.id, "name": stored.name, "size": stored.size, "type": stored.content_type}


def file_values_check(*, subject_id: int, form_id: int, values: dict[str, Any],
                      definition: dict[str, Any]) -> dict[str, list[str]]:
    """Every file an entry refers to must be an upload for this subject, form and item."""
    wanted: dict[str, tuple[str, str]] = {}
    file_codes = {i["code"] for i in iter_items(definition.get("items") or []) if i.get("type") == "file"}
    for path, value in flatten_values(values).items():
        code = item_code_of(path)
        if code in file_codes and isinstance(value, dict) and isinstance(value.get("id"), str):
            wanted[path] = (value["id"], code)
    if not wanted:
        return {}
    known = {(f.id, f.item) for f in EntryFile.objects.filter(
        id__in=[file_id for file_id, _code in wanted.values()], subject_id=subject_id, form_id=form_id)}
    return {path: [_("Upload the file for this item first.")] for path, (file_id, code) in wanted.items()
            if (file_id, code) not in known}
