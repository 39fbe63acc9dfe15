"""TaskFlow settings, read from the environment (documented in deployments/.env.example).

Every value has a safe local default so that `make run` works on a machine with PostgreSQL,
RabbitMQ and Redis on localhost; production overrides them through the environment.
"""

import re
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from apps.tasks.queues import TASK_ROUTES, WORK_EXCHANGE_NAME, TaskQueue, all_queues

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local `.env` at the top of the checkout is read if present; the real environment wins.
env_file = env.str("ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(env_file).is_file():
    environ.Env.read_env(env_file, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
LOCAL_SECRET_KEY = "insecure-local-only-change-me-in-production-0123456789"
SECRET_KEY = env.str("SECRET_KEY", default=LOCAL_SECRET_KEY)
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=LOCAL_HOSTS)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="text")  # "text" for humans, "json" for log shippers

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "apps.accounts",
    "apps.handlers",
    "apps.tasks",
    "apps.monitoring",
    "apps.files",
    "apps.notifications",
    "apps.schedules",
    "apps.callbacks",
]

MIDDLEWARE = [
    # First, so that they see every request: X-Request-ID and the request log line; HTTP metrics.
    "apps.monitoring.middleware.RequestIdMiddleware",
    "apps.monitoring.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's and the dashboard's static files from gunicorn, without a web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: a NUL in an /admin/ query string is a 400; an action's ids that are no ids are dropped.
    "apps.core.middleware.AdminInputMiddleware",
]

ROOT_URLCONF = "taskflow.urls"
WSGI_APPLICATION = "taskflow.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/taskflow"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# No `SELECT 1` before the first query of every request on a kept connection (a round trip per
# request: 7-14% of POST /api/tasks in `make bench`). A connection PostgreSQL closed meanwhile (a
# restart) fails that request with a 503 (apps.core.exceptions), and Django replaces it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
# The task transitions (apps/tasks/transitions.py) run as prepared statements. Turn off behind a
# connection pooler in transaction mode that cannot carry them (PgBouncer before 1.21).
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
if DATABASE_PREPARED_STATEMENTS:
    # psycopg prepares nothing while this is None (Django's default). A huge threshold: only what
    # asks for it (prepare=True) is prepared; Django's own client-side-binding cursors never are.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 2**31 - 1
# A prepared statement's plan is at most this old: PostgreSQL keeps a generic plan until the
# table's statistics change, and one made while a table was small scans it as it grows
# (docs/benchmarks.md, W13). Each connection replans (DISCARD PLANS) this often; 0: every use.
DATABASE_PLAN_MAX_AGE_SECONDS = env.float("DATABASE_PLAN_MAX_AGE_SECONDS", default=1.0)
# Lets two test runs on one machine keep separate test databases.
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME", default="") or None}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            # Redis is for cache, throttling and locks: if it is down, requests go on without it.
            "IGNORE_EXCEPTIONS": True,
            "SOCKET_CONNECT_TIMEOUT": 1,
            "SOCKET_TIMEOUT": 1,
        },
        # Keeps apart deployments (or test runs) that share one Redis.
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default=""),
    }
}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
# Found in the apps directly, so no collectstatic step is needed (the image may still run it).
WHITENOISE_USE_FINDERS = True
# WhiteNoise warns on every request about a STATIC_ROOT that does not exist.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_AUTOREFRESH = DEBUG

# --- REST API -------------------------------------------------------------------------------


def _rate(value: str, name: str) -> str:
    """A request rate like 5/min (per s, min, hour or day), checked at start-up; "" for none."""
    value = value.strip()
    if value and not re.fullmatch(r"\d+/(s|sec|m|min|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name}={value!r}: expected a rate like 5/min or 1000/hour.")
    return value


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.BearerOrBareJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "apps.core.exceptions.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        # DRF's, refusing what the database cannot store (NUL, lone surrogates, Infinity), deep
        # nesting and duplicate keys; and form bodies that are not text in their charset.
        "apps.core.parsers.JSONParser",
        "apps.core.parsers.FormParser",
        "apps.core.parsers.MultiPartParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Rates per scope, counted in Redis (apps.core.throttling); "" turns a limit off.
    "DEFAULT_THROTTLE_CLASSES": ["apps.core.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": _rate(env.str("USER_RATE", default="1000/min"), "USER_RATE"),
        "login_account": _rate(
            env.str("LOGIN_RATE_PER_ACCOUNT", default="5/min"), "LOGIN_RATE_PER_ACCOUNT"
        ),
        "login_address": _rate(
            env.str("LOGIN_RATE_PER_ADDRESS", default="20/min"), "LOGIN_RATE_PER_ADDRESS"
        ),
        "register_address": _rate(
            env.str("REGISTER_RATE_PER_ADDRESS", default="10/hour"), "REGISTER_RATE_PER_ADDRESS"
        ),
        # Below the login's: a stolen access token must not add much to the guesses a login allows.
        "password_change": _rate(
            env.str("PASSWORD_CHANGE_RATE_PER_USER", default="10/hour"),
            "PASSWORD_CHANGE_RATE_PER_USER",
        ),
    },
    # Reverse proxies in front of gunicorn whose X-Forwarded-For is trusted for the client's
    # address. 0: none, the peer's address is the client's (a client's own X-Forwarded-For would
    # otherwise pick any address it likes, and escape the per-address limits).
    "NUM_PROXIES": env.int("TRUSTED_PROXY_COUNT", default=0),
}

# How long the user a JWT names is kept in the cache (apps.accounts.authentication): saving or
# deleting the user drops it at once; 0 reads PostgreSQL on every request.
AUTH_USER_CACHE_SECONDS = env.int("AUTH_USER_CACHE_SECONDS", default=60)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_ACCESS_LIFETIME_SECONDS", default=900)),
    "REFRESH_TOKEN_LIFETIME": timedelta(
        seconds=env.int("JWT_REFRESH_LIFETIME_SECONDS", default=7 * 24 * 3600)
    ),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
    "UPDATE_LAST_LOGIN": False,
    # A refresh answers a new refresh token too, and the one used is blacklisted (as is one sent
    # to /api/logout): a refresh token works once.
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
}

# The local default key is public (it is in this repository), and so is a short placeholder like
# "change-me": with either, anyone could sign a JWT for any user. A deployment that answers other
# hosts than this machine's must set its own; it does not start otherwise.
for _name, _key in (("SECRET_KEY", SECRET_KEY), ("JWT_SIGNING_KEY", SIMPLE_JWT["SIGNING_KEY"])):
    if set(ALLOWED_HOSTS) - set(LOCAL_HOSTS) and (_key == LOCAL_SECRET_KEY or len(_key) < 32):
        raise ImproperlyConfigured(
            f"{_name} is the local default or shorter than 32 characters, and ALLOWED_HOSTS "
            "reaches beyond this machine: set a long random one in the environment."
        )

SPECTACULAR_SETTINGS = {
    "TITLE": "TaskFlow API",
    "DESCRIPTION": "Create, watch and steer background tasks. Authenticate with a JWT from /api/login.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # drf-spectacular's default hook, then our error shape on every operation (4XX and 5XX).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.core.schema.add_error_responses",
    ],
}

# --- Task platform ---------------------------------------------------------------------------
TASKFLOW = {
    "RELEASE_INTERVAL_MS": env.int("RELEASE_INTERVAL_MS", default=1000),
    "RELEASE_BATCH_SIZE": env.int("RELEASE_BATCH_SIZE", default=500),
    # The most tasks one message carries, for types with a batch_size (1: a message per task).
    "MESSAGE_BATCH_MAX": env.int("MESSAGE_BATCH_MAX", default=16),
    # Full-jitter exponential backoff: wait before retry n = uniform(0, min(cap, base * 2**(n-1))).
    "RETRY_BACKOFF_BASE_SECONDS": env.float("RETRY_BACKOFF_BASE_SECONDS", default=2.0),
    "RETRY_BACKOFF_CAP_SECONDS": env.float("RETRY_BACKOFF_CAP_SECONDS", default=600.0),
    "DEFAULT_MAX_RETRIES": 3,
    "MAX_RETRIES_LIMIT": 10,
    # A queued task whose message was never confirmed by the broker is published again after this.
    "REPUBLISH_AFTER_SECONDS": env.float("REPUBLISH_AFTER_SECONDS", default=10.0),
    # A queued task published this long ago, whose queue holds no ready message, lost its message.
    "LOST_MESSAGE_AFTER_SECONDS": env.float("LOST_MESSAGE_AFTER_SECONDS", default=60.0),
    # While Redis does not answer, task types' rate limits are not enforced ("open": tasks start)
    # or their tasks wait until it answers ("closed"). Concurrency limits need only PostgreSQL.
    "RATE_LIMITS_WITHOUT_REDIS": env.str("RATE_LIMITS_WITHOUT_REDIS", default="open"),
    # Finished tasks (with their attempts and history) are deleted this many days after they
    # finished, once an hour (0: kept for ever).
    "TASK_RETENTION_DAYS": env.int("TASK_RETENTION_DAYS", default=0),
    # Extra handler modules to import at start-up (besides the built-ins and entry points).
    "HANDLER_MODULES": env.list("TASKFLOW_HANDLER_MODULES", default=[]),
    "MAX_PAYLOAD_BYTES": env.int("MAX_PAYLOAD_BYTES", default=256 * 1024),
    "BULK_MAX_TASKS": env.int("BULK_MAX_TASKS", default=1000),
    # Tasks one user may have postponed, queued, running or retrying at once (0: no cap).
    "MAX_ACTIVE_TASKS_PER_USER": env.int("MAX_ACTIVE_TASKS_PER_USER", default=10000),
    # Recurring schedules (apps.schedules): the shortest every_seconds, and how many one user
    # may have.
    "SCHEDULE_MIN_INTERVAL_SECONDS": env.int("SCHEDULE_MIN_INTERVAL_SECONDS", default=60),
    "MAX_SCHEDULES_PER_USER": env.int("MAX_SCHEDULES_PER_USER", default=100),
    "PUBLIC_BASE_URL": env.str("PUBLIC_BASE_URL", default=""),
    # RabbitMQ's consumer_timeout (30 min by default): every time limit must stay under it.
    "RABBITMQ_CONSUMER_TIMEOUT_SECONDS": env.int("RABBITMQ_CONSUMER_TIMEOUT_SECONDS", default=1800),
}

# --- Celery (namespace CELERY_) --------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=3.0)
CELERY_BROKER_HEARTBEAT = 30
# Publisher confirms: publishing returns only once RabbitMQ has taken the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_POOL_LIMIT = 10
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=4)
# Celery's Django fixup otherwise opens a new database connection for every task (18 % of a
# worker's time in `make bench`). A broken connection is still replaced: tasks.execute closes
# unusable connections when the database errors, and hands the message back.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Soft limit raises inside the handler (the attempt fails and is retried); the hard limit kills the
# process. Both stay well under RabbitMQ's consumer_timeout (30 min by default).
CELERY_TASK_SOFT_TIME_LIMIT = env.int("TASK_SOFT_TIME_LIMIT_SECONDS", default=900)
CELERY_TASK_TIME_LIMIT = env.int("TASK_HARD_TIME_LIMIT_SECONDS", default=960)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# Queues, exchanges and routes are declared in apps/tasks/queues.py (one place).
CELERY_TASK_QUEUES = all_queues()
CELERY_TASK_DEFAULT_QUEUE = TaskQueue.DEFAULT.value
CELERY_TASK_DEFAULT_EXCHANGE = WORK_EXCHANGE_NAME
CELERY_TASK_DEFAULT_ROUTING_KEY = TaskQueue.DEFAULT.value
CELERY_TASK_ROUTES = TASK_ROUTES
CELERY_TASK_CREATE_MISSING_QUEUES = False

# --- Files, mail and the network task types (send_email, process_image, download_files, fetch_url)
# Users' files go through Django's storage API (STORAGES["default"]): the local file system under
# MEDIA_ROOT by default; an S3-compatible backend (django-storages) is a settings change.
MEDIA_ROOT = BASE_DIR / env.str("MEDIA_ROOT", default="var/media")
FILE_UPLOAD_MAX_BYTES = env.int("FILE_UPLOAD_MAX_BYTES", default=50 * 1024 * 1024)
DOWNLOAD_MAX_FILE_BYTES = env.int("DOWNLOAD_MAX_FILE_BYTES", default=100 * 1024 * 1024)
DOWNLOAD_MAX_TOTAL_BYTES = env.int("DOWNLOAD_MAX_TOTAL_BYTES", default=500 * 1024 * 1024)
DOWNLOAD_TIMEOUT_SECONDS = env.float("DOWNLOAD_TIMEOUT_SECONDS", default=300.0)
# Larger images are refused before they are decoded (decompression bombs).
IMAGE_MAX_PIXELS = env.int("IMAGE_MAX_PIXELS", default=50_000_000)
# Networks that download_files and fetch_url may reach although they are not public (CIDRs,
# comma-separated). Empty: only public addresses.
SSRF_ALLOWED_NETWORKS = env.list("SSRF_ALLOWED_NETWORKS", default=[])

# --- Completion callbacks (apps.callbacks; docs/api.md, "Callbacks")
# The key each user's signing secret is derived from (HMAC of the user id): empty derives it from
# SECRET_KEY. Changing it changes every user's secret.
CALLBACK_SIGNING_KEY = env.str("CALLBACK_SIGNING_KEY", default="")
# POSTs per callback before it is given up (failed).
CALLBACK_MAX_ATTEMPTS = env.int("CALLBACK_MAX_ATTEMPTS", default=8)
# Each POST's connect and read timeout.
CALLBACK_TIMEOUT_SECONDS = env.float("CALLBACK_TIMEOUT_SECONDS", default=10.0)
# The wait before retry n: uniform(0, min(cap, base * 2**(n-1))) (apps.tasks.backoff).
CALLBACK_BACKOFF_BASE_SECONDS = env.float("CALLBACK_BACKOFF_BASE_SECONDS", default=10.0)
CALLBACK_BACKOFF_CAP_SECONDS = env.float("CALLBACK_BACKOFF_CAP_SECONDS", default=3600.0)
# send_email's SMTP server (seed 002's variable names).
EMAIL_HOST = env.str("MAIL_HOST", default="localhost")
EMAIL_PORT = env.int("MAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("MAIL_USERNAME", default="")
EMAIL_HOST_PASSWORD = env.str("MAIL_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("MAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("MAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("MAIL_TIMEOUT_SECONDS", default=30)
DEFAULT_FROM_EMAIL = env.str("MAIL_FROM", default="TaskFlow <taskflow@localhost>")

# --- Monitoring -------------------------------------------------------------------------------
# GET /metrics answers `Authorization: Bearer <METRICS_TOKEN>` (Prometheus) or a staff session.
# Empty: staff sessions only.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Logging ----------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "apps.core.logging.JsonFormatter"},
    },
    # request_id and user_id (API), task_id, task_type and attempt (workers) on every record.
    # No password in a URL, no Authorization credentials, no JWT in any line (RedactFilter).
    "filters": {
        "context": {"()": "apps.core.logging.ContextFilter"},
        "redact": {"()": "apps.core.logging.RedactFilter"},
        "fail_open": {"()": "apps.core.logging.OneLineFailOpenFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "amqp": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        "django_redis.cache": {"filters": ["fail_open"]},
    },
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
