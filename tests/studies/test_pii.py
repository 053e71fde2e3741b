"""studies/pii.py: encryption at rest, rotation, keyed hashes, masks, the model field, and
the production settings' refusal of missing or bad keys. Expected values are built here
from the documented format (AES-256-GCM, HMAC-SHA256), not by calling the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import connection, models
from django.test.utils import isolate_apps

from studies.pii import (
    EncryptedTextField,
    PIIError,
    mask_address,
    mask_birth_date,
    mask_name,
    mask_national_id,
    mask_phone,
    normalize_national_id,
    pii_decrypt,
    pii_encrypt,
    pii_keyed_hash,
    pii_needs_rotation,
    pii_rotate,
)

ROOT = Path(__file__).resolve().parents[2]
KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(100, 132))
HASH_KEY = b"h" * 32
OTHER_HASH_KEY = b"g" * 32


def fullwidth(text: str) -> str:
    """ASCII -> the full-width forms (U+FF01..) a Chinese input method may type; space -> U+3000."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def blob_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.split(":")[2])


def token_with(blob: bytes, key: bytes) -> str:
    return f"pii1:{kid(key)}:{base64.urlsafe_b64encode(blob).decode()}"


@pytest.fixture(autouse=True)
def keys(settings):  # type: ignore[no-untyped-def]
    settings.PII_ENCRYPTION_KEYS = b64(KEY_OLD)
    settings.PII_HASH_KEY = b64(HASH_KEY)
    return settings


# --- encryption ------------------------------------------------------------------------
@pytest.mark.parametrize("plain", ["13812345678", "张三丰", "北京市朝阳区建国路88号 🙂", "", " x "])
def test_round_trip(plain):
    token = pii_encrypt(plain, purpose="name")
    assert token is not None and token != plain
    assert pii_decrypt(token, purpose="name") == plain


def test_none_stays_none():
    assert pii_encrypt(None, purpose="phone") is None
    assert pii_decrypt(None, purpose="phone") is None


def test_token_format_decrypts_with_plain_aes_gcm():
    token = pii_encrypt("张三", purpose="name")
    assert token is not None
    version, key_id, payload = token.split(":")
    assert (version, key_id) == ("pii1", kid(KEY_OLD))
    blob = base64.urlsafe_b64decode(payload)
    # 12-byte nonce + 6 bytes of UTF-8 + 16-byte tag
    assert len(blob) == 12 + 6 + 16
    assert AESGCM(KEY_OLD).decrypt(blob[:12], blob[12:], b"suifang-pii:name") == "张三".encode()


def test_decrypts_a_token_built_by_hand():
    nonce = b"\x01" * 12
    sealed = AESGCM(KEY_OLD).encrypt(nonce, b"13812345678", b"suifang-pii:phone")
    assert pii_decrypt(token_with(nonce + sealed, KEY_OLD), purpose="phone") == "13812345678"


def test_random_nonce_and_no_plaintext_in_token():
    first = pii_encrypt("13812345678", purpose="phone")
    second = pii_encrypt("13812345678", purpose="phone")
    assert first is not None and second is not None
    assert first != second
    assert blob_of(first)[:12] != blob_of(second)[:12]
    for token in (first, second):
        assert "13812345678" not in token
        assert b"13812345678" not in blob_of(token)
        assert b64(b"13812345678").rstrip("=") not in token
    chinese = pii_encrypt("张三丰", purpose="name")
    assert chinese is not None and "张" not in chinese and "张三丰".encode() not in blob_of(chinese)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])
def test_tampered_token_is_refused(position):
    token = pii_encrypt("13812345678", purpose="phone")
    assert token is not None
    blob = bytearray(blob_of(token))
    blob[position] ^= 0x01
    with pytest.raises(PIIError) as excinfo:
        pii_decrypt(token_with(bytes(blob), KEY_OLD), purpose="phone")
    assert "13812345678" not in str(excinfo.value)


def test_truncated_token_is_refused():
    token = pii_encrypt("13812345678", purpose="phone")
    assert token is not None
    with pytest.raises(PIIError):
        pii_decrypt(token_with(blob_of(token)[:-1], KEY_OLD), purpose="phone")


@pytest.mark.parametrize("garbage", ["", "13812345678", "pii1:", "pii2:abcdef01:AAAA", "pii1:zzzz:AAAA",
                                     "pii1:abcdef01:not base64!", "pii1:abcdef01:AAAA"])
def test_malformed_token_is_refused(garbage):
    with pytest.raises(PIIError):
        pii_decrypt(garbage, purpose="phone")


def test_wrong_purpose_is_refused():
    token = pii_encrypt("13812345678", purpose="phone")
    with pytest.raises(PIIError):
        pii_decrypt(token, purpose="name")


def test_purpose_is_required():
    with pytest.raises(ValueError, match="purpose"):
        pii_encrypt("x", purpose="")


# --- keys and rotation -----------------------------------------------------------------
def test_rotation(settings):
    old = pii_encrypt("张三丰", purpose="name")
    assert old is not None and not pii_needs_rotation(old)

    settings.PII_ENCRYPTION_KEYS = f"{b64(KEY_NEW)}, {b64(KEY_OLD)}"
    assert pii_decrypt(old, purpose="name") == "张三丰"
    assert pii_needs_rotation(old)
    fresh = pii_encrypt("李四", purpose="name")
    assert fresh is not None and fresh.split(":")[1] == kid(KEY_NEW)

    rotated = pii_rotate(old, purpose="name")
    assert rotated is not None and rotated.split(":")[1] == kid(KEY_NEW)
    assert not pii_needs_rotation(rotated)
    assert pii_rotate(rotated, purpose="name") == rotated  # already under the primary key
    assert AESGCM(KEY_NEW).decrypt(blob_of(rotated)[:12], blob_of(rotated)[12:], b"suifang-pii:name") == (
        "张三丰".encode()
    )

    settings.PII_ENCRYPTION_KEYS = b64(KEY_NEW)
    assert pii_decrypt(rotated, purpose="name") == "张三丰"
    with pytest.raises(PIIError) as excinfo:
        pii_decrypt(old, purpose="name")
    assert kid(KEY_OLD) in str(excinfo.value)
    assert b64(KEY_OLD) not in str(excinfo.value) and "张三丰" not in str(excinfo.value)


def test_rotation_of_none_and_garbage():
    assert pii_needs_rotation(None) is False
    assert pii_rotate(None, purpose="phone") is None
    assert pii_needs_rotation("13812345678") is True
    with pytest.raises(PIIError):
        pii_rotate("13812345678", purpose="phone")


def test_rotation_keeps_the_purpose(settings):
    old = pii_encrypt("13812345678", purpose="phone")
    settings.PII_ENCRYPTION_KEYS = f"{b64(KEY_NEW)},{b64(KEY_OLD)}"
    with pytest.raises(PIIError):
        pii_rotate(old, purpose="name")


def test_key_without_padding_is_accepted(settings):
    settings.PII_ENCRYPTION_KEYS = b64(KEY_NEW).rstrip("=")
    token = pii_encrypt("x", purpose="phone")
    assert token is not None and token.split(":")[1] == kid(KEY_NEW)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "not set"),
        (" , ", "not set"),
        (b64(b"k" * 16), "32 bytes"),
        (b64(b"k" * 33), "32 bytes"),
        ("not+base64/at*all", "base64"),
        (f"{b64(KEY_NEW)},{b64(b'k' * 31)}", "32 bytes"),
    ],
)
def test_bad_encryption_keys_are_refused(settings, raw, message):
    settings.PII_ENCRYPTION_KEYS = raw
    with pytest.raises(ImproperlyConfigured, match=message) as excinfo:
        pii_encrypt("x", purpose="phone")
    for part in raw.split(","):
        if part.strip():
            assert part.strip() not in str(excinfo.value)


@pytest.mark.parametrize("raw", ["", b64(b"k" * 20)])
def test_bad_hash_key_is_refused(settings, raw):
    settings.PII_HASH_KEY = raw
    with pytest.raises(ImproperlyConfigured, match="PII_HASH_KEY"):
        pii_keyed_hash("x", purpose="national_id")


def test_the_suite_settings_carry_working_keys():
    # The autouse fixture overrides them at runtime; the module's own values must be valid.
    import config.settings.test as test_settings

    for raw in (test_settings.PII_ENCRYPTION_KEYS, test_settings.PII_HASH_KEY):
        assert len(base64.urlsafe_b64decode(raw)) == 32


def test_nothing_is_logged(caplog):
    caplog.set_level(logging.DEBUG)
    token = pii_encrypt("13812345678", purpose="phone")
    pii_decrypt(token, purpose="phone")
    pii_keyed_hash("11010119900307777X", purpose="national_id")
    with pytest.raises(PIIError):
        pii_decrypt(token, purpose="name")
    assert "13812345678" not in caplog.text and "777X" not in caplog.text


# --- keyed hash ------------------------------------------------------------------------
def expected_hash(key: bytes, purpose: str, normalized: str) -> str:
    message = b"suifang-pii:" + purpose.encode() + b"\x00" + normalized.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_keyed_hash_value_is_hmac_sha256_over_purpose_and_value():
    assert pii_keyed_hash("11010119900307777X", purpose="national_id") == expected_hash(
        HASH_KEY, "national_id", "11010119900307777X"
    )
    assert len(pii_keyed_hash("x", purpose="phone")) == 64


def test_keyed_hash_is_stable_and_normalized():
    reference = pii_keyed_hash("11010119900307777X", purpose="national_id")
    for variant in ("11010119900307777x", "110101 19900307 777X", "110101-19900307-777x",
                    fullwidth("11010119900307777x"), " 11010119900307777X\n"):
        assert pii_keyed_hash(variant, purpose="national_id") == reference
    assert pii_keyed_hash("11010119900307777X", purpose="national_id") == reference
    assert pii_keyed_hash("110101199003077770", purpose="national_id") != reference


def test_keyed_hash_differs_by_purpose_and_key(settings):
    reference = pii_keyed_hash("13812345678", purpose="phone")
    assert pii_keyed_hash("13812345678", purpose="national_id") != reference
    settings.PII_HASH_KEY = b64(OTHER_HASH_KEY)
    other = pii_keyed_hash("13812345678", purpose="phone")
    assert other != reference
    assert other == expected_hash(OTHER_HASH_KEY, "phone", "13812345678")


def test_keyed_hash_ignores_the_encryption_keys(settings):
    reference = pii_keyed_hash("13812345678", purpose="phone")
    settings.PII_ENCRYPTION_KEYS = b64(KEY_NEW)
    assert pii_keyed_hash("13812345678", purpose="phone") == reference


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("11010119900307777x", "11010119900307777X"),
        ("110101 19900307 777X", "11010119900307777X"),
        ("110101-1990-0307-7770", "110101199003077770"),
        (fullwidth("110101 19900307777x"), "11010119900307777X"),
    ],
)
def test_normalize_national_id(raw, normalized):
    assert normalize_national_id(raw) == normalized


# --- masks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("13812345678", "138****5678"),
        ("138 1234 5678", "138****5678"),
        ("+8613812345678", "+86*******5678"),
        ("12345678", "123*5678"),
        ("1234567", "*****67"),
        ("12", "**"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_phone(raw, masked):
    assert mask_phone(raw) == masked


@pytest.mark.parametrize(
    ("raw", "masked"),
    [("张三丰", "张**"), ("张三", "张*"), ("Li Wei", "L*****"), ("欧阳娜娜", "欧***"), ("张", "*"), ("", ""),
     (None, None)],
)
def test_mask_name(raw, masked):
    assert mask_name(raw) == masked


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("11010119900307777X", "110101********777X"),
        ("110101 19900307 777x", "110101********777X"),
        ("G12345678", "*****5678"),
        ("110101900307777", "***********7777"),
        ("1234", "****"),
        (None, None),
    ],
)
def test_mask_national_id(raw, masked):
    assert mask_national_id(raw) == masked


@pytest.mark.parametrize(
    ("raw", "masked"),
    [("1990-03-07", "1990-**-**"), ("07/03/1990", "****-**-**"), ("", "****-**-**"), (None, None)],
)
def test_mask_birth_date(raw, masked):
    assert mask_birth_date(raw) == masked


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("北京市朝阳区建国路88号", "北京市朝阳区…"),
        ("12 Baker Street, London", "12 Bak…"),
        ("北京市朝阳区", "******"),
        ("北京市朝阳区建国", "********"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_address(raw, masked):
    assert mask_address(raw) == masked


# --- EncryptedTextField ----------------------------------------------------------------
def test_field_encrypts_on_prep_and_decrypts_from_db():
    field = EncryptedTextField(pii_purpose="phone")
    field.set_attributes_from_name("mobile")
    stored = field.get_prep_value("13812345678")
    assert stored.startswith(f"pii1:{kid(KEY_OLD)}:") and "13812345678" not in stored
    blob = blob_of(stored)
    assert AESGCM(KEY_OLD).decrypt(blob[:12], blob[12:], b"suifang-pii:phone") == b"13812345678"
    assert field.from_db_value(stored, None, connection) == "13812345678"
    assert field.get_prep_value(None) is None
    assert field.from_db_value(None, None, connection) is None
    saved = field.get_db_prep_save("张三丰", connection)
    assert saved.startswith("pii1:") and field.from_db_value(saved, None, connection) == "张三丰"


def test_field_purpose_defaults_to_its_name():
    field = EncryptedTextField(null=True)
    field.set_attributes_from_name("address")
    stored = field.get_prep_value("北京市")
    blob = blob_of(stored)
    assert AESGCM(KEY_OLD).decrypt(blob[:12], blob[12:], b"suifang-pii:address") == "北京市".encode()
    other = EncryptedTextField(pii_purpose="phone")
    other.set_attributes_from_name("address")
    with pytest.raises(PIIError):
        other.from_db_value(stored, None, connection)


def test_field_deconstruct_round_trips_the_purpose():
    field = EncryptedTextField(pii_purpose="phone", null=True, blank=True)
    field.set_attributes_from_name("mobile")
    name, path, args, kwargs = field.deconstruct()
    assert (name, path) == ("mobile", "studies.pii.EncryptedTextField")
    assert kwargs == {"pii_purpose": "phone", "null": True, "blank": True}
    rebuilt = EncryptedTextField(*args, **kwargs)
    rebuilt.set_attributes_from_name(name)
    assert rebuilt.deconstruct() == (name, path, args, kwargs)
    assert rebuilt.from_db_value(field.get_prep_value("x"), None, connection) == "x"

    plain = EncryptedTextField()
    plain.set_attributes_from_name("name")
    assert "pii_purpose" not in plain.deconstruct()[3]


@isolate_apps("studies")
def test_field_refuses_value_lookups_and_allows_null_checks():
    class Person(models.Model):
        phone = EncryptedTextField(null=True)

        class Meta:
            app_label = "studies"

        def __str__(self) -> str:
            return str(self.pk)

    assert "IS NULL" in str(Person.objects.filter(phone__isnull=True).query)
    assert "IS NULL" in str(Person.objects.filter(phone=None).query)
    for lookup in ("phone", "phone__exact", "phone__iexact", "phone__icontains", "phone__startswith"):
        with pytest.raises(FieldError):
            Person.objects.filter(**{lookup: "13812345678"})
    with pytest.raises(FieldError):
        Person.objects.filter(phone__in=["13812345678"])


# --- production settings ---------------------------------------------------------------
def run_settings(module: str, **pii: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PII_")}
    env.update({"DJANGO_SETTINGS_MODULE": module, "SECRET_KEY": "s" * 30 + "e" * 30})
    env.update({k: v for k, v in pii.items() if v is not None})
    code = ("import django; django.setup(); from studies.pii import pii_decrypt, pii_encrypt; "
            "print(pii_decrypt(pii_encrypt('ok-张', purpose='t'), purpose='t'))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


GOOD_ENC = b64(os.urandom(32))
GOOD_HASH = b64(os.urandom(32))


@pytest.mark.parametrize(
    ("pii", "message"),
    [
        ({"PII_HASH_KEY": GOOD_HASH}, "PII_ENCRYPTION_KEYS is required"),
        ({"PII_ENCRYPTION_KEYS": "", "PII_HASH_KEY": GOOD_HASH}, "PII_ENCRYPTION_KEYS is required"),
        ({"PII_ENCRYPTION_KEYS": GOOD_ENC}, "PII_HASH_KEY is required"),
        ({"PII_ENCRYPTION_KEYS": b64(b"k" * 16), "PII_HASH_KEY": GOOD_HASH}, "PII_ENCRYPTION_KEYS: each key must"),
        ({"PII_ENCRYPTION_KEYS": f"{GOOD_ENC},{b64(b'k' * 24)}", "PII_HASH_KEY": GOOD_HASH},
         "PII_ENCRYPTION_KEYS: each key must decode to 32 bytes"),
        ({"PII_ENCRYPTION_KEYS": GOOD_ENC, "PII_HASH_KEY": b64(b"k" * 31)}, "PII_HASH_KEY: each key must"),
        ({"PII_ENCRYPTION_KEYS": "%%%", "PII_HASH_KEY": GOOD_HASH}, "PII_ENCRYPTION_KEYS: a key is not urlsafe"),
        ({"PII_ENCRYPTION_KEYS": GOOD_ENC, "PII_HASH_KEY": f"{GOOD_HASH},{GOOD_ENC}"}, "a single key"),
        ({"PII_ENCRYPTION_KEYS": GOOD_ENC, "PII_HASH_KEY": GOOD_ENC}, "must differ"),
        ({"PII_ENCRYPTION_KEYS": b64(b"test-only-insecure-pii-key-00001"), "PII_HASH_KEY": GOOD_HASH},
         "must not be used in production"),
    ],
)
def test_prod_settings_refuse_missing_or_bad_keys(pii, message):
    result = run_settings("config.settings.prod", **pii)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr
    for value in pii.values():
        for part in value.split(","):
            if len(part) > 8:
                assert part not in result.stderr


def test_prod_settings_accept_good_keys():
    result = run_settings("config.settings.prod", PII_ENCRYPTION_KEYS=f"{GOOD_ENC},{b64(os.urandom(32))}",
                          PII_HASH_KEY=GOOD_HASH)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok-张"


def test_dev_settings_have_working_default_keys():
    result = run_settings("config.settings.dev")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok-张"
