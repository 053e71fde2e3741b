"""Identifying data (name, phone, national ID, birth date, address): encryption at rest,
keyed hashes for duplicate detection, and masks for display.

Keys come from settings (the environment), read at call time so a rotation or a test's
override takes effect without a restart of the import machinery:

- ``PII_ENCRYPTION_KEYS``: comma-separated urlsafe-base64 AES-256 keys. The first encrypts,
  all decrypt. Rotate by putting a new key in front, re-encrypting every value
  (``pii_needs_rotation`` / ``pii_rotate``), then removing the old key.
- ``PII_HASH_KEY``: the HMAC-SHA256 key of ``pii_keyed_hash``, apart from the encryption
  keys. Changing it means recomputing every stored hash from the decrypted values.

A token is ``pii1:<key id>:<urlsafe-b64(nonce || ciphertext || tag)>``. The purpose (the
field name) is the AES-GCM associated data, so a token copied into another field does not
decrypt. Nothing here logs, and no error message carries a plaintext or a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from functools import lru_cache
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import models
from django.db.models.lookups import Lookup

FORMAT_VERSION = "pii1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
AAD_PREFIX = b"suifang-pii:"

_KEY_TEXT_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}$")
_PAYLOAD_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")

_S = TypeVar("_S", str, None)


class PIIError(Exception):
    """A token that cannot be decrypted: malformed, tampered with, moved to another
    purpose, or encrypted with a key that is no longer configured."""


def pii_generate_key() -> str:
    """A fresh key in the format of PII_ENCRYPTION_KEYS / PII_HASH_KEY."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def pii_key_decode(text: str, *, name: str) -> bytes:
    """Decode one urlsafe-base64 key; ImproperlyConfigured names the setting, never the key."""
    text = text.strip()
    if not _KEY_TEXT_RE.match(text):
        raise ImproperlyConfigured(f"{name}: a key is not urlsafe base64.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{name}: a key is not urlsafe base64.") from None
    if len(raw) != KEY_BYTES:
        raise ImproperlyConfigured(f"{name}: each key must decode to {KEY_BYTES} bytes (one has {len(raw)}).")
    return raw


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


@lru_cache(maxsize=8)
def _encryption_keys(raw: str) -> tuple[tuple[str, AESGCM], ...]:
    # Cached by the setting's text, so an override or a rotation gets a fresh parse.
    parts = [part for part in (p.strip() for p in raw.split(",")) if part]
    if not parts:
        raise ImproperlyConfigured("PII_ENCRYPTION_KEYS is not set.")
    return tuple((key_id(k), AESGCM(k)) for k in (pii_key_decode(p, name="PII_ENCRYPTION_KEYS") for p in parts))


@lru_cache(maxsize=8)
def _hash_key(raw: str) -> bytes:
    if not raw.strip():
        raise ImproperlyConfigured("PII_HASH_KEY is not set.")
    return pii_key_decode(raw, name="PII_HASH_KEY")


def _keys() -> tuple[tuple[str, AESGCM], ...]:
    return _encryption_keys(getattr(settings, "PII_ENCRYPTION_KEYS", ""))


def _aad(purpose: str) -> bytes:
    if not purpose:
        raise ValueError("A PII purpose (the field name) is required.")
    return AAD_PREFIX + purpose.encode("utf-8")


def _split_token(token: str) -> tuple[str, bytes]:
    version, _, rest = token.partition(":")
    kid, _, payload = rest.partition(":")
    if version != FORMAT_VERSION or not _KEY_ID_RE.match(kid) or not _PAYLOAD_RE.match(payload):
        raise PIIError("Not a PII token.")
    try:
        blob = base64.urlsafe_b64decode(payload)
    except (binascii.Error, ValueError):
        raise PIIError("Not a PII token.") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise PIIError("Not a PII token.")
    return kid, blob


def pii_encrypt(value: str | None, *, purpose: str) -> str | None:
    if value is None:
        return None
    kid, aead = _keys()[0]
    nonce = os.urandom(NONCE_BYTES)
    sealed = aead.encrypt(nonce, value.encode("utf-8"), _aad(purpose))
    return f"{FORMAT_VERSION}:{kid}:{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"


def pii_decrypt(token: str | None, *, purpose: str) -> str | None:
    if token is None:
        return None
    kid, blob = _split_token(token)
    aad = _aad(purpose)
    # Key ids are 32 bits: try every configured key that carries this id.
    candidates = [aead for k, aead in _keys() if k == kid]
    if not candidates:
        raise PIIError(f"PII token encrypted with key {kid}, which is not configured.")
    for aead in candidates:
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad).decode("utf-8")
        except InvalidTag:
            continue
    raise PIIError("PII token failed authentication (tampered, wrong purpose or wrong key).")


def pii_needs_rotation(token: str | None) -> bool:
    """True for a token not encrypted with the primary key, including a malformed one
    (pii_rotate then raises PIIError for it, so a re-encryption run reports it)."""
    if token is None:
        return False
    primary = _keys()[0][0]
    version, _, rest = token.partition(":")
    return version != FORMAT_VERSION or rest.partition(":")[0] != primary


def pii_rotate(token: str | None, *, purpose: str) -> str | None:
    """Re-encrypt with the primary key; a token already under it is returned unchanged."""
    if token is None or not pii_needs_rotation(token):
        return token
    return pii_encrypt(pii_decrypt(token, purpose=purpose), purpose=purpose)


def normalize_national_id(value: str) -> str:
    """Full-width forms folded (NFKC), spaces and hyphens removed, check letter upper-cased."""
    return re.sub(r"[\s\-]", "", unicodedata.normalize("NFKC", value)).upper()


def _normalize_default(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip()


_NORMALIZERS = {"national_id": normalize_national_id}


def pii_keyed_hash(value: str, *, purpose: str) -> str:
    """Hex HMAC-SHA256 of purpose + NUL + normalized value, for equality lookups (duplicate
    national IDs) without storing anything reversible. The purpose picks the normalizer."""
    normalized = _NORMALIZERS.get(purpose, _normalize_default)(value)
    message = _aad(purpose) + b"\x00" + normalized.encode("utf-8")
    return hmac.new(_hash_key(getattr(settings, "PII_HASH_KEY", "")), message, hashlib.sha256).hexdigest()


# --- masks: what a role that may not see the value is shown ----------------------------
def mask_phone(value: _S) -> _S:
    """13812345678 -> 138****5678; shorter than 8 characters: all but the last 2 masked."""
    if value is None:
        return None
    v = re.sub(r"[\s\-()]", "", value)
    if len(v) >= 8:
        return v[:3] + "*" * (len(v) - 7) + v[-4:]
    return "*" * (len(v) - 2) + v[-2:] if len(v) > 2 else "*" * len(v)


def mask_name(value: _S) -> _S:
    """张三丰 -> 张**; a one-character name is fully masked (it would show the whole name)."""
    if value is None:
        return None
    v = value.strip()
    if len(v) <= 1:
        return "*" * len(v)
    return v[0] + "*" * (len(v) - 1)


def mask_national_id(value: _S) -> _S:
    """18-character Chinese ID: region (6) and last 4 kept; anything else: last 4 kept."""
    if value is None:
        return None
    v = normalize_national_id(value)
    if len(v) == 18:
        return v[:6] + "*" * 8 + v[-4:]
    return "*" * (len(v) - 4) + v[-4:] if len(v) > 4 else "*" * len(v)


def mask_birth_date(value: _S) -> _S:
    """1990-03-07 -> 1990-**-**; anything else is fully masked."""
    if value is None:
        return None
    v = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        return v[:4] + "-**-**"
    return "****-**-**"


ADDRESS_VISIBLE = 6
ADDRESS_MIN_HIDDEN = 3


def mask_address(value: _S) -> _S:
    """The first 6 characters + "…"; an address too short to hide at least 3 more
    characters is fully masked."""
    if value is None:
        return None
    v = value.strip()
    if len(v) < ADDRESS_VISIBLE + ADDRESS_MIN_HIDDEN:
        return "*" * len(v)
    return v[:ADDRESS_VISIBLE] + "…"


# --- model field ----------------------------------------------------------------------
class EncryptedTextField(models.TextField):
    """Text stored as a PII token; plain ``str | None`` in Python.

    The purpose (associated data) is ``pii_purpose``, or the field name. Pass it explicitly
    on a field that might be renamed: it is bound into every stored token. Only ``isnull``
    (and ``= None``) lookups work; the ciphertext is randomized, so an equality filter
    could never match, and it is refused instead of silently finding nothing. Look values
    up through a keyed hash column instead.
    """

    description = "Encrypted text (PII)"

    def __init__(self, *args: Any, pii_purpose: str | None = None, **kwargs: Any) -> None:
        self.pii_purpose = pii_purpose
        super().__init__(*args, **kwargs)

    @property
    def purpose(self) -> str:
        return self.pii_purpose or self.name

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        if self.pii_purpose is not None:
            kwargs["pii_purpose"] = self.pii_purpose
        return name, path, args, kwargs

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return pii_encrypt(value, purpose=self.purpose)

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        return pii_decrypt(value, purpose=self.purpose)

    def get_lookup(self, lookup_name: str) -> type[Lookup[Any]] | None:
        if lookup_name not in ("isnull", "exact"):
            return None
        lookup = super().get_lookup(lookup_name)
        if lookup_name == "exact" and lookup is not None:
            return _NullOnlyExact
        return lookup


class _NullOnlyExact(models.lookups.Exact):
    # Django turns `field=None` into `isnull` after building this; any other value is refused.
    def get_prep_lookup(self) -> Any:
        if self.rhs is not None:
            raise FieldError("Encrypted fields cannot be compared; filter on a keyed hash column.")
        return super().get_prep_lookup()
