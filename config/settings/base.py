"""Settings shared by every environment. Everything secret or deploy-specific is read
from the environment (see README "Environment")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from config.env import database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env_str("SECRET_KEY", "")
DEBUG = False

# --- tenancy ---------------------------------------------------------------------------
# `<slug>.<BASE_DOMAIN>` is a tenant; the bare BASE_DOMAIN is the public site.
BASE_DOMAIN = env_str("BASE_DOMAIN", "localhost")
# How users reach us, for links in emails and printed URLs.
SITE_SCHEME = env_str("SITE_SCHEME", "https")
SITE_PORT = env_str("SITE_PORT", "")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [BASE_DOMAIN, f".{BASE_DOMAIN}"])

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
# One `SET search_path` per request (after set_tenant), not one before every query: it
# halved the statements of a form save (docs/adr/0008). django-tenants forgets the set
# path on set_tenant, close, rollback and savepoint rollback, so it is re-issued whenever
# the database may have dropped it.
TENANT_LIMIT_SET_CALLS = True
PUBLIC_SCHEMA_NAME = "public"
PUBLIC_SCHEMA_URLCONF = "config.urls_public"
ROOT_URLCONF = "config.urls_tenant"
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
# Tenant schemas are created by renaming a spare from the pool (tenants/schema_pool.py),
# never by django-tenants' own create_schema.
SCHEMA_POOL_TARGET_SIZE = env_int("SCHEMA_POOL_TARGET_SIZE", 5)
# Hosts of the form <slug>.<BASE_DOMAIN> with these slugs never belong to a tenant.
RESERVED_TENANT_SLUGS = frozenset(
    {"www", "public", "admin", "api", "app", "static", "media", "mail", "status", "help",
     "docs", "support", "template", "pool"}
)

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "billing",
    "exports.pooling",  # consortia and pooled runs live in the public schema
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
]
TENANT_APPS = [
    "sites",
    "studies",
    "notifications",
    "ecrf",
    "exports",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

MIDDLEWARE = [
    # Probes hit pods by IP, so health answers before host routing.
    "config.middleware.HealthCheckMiddleware",
    "config.middleware.RequestIdMiddleware",
    "tenants.middleware.TenantHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "config.middleware.CommonMiddleware",  # no slash-redirect for the API
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.middleware.TenantMembershipMiddleware",
    "tenants.middleware.TenantLocaleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant",
            ],
            "libraries": {"pager": "config.pager_tags"},
        },
    }
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# --- database --------------------------------------------------------------------------
DATABASES = {"default": database_from_url(env_str("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/suifang"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- accounts --------------------------------------------------------------------------
AUTH_USER_MODEL = "tenants.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTHENTICATION_BACKENDS = [
    # Axes first: it refuses a locked-out username/IP before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    "tenants.auth.EmailBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# Failed logins: 5 per (username, IP) then a 15-minute cool-off.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_USERNAME_FORM_FIELD = "email"
AXES_USERNAME_CALLABLE = "tenants.auth.axes_username"
AXES_LOCKOUT_CALLABLE = "tenants.auth.lockout_response"
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "tenants.auth.client_ip"
AXES_VERBOSE = False

SESSION_COOKIE_AGE = 60 * 60 * 8
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = False

# --- i18n ------------------------------------------------------------------------------
LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"  # stored in UTC; shown in the tenant's zone (TenantLocaleMiddleware)

# --- static ----------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / ".data" / "staticfiles"
STORAGES = {
    # MEDIA_ROOT must be writable; in containers point it at a volume, or use S3.
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": env_str("MEDIA_ROOT", str(BASE_DIR / ".data" / "media"))}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- export storage (S3) ---------------------------------------------------------------
# Export files go to their own bucket when EXPORTS_S3_BUCKET is set (exports/storage.py),
# otherwise to the default storage. Credentials are never settings: boto3 reads
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or the pod's role.
EXPORTS_S3_BUCKET = env_str("EXPORTS_S3_BUCKET", "")
EXPORTS_S3_REGION = env_str("EXPORTS_S3_REGION", "")  # empty: boto3's (AWS_DEFAULT_REGION)
EXPORTS_S3_ENDPOINT_URL = env_str("EXPORTS_S3_ENDPOINT_URL", "")  # MinIO, Aliyun OSS...; empty: AWS
EXPORTS_S3_ADDRESSING_STYLE = env_str("EXPORTS_S3_ADDRESSING_STYLE", "")  # "", "auto", "path", "virtual"
# Canned ACL on every object; empty for buckets with ACLs disabled (BucketOwnerEnforced).
EXPORTS_S3_DEFAULT_ACL = env_str("EXPORTS_S3_DEFAULT_ACL", "private")
# SSE-S3 (AES256); turn off only for stores without it (e.g. MinIO without a KMS).
EXPORTS_S3_ENCRYPTION = env_bool("EXPORTS_S3_ENCRYPTION", True)
# A second save under an existing key gets a new name instead of replacing the file.
EXPORTS_S3_FILE_OVERWRITE = env_bool("EXPORTS_S3_FILE_OVERWRITE", False)
# boto3 >= 1.36 sends CRC32 checksums on every upload, which some S3-compatible stores
# refuse; "when_required" restores the old behaviour there.
EXPORTS_S3_CHECKSUMS = env_str("EXPORTS_S3_CHECKSUMS", "when_supported")
# --- end export storage (S3) -----------------------------------------------------------

# --- redis, cache, celery --------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "config.beat.SuifangBeatScheduler"
CELERY_BEAT_SCHEDULE = {
    # No `tenant_schemas` key: the scheduler sends one copy per live tenant.
    "tenant-heartbeat": {"task": "tenants.tasks.tenant_heartbeat", "schedule": 300.0},
    "follow-up-statuses": {"task": "studies.tasks.tasks_refresh_statuses", "schedule": 900.0},
    "reminder-scan": {"task": "studies.tasks.reminders_scan", "schedule": 900.0},
    "outbox-dispatch": {"task": "notifications.tasks.outbox_dispatch", "schedule": 60.0},
    # Runs once, in public.
    "schema-pool-refill": {
        "task": "tenants.tasks.schema_pool_refill",
        "schedule": 60.0,
        "tenant_schemas": ["public"],
    },
}

# --- REST API --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.authentication.TenantTokenAuthentication",
        "tenants.api.authentication.TenantSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["config.api.permissions.IsTenantMember"],
    "DEFAULT_PAGINATION_CLASS": "config.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "config.api.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Behind the ingress: trust exactly this many X-Forwarded-For hops for client IPs
    # (throttling); a client-supplied header must not choose its own identity.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_RATES": {"token": "20/min"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Suifang API",
    "DESCRIPTION": "Multi-center clinical follow-up. Every path is served on a tenant host.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Assets from the installed sidecar package: hospital intranets have no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "LanguageEnum": "tenants.models.Language",
        "TenantRoleEnum": "tenants.roles.Role",
        "SiteRoleEnum": "sites.models.SiteRole",
        "SubjectStatusEnum": "studies.models.SubjectStatus",
        "ReminderKindEnum": "notifications.models.ReminderKind",
        "QueryStatusEnum": "ecrf.models.QueryStatus",
        "FormVersionStatusEnum": "ecrf.models.FormVersionStatus",
        "TaskStatusEnum": "studies.models.TaskStatus",
        "ImportJobStateEnum": ["queued", "running", "done", "refused", "failed"],
    },
}

# --- email -----------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Suifang <noreply@suifang.local>")

# --- observability ---------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN", "")
LOG_FORMAT = env_str("LOG_FORMAT", "json")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
from config.logging import build_logging_config  # noqa: E402

LOGGING = build_logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL)

from config.observability import init_sentry  # noqa: E402

SENTRY_ENABLED = init_sentry(dsn=SENTRY_DSN, environment=env_str("SENTRY_ENVIRONMENT", "production"))

# Paths (not URL names) for redirects built without reversing the tenant URLconf.
LOGIN_URL_PATH = "/login/"
LOGIN_REDIRECT_URL_PATH = "/"
# static/ is ours; static_build/ holds the npm packages the pages use (ECharts), copied
# out of node_modules by `make install` (package.json "build:vendor"). Listed only when
# present so `manage.py check` stays quiet where npm has not run yet.
STATICFILES_DIRS = [BASE_DIR / "static", *[d for d in [BASE_DIR / "static_build"] if d.is_dir()]]

# --- PII keys (studies/pii.py) ---------------------------------------------------------
# AES-256-GCM keys: comma-separated urlsafe base64, 32 bytes each. The first encrypts, all
# decrypt. Rotation: put a new key in front, re-encrypt, then remove the old key.
PII_ENCRYPTION_KEYS = env_str("PII_ENCRYPTION_KEYS", "")
# HMAC-SHA256 key for keyed hashes (duplicate national IDs); separate from the above.
PII_HASH_KEY = env_str("PII_HASH_KEY", "")
# Pooled exports: the consortium keys (pseudonyms, date shifts) derive from this secret.
POOLING_SECRET = env_str("POOLING_SECRET", "")
# Non-operators signed in on the public host: consortium members, on these paths only.
PUBLIC_MEMBER_CHECK = "exports.pooling.selectors.is_consortium_member"
PUBLIC_MEMBER_PATH_PREFIXES = ("/consortia/", "/api/v1/consortia/")
