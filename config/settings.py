"""Berth settings: one module, driven only by environment variables, checked at start.

With DATABASE_URL and REDIS_URL unset, Berth talks to the private PostgreSQL and Redis
that `make run` keeps under .data/, so `manage.py <command>` works beside a running
`make run` with no configuration at all.
"""

import os
from pathlib import Path

import dj_database_url
import redis
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("BERTH_DATA_DIR", BASE_DIR / ".data"))


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false.")


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number (seconds).") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def _env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _secret_key() -> str:
    key = os.environ.get("BERTH_SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            "BERTH_SECRET_KEY is not set. Production mode (BERTH_DEBUG=false) needs a long random "
            "value, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Development: a key kept under .data/ (mode 0600) so sessions survive restarts.
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        return value


DEBUG = _env_bool("BERTH_DEBUG", True)
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = _env_list("BERTH_ALLOWED_HOSTS", ["*"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("BERTH_ALLOWED_HOSTS is empty: name the host names Berth is served on.")
CSRF_TRUSTED_ORIGINS = _env_list("BERTH_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "orchestrator",
    "nodes",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Data stores -------------------------------------------------------------------------------
RUN_DIR = DATA_DIR / "run"
_default_db = f"postgres://postgres@/berth?host={RUN_DIR}"
DATABASE_URL = os.environ.get("DATABASE_URL") or _default_db
# Connections come from a pool in each process (psycopg_pool, Django's "pool" option). Under
# ASGI each request runs in a thread of its own, so a connection kept per thread
# (CONN_MAX_AGE) is never reused: every API request opened one, several milliseconds of
# PostgreSQL's CPU. BERTH_DB_POOL_SIZE=0 turns the pool off (then BERTH_DB_CONN_MAX_AGE applies).
DB_POOL_SIZE = int(_env_float("BERTH_DB_POOL_SIZE", 10, minimum=0))
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=0 if DB_POOL_SIZE else int(_env_float("BERTH_DB_CONN_MAX_AGE", 60)),
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DB_POOL_SIZE:
    # A request waits at most `timeout` seconds for a free connection, then fails (500).
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_SIZE,
        "timeout": 10,
    }
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must name a PostgreSQL database (postgres://...).")

REDIS_URL = os.environ.get("REDIS_URL") or f"redis://127.0.0.1:{os.environ.get('BERTH_REDIS_PORT', '6389')}/0"
if not REDIS_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured("REDIS_URL must start with redis:// or rediss://")

CHANNEL_LAYERS = {
    "default": {
        # channels_redis's layer, taking a process's messages in batches (config/channel_layer.py)
        "BACKEND": "config.channel_layer.BatchedRedisChannelLayer",
        # The socket timeout must outlast channels_redis's 5 s blocking reads, or every idle
        # WebSocket is dropped after 5 s (redis-py's default timeout is also 5 s).
        # At most `max_connections` Redis calls of a process are in flight; more wait for a
        # free connection (config/channel_layer.py: POOL_WAIT), as thousands of agents joining
        # or leaving their groups at once do.
        # The capacity bounds a whole web process's inbox, not one consumer's: channels_redis
        # keeps one Redis key per process for all its consumers, and drops (with only an INFO
        # line) what arrives past the bound. A dispatch to thousands of nodes puts one frame
        # in for each agent the process serves, so the bound must outnumber its agents; what
        # a process never reads expires after `expiry`.
        # A command that meets a connection Redis closed (it restarted) reconnects and goes
        # again once: processes keep their connections (orchestrator/publish.py keeps one
        # event loop), and a stale one must not fail a dispatch or an agent's hello.
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 30,
                    "max_connections": 2000,
                    "retry_on_error": [redis.exceptions.ConnectionError],
                }
            ],
            "capacity": 100_000,
            "expiry": 30,
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
# kombu's Redis transport, with a channel that survives closing on a dead Redis (without it
# a Redis restart could make the worker exit: config/broker.py).
CELERY_BROKER_TRANSPORT = "config.broker:Transport"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = _env_bool("BERTH_CELERY_EAGER", False)
# Placement passes run in one process of their own, the scheduler (`celery worker -Q
# scheduling --concurrency 1`), as kube-scheduler is one process: its snapshot cache then
# holds every placement it committed, where pool processes taking turns would each re-read
# the nodes the others placed onto (orchestrator/tasks.py). Everything else (the node
# monitor, the resync) runs on the `celery` queue, served by the ordinary workers.
SCHEDULING_QUEUE = "scheduling"
CELERY_TASK_ROUTES = {
    "orchestrator.reconcile_pending": {"queue": SCHEDULING_QUEUE},
    "orchestrator.reconcile_deployment": {"queue": SCHEDULING_QUEUE},
}

# --- Orchestration ---------------------------------------------------------------------------
# A node whose agent has sent no heartbeat for this long is NotReady.
NODE_GRACE_SECONDS = _env_float("BERTH_NODE_GRACE_SECONDS", 10.0, minimum=1.0)
# How often agents heartbeat (told to each agent when it connects): the shortest interval.
AGENT_HEARTBEAT_SECONDS = _env_float("BERTH_AGENT_HEARTBEAT_SECONDS", 2.0, minimum=0.2)
# A large fleet heartbeats less often, so that all of it sends at most this many a second,
# but never less often than three times per grace unless the shortest interval is longer
# (nodes.heartbeats.interval_for; Nomad's max_heartbeats_per_second). 1,000/s: every 2 s up
# to 2,000 nodes, 3.3 s from 3,333 (with the default 10 s grace).
AGENT_MAX_HEARTBEATS_PER_SECOND = _env_float("BERTH_AGENT_MAX_HEARTBEATS_PER_SECOND", 1000.0, minimum=1.0)
if AGENT_HEARTBEAT_SECONDS * 2 > NODE_GRACE_SECONDS:
    raise ImproperlyConfigured(
        "BERTH_AGENT_HEARTBEAT_SECONDS must be at most half of BERTH_NODE_GRACE_SECONDS, "
        "or a single late heartbeat marks a healthy node NotReady."
    )
# A tenth of the grace (1 s for the default 10 s, at most 5 s): how late past the grace a
# silent node may be noticed, against a scan of every node per pass.
NODE_MONITOR_INTERVAL_SECONDS = _env_float(
    "BERTH_NODE_MONITOR_INTERVAL_SECONDS", min(max(NODE_GRACE_SECONDS / 10, 1.0), 5.0), minimum=0.2
)
RESYNC_INTERVAL_SECONDS = _env_float("BERTH_RESYNC_INTERVAL_SECONDS", 30.0, minimum=1.0)
# Events not seen again for this long are deleted (Kubernetes keeps them an hour, with
# --event-ttl); a day here, so that yesterday's "who scaled it" is still on the page.
EVENT_TTL_SECONDS = _env_float("BERTH_EVENT_TTL_SECONDS", 24 * 3600.0, minimum=60.0)
# How often the old events are pruned: a tenth of the TTL, at most every 10 minutes.
EVENT_PRUNE_INTERVAL_SECONDS = min(EVENT_TTL_SECONDS / 10, 600.0)
# Agents joining one web process at a time (handshake to full desired set sent); the
# others are told to come back shortly (HTTP 503), their knock counting as a heartbeat
# (web/consumers/admission.py). Enough to keep its database threads busy.
AGENT_JOINS_IN_FLIGHT = int(_env_float("BERTH_AGENT_JOINS_IN_FLIGHT", 32, minimum=1))
JOIN_TOKEN_TTL_SECONDS = _env_float("BERTH_JOIN_TOKEN_TTL_SECONDS", 24 * 3600.0, minimum=60.0)

# --- Auth ------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "web.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "web.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Berth API",
    "DESCRIPTION": "Deploy and run containers on many servers.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from our own static files: no CDN (servers often have no way out).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Web -------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
if not DEBUG:
    # collectstatic's target in production images; in development files come from the finders.
    STATIC_ROOT = Path(os.environ.get("BERTH_STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "web" / "static"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if not DEBUG:
    SESSION_COOKIE_SECURE = _env_bool("BERTH_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = _env_bool("BERTH_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]  # health checks come over plain HTTP from inside
    SECURE_HSTS_SECONDS = int(_env_float("BERTH_HSTS_SECONDS", 365 * 24 * 3600))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("BERTH_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = _env_bool("BERTH_HSTS_PRELOAD", False)
    # Whether subdomains and the preload list are covered is the site owner's decision.
    SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]
    SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("BERTH_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per task received/succeeded and per beat tick would bury everything else
        # (the node monitor runs every second); failures still log.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
    },
}
WHITENOISE_USE_FINDERS = DEBUG
