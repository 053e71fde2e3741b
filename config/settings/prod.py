"""Production: everything from the environment; refuses to start without secrets."""

from config.env import env_bool, env_int, env_str
from config.settings.base import *  # noqa: F403

SECRET_KEY = env_str("SECRET_KEY")
if len(SECRET_KEY) < 50:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters.")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

if env_str("AWS_STORAGE_BUCKET_NAME", ""):
    STORAGES = {
        **STORAGES,  # noqa: F405
        "default": {"BACKEND": "storages.backends.s3.S3Storage"},
    }
    AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
    AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL", "") or None
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = True
    AWS_QUERYSTRING_EXPIRE = 300

# --- PII keys: refuse to start without valid ones (the format studies/pii.py reads) ------
import base64  # noqa: E402
import binascii  # noqa: E402
import re  # noqa: E402

from django.core.exceptions import ImproperlyConfigured  # noqa: E402


def _pii_keys(name: str, raw: str) -> list[bytes]:
    texts = [part.strip() for part in raw.split(",") if part.strip()]
    if not texts:
        raise ImproperlyConfigured(f"{name} is required (urlsafe-base64 32-byte keys).")
    keys = []
    for text in texts:
        try:
            if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
                raise ValueError
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"{name}: a key is not urlsafe base64.") from None
        if len(key) != 32:
            raise ImproperlyConfigured(f"{name}: each key must decode to 32 bytes (one has {len(key)}).")
        if b"insecure" in key:
            raise ImproperlyConfigured(f"{name}: the public dev/test key must not be used in production.")
        keys.append(key)
    return keys


_pii_encryption_keys = _pii_keys("PII_ENCRYPTION_KEYS", PII_ENCRYPTION_KEYS)  # noqa: F405
_pii_hash_key = _pii_keys("PII_HASH_KEY", PII_HASH_KEY)  # noqa: F405
if len(_pii_hash_key) != 1:
    raise ImproperlyConfigured("PII_HASH_KEY must be a single key.")
if _pii_hash_key[0] in _pii_encryption_keys:
    raise ImproperlyConfigured("PII_HASH_KEY must differ from every PII_ENCRYPTION_KEYS key.")
