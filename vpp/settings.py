"""The one settings module. Everything comes from the environment, with zero-setup defaults.

No configuration: SQLite file under ``var/``, in-memory channel layer, Celery tasks run in-process.
``DATABASE_URL=postgres://...``: PostgreSQL through psycopg 3.
``REDIS_URL=redis://...``: channels-redis layer and a real Celery broker (workers and beat on the same Redis).

Why one module: every setting the project reads is here, each with its environment variable, type and default, so an
operator reads one file (the project's rule: one env-driven settings module with typed helpers that fail loudly).
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import plotly
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE

from vpp.env import (
    ImproperlyConfiguredEnv,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_opt,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VPP_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
# "production" turns on HTTPS-only cookies, the HTTPS redirect and HSTS (``manage.py check --deploy`` is clean);
# "development" (the default) is the embedded ``make run``: plain http on 127.0.0.1.
VPP_ENV = env_choice("VPP_ENV", "development", choices=("development", "production"))
PRODUCTION = VPP_ENV == "production"


def _secret_key() -> str:
    """SECRET_KEY from the environment; with none, a random key kept in var/ so sessions survive restarts."""
    configured = env_opt("SECRET_KEY")
    if configured:
        return configured
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "axes",
    "csp",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from this server (/api/docs/ works offline)
    "channels",
    "vpp",
    "chargers",
    "fleet",
    "markets",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username + IP before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "vpp.urls"
ASGI_APPLICATION = "vpp.asgi.application"
WSGI_APPLICATION = None

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

# --- Database -------------------------------------------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite"))
if DATABASE_URL is None:
    DATABASES: dict[str, Any] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "vpp.sqlite3"),
            # WAL lets the server, the worker and the management commands read while one writes.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(VAR_DIR / "test_vpp.sqlite3")},
        }
    }
else:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        # A database that is away must cost a request or a group commit seconds, never a hang: libpq gives up
        # connecting after DB_CONNECT_TIMEOUT_S (the whole startup, authentication included), the server cancels a
        # statement after DB_STATEMENT_TIMEOUT_S and a lock wait after DB_LOCK_TIMEOUT_S, and TCP keepalives plus
        # tcp_user_timeout drop a connection whose peer vanished (a partition that swallows packets). These are
        # the web requests' and the workers' limits; the CSMS writer threads set tighter ones on their own
        # connections (DB_WRITER_STATEMENT_TIMEOUT_S, chargers.writer). A server that is alive at the TCP level but
        # answers nothing (paused) is caught by the writer's own stall watchdog (DB_WRITER_STALL_S).
        _statement_ms = env_int("DB_STATEMENT_TIMEOUT_S", 15, minimum=0) * 1000
        _lock_ms = env_int("DB_LOCK_TIMEOUT_S", 5, minimum=0) * 1000
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            {
                "connect_timeout": env_int("DB_CONNECT_TIMEOUT_S", 5, minimum=1),
                "options": f"-c statement_timeout={_statement_ms} -c lock_timeout={_lock_ms}",
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": env_int("DB_CONNECT_TIMEOUT_S", 5, minimum=1) * 3000,
            }
        )
# The CSMS group-commit writers (chargers.writer): a station waits for its answer, and retransmits a CALL that is
# answered InternalError, so a batch statement that takes longer than this is better cancelled (0 = the default
# above). DB_WRITER_STALL_S bounds a whole batch: past it the waiting stations are answered InternalError (never
# acknowledged without storage) and new jobs fail at once until the database answers again.
DB_WRITER_STATEMENT_TIMEOUT_S = env_int("DB_WRITER_STATEMENT_TIMEOUT_S", 5, minimum=0)
DB_WRITER_STALL_S = env_float("DB_WRITER_STALL_S", 10.0, minimum=0.1)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and Celery -------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
# A group member that stops renewing its membership (a node killed without a goodbye) leaves the group after this.
# Every member renews far more often (fan-out nodes every 3 s, the dispatcher every DISPATCH_TELEMETRY_REJOIN_S, a
# dashboard page every DASHBOARD_REJOIN_S), so only the dead go: channels-redis's default keeps them a day, and
# every dispatch fan-out would keep pushing into their queues.
CHANNEL_LAYER_GROUP_EXPIRY_S = env_int("CHANNEL_LAYER_GROUP_EXPIRY_S", 120, minimum=30)

if REDIS_URL is None:
    CHANNEL_LAYERS: dict[str, Any] = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, exactly channels-redis's 5 s blocking pop,
                # so an idle consumer's receive() would now and then die with TimeoutError: give reads headroom.
                # redis-py 8 caps a pool at 100 connections and fails the 101st command at once: a reconnect wave of
                # a thousand chargers notifying their replaced connections needs more, briefly.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": env_int("REDIS_SOCKET_TIMEOUT", 30, minimum=10),
                        # No socket_connect_timeout here: redis-py 8's asyncio connect with one made an event loop's
                        # shutdown hang (tests/vpp/intake, on cancelling a pending receive); a connect then times out
                        # after socket_timeout, and a refused one fails at once. The consumers' pumps and the fan-out
                        # node back off and retry either way (chargers.outage).
                        "max_connections": env_int("REDIS_MAX_CONNECTIONS", 2000, minimum=10),
                    }
                ],
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "vpp"),
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000, minimum=10),
                "expiry": 60,
                "group_expiry": CHANNEL_LAYER_GROUP_EXPIRY_S,
            },
        }
    }

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
# Without a broker there is no worker to hand tasks to: run them in the calling process.
CELERY_TASK_ALWAYS_EAGER = REDIS_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Publishing a task to a Redis that is away fails within seconds instead of hanging the publisher: connects and
# reads time out (the worker's BRPOP polls every second, well inside socket_timeout). Publishers that must not block
# (the CSMS's telemetry hand-off, fleet.jobs.task_enqueue_background) retry on their own thread.
CELERY_BROKER_CONNECTION_TIMEOUT = env_int("REDIS_CONNECT_TIMEOUT_S", 3, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": env_int("REDIS_CONNECT_TIMEOUT_S", 3, minimum=1),
    "socket_timeout": env_int("REDIS_SOCKET_TIMEOUT", 30, minimum=10),
}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}  # filled by vpp.celery from each app's BEAT_SCHEDULE

# --- Internationalisation: UTC everywhere --------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# plotly.js is served from the pinned plotly package itself (static/plotly/plotly.min.js): no CDN, no vendored copy.
STATICFILES_DIRS = [BASE_DIR / "static", ("plotly", str(Path(plotly.__file__).parent / "package_data"))]
STATIC_ROOT = VAR_DIR / "staticfiles"

LOGIN_URL = "/login/"  # every user's sign-in page (the admin's login is for staff only)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
# People's passwords (not stations': those are random machine secrets, chargers/passwords.py): Django's validators.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Access hardening ----------------------------------------------------------------------------------------------
# Login attempts (admin login): AXES_FAILURE_LIMIT failures for one username from one IP lock that pair out for
# AXES_COOLOFF_MINUTES; a success resets the count. The IP is REMOTE_ADDR, which behind the trusted proxy
# (OCPP_TRUSTED_PROXIES + OCPP_PROXY_SECRET, chargers.proxy) is the client's address the proxy saw, and otherwise the
# TCP peer's: never a header a client wrote (axes would read X-Forwarded-For through django-ipware if installed).
AXES_CLIENT_IP_CALLABLE = "chargers.proxy.request_client_address"
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# Content Security Policy (django-csp 4): scripts only from this origin (plotly.js is a static file of the pinned
# plotly package, no CDN) or inline with the per-request nonce (``nonce="{{ request.csp_nonce }}"``); styles also
# inline, for the templates' style attributes and the styles plotly.js injects into its charts; images also data:
# and blob: (plotly's download-as-PNG). The live feed's WebSocket is same-origin ('self' covers ws(s) in CSP 3).
# The API docs (Swagger UI, ReDoc) are static files of this server too (drf-spectacular-sidecar).
CONTENT_SECURITY_POLICY: dict[str, Any] = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", "blob:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# The CRL and the OCSP responder stay plain HTTP where asked so (RFC 5280 / RFC 6960 distribute them over http; they
# are signed, carry no secret, and a relying party checking a certificate may not be able to verify TLS yet): never
# redirected to HTTPS. The proxy's plain port forwards these and the stations' /ocpp/ only (deploy/haproxy.cfg).
# Nor is the load balancer's health check (/healthz: plain HTTP from the balancer to each node).
SECURE_REDIRECT_EXEMPT = [r"^pki/(crl|ocsp)(/|$)", r"^healthz$"]

if PRODUCTION:
    if DEBUG:
        raise RuntimeError("VPP_ENV=production with DEBUG=1: turn DEBUG off")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    # Inert since chargers.proxy (ASGI, HTTP too) drops X-Forwarded-Proto before Django sees it and sets the scheme
    # itself from the trusted proxy (OCPP_TRUSTED_PROXIES + OCPP_PROXY_SECRET); kept so an existing setting still loads.
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- REST API --------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # API keys first: DRF answers 401 with the first class's challenge (Api-Key); the session has none (403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Every API error is an RFC 9457 problem document (application/problem+json): vpp/problems.py.
    "EXCEPTION_HANDLER": "vpp.problems.api_exception_handler",
}
# Django's own CSRF refusal: a problem document under /api/, Django's page elsewhere.
CSRF_FAILURE_VIEW = "vpp.problems.csrf_failure"
SPECTACULAR_SETTINGS = {
    "TITLE": "V2G fleet VPP aggregator API",
    "DESCRIPTION": "Fleet flexibility, stations, market bids and regulation dispatch.",
    "VERSION": "0.1.0",
    # Swagger UI and ReDoc from the pinned drf-spectacular-sidecar package (static files of this server), no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- CSMS --------------------------------------------------------------------------------------------------------
OCPP_HEARTBEAT_INTERVAL = env_int("OCPP_HEARTBEAT_INTERVAL", 60, minimum=1)
OCPP_HEARTBEAT_GRACE = env_int("OCPP_HEARTBEAT_GRACE", 30, minimum=0)
OCPP_CALL_TIMEOUT = env_int("OCPP_CALL_TIMEOUT", 30, minimum=1)
# A CALL with the message id *and payload* of one stored this long ago (s) is a retransmit, answered from the log.
# 30 days: the edge agent keeps a buffered message until it is acknowledged, however long the outage, so a copy
# stored just before its acknowledgement was lost may come back weeks later with the same id and payload. The
# payload digest already makes a reused id harmless; the window only bounds the lookup. At least an hour: it
# cannot switch deduplication off.
OCPP_RETRANSMIT_WINDOW = env_int("OCPP_RETRANSMIT_WINDOW", 30 * 86400, minimum=3600)
# Committed telemetry (live feed, fleet SoC tracking) is handed downstream at most this often per server process,
# batched: per-batch publishing cost more CPU than storing the readings once a thousand stations report every second.
OCPP_TELEMETRY_INTERVAL = env_float("OCPP_TELEMETRY_INTERVAL", 0.2, minimum=0.0)
# Records of CSMS calls (answers already delivered) are written once the burst they belong to pauses this long.
OCPP_LOG_LINGER = env_float("OCPP_LOG_LINGER", 0.1, minimum=0.0)
# Bounds (issue 13): jobs waiting for a group commit (awaiting submitters wait for room), frames of one station
# waiting to be handled (the socket is then read no further) and CSMS calls queued for one station (more are
# answered "busy" at once). OCPP-J lets a station have one CALL outstanding, so a full inbox means a misbehaving one.
OCPP_WRITER_QUEUE_MAX = env_int("OCPP_WRITER_QUEUE_MAX", 10_000, minimum=10)
OCPP_INBOX_MAX = env_int("OCPP_INBOX_MAX", 100, minimum=1)
OCPP_CALLS_MAX = env_int("OCPP_CALLS_MAX", 20, minimum=1)
# Every consumer checks this often that the station's row still names its socket; if another took the station over
# (two processes claimed it at once, or the "replaced" notice was lost), it closes with 4000 (replaced).
OCPP_OWNERSHIP_CHECK_S = env_float("OCPP_OWNERSHIP_CHECK_S", 15.0, minimum=0.1)
# Hardening (issue 14). A WebSocket message above OCPP_MAX_MESSAGE_BYTES closes the socket with 1009 (Daphne
# refuses it while it is still arriving, so it never sits in memory whole; the consumer checks again). Each station
# may send OCPP_MAX_MESSAGES_PER_S frames a second on average, in bursts of up to OCPP_MESSAGE_BURST; CALLs beyond
# that get a CALLERROR (not stored, so the station sends them again later).
OCPP_MAX_MESSAGE_BYTES = env_int("OCPP_MAX_MESSAGE_BYTES", 64 * 1024, minimum=1024)
OCPP_MAX_MESSAGES_PER_S = env_float("OCPP_MAX_MESSAGES_PER_S", 50.0, minimum=0.1)
OCPP_MESSAGE_BURST = env_int("OCPP_MESSAGE_BURST", 200, minimum=1)
# Failed OCPP handshakes allowed per station id and per client address within the window (s); beyond them the
# handshake is refused with 429 before any password is checked, until the window has passed.
OCPP_AUTH_FAILURES_PER_STATION = env_int("OCPP_AUTH_FAILURES_PER_STATION", 10, minimum=1)
OCPP_AUTH_FAILURES_PER_ADDRESS = env_int("OCPP_AUTH_FAILURES_PER_ADDRESS", 50, minimum=1)
OCPP_AUTH_FAILURE_WINDOW_S = env_float("OCPP_AUTH_FAILURE_WINDOW_S", 60.0, minimum=1.0)
# A connected station not yet Accepted re-reads its registration status at most this often (seconds) before a frame
# is refused for it: an operator's `station accept` takes effect on the open connection even if the station could not
# be asked to boot again (chargers.consumers).
OCPP_BOOT_RECHECK_S = env_float("OCPP_BOOT_RECHECK_S", 10.0, minimum=0.0)
# Invalid API keys (REST and ws/regulation) allowed per client address within the window (s); beyond them that
# address's keys are refused without a database lookup until the window has passed (fleet.keys).
API_UNKNOWN_KEYS_PER_ADDRESS = env_int("API_UNKNOWN_KEYS_PER_ADDRESS", 20, minimum=1)
API_UNKNOWN_KEY_WINDOW_S = env_float("API_UNKNOWN_KEY_WINDOW_S", 60.0, minimum=1.0)
# vpp.serve logs every cyclic-GC pass that stops the server longer than this (ms); 0 = off. For diagnosing tails.
GC_PAUSE_LOG_MS = env_float("GC_PAUSE_LOG_MS", 0.0, minimum=0.0)
# The event loop under Daphne's Twisted reactor (vpp.serve): uvloop (libuv) spends less CPU per frame than asyncio's
# pure-Python selector loop; "asyncio" is the standard loop, e.g. to rule uvloop out when diagnosing.
SERVER_EVENT_LOOP = env_choice("SERVER_EVENT_LOOP", "uvloop", choices=("uvloop", "asyncio"))
# Frames go to the socket when written, not one loop pass later (chargers.daphne_eager_write); off = Twisted as is.
SERVER_EAGER_WRITE = env_bool("SERVER_EAGER_WRITE", True)

# --- Security profiles 2/3: the built-in PKI and the TLS listener (chargers.pki, vpp.serve --tls-port) ------------
# CA keys are encrypted PEM files under PKI_DIR; the passphrase comes from PKI_PASSPHRASE or PKI_PASSPHRASE_FILE, else
# (development only) one is generated into var/ (0600) on first use, as SECRET_KEY is.
PKI_DIR = Path(env_str("PKI_DIR", str(VAR_DIR / "pki")))
PKI_PASSPHRASE = env_opt("PKI_PASSPHRASE")
PKI_PASSPHRASE_FILE = env_opt("PKI_PASSPHRASE_FILE")
# Production never generates one: a passphrase in var/ next to var/pki/*.key.pem protects nothing (whoever reads
# one reads the other). Set PKI_PASSPHRASE_FILE outside VPP_VAR_DIR, or use PKCS#11; `check --deploy` says so.
PKI_PASSPHRASE_GENERATE = not PRODUCTION
# CA keys in an HSM instead (chargers.pki.hsm): the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so;
# unset: the encrypted files above. Keys are generated in the token labelled PKI_PKCS11_TOKEN_LABEL and never leave
# it; the user PIN comes from PKI_PKCS11_PIN or the file PKI_PKCS11_PIN_FILE. A token that does not answer within
# PKI_PKCS11_TIMEOUT_S fails the signing (PkiError), never falls back to files.
PKI_PKCS11_MODULE = env_opt("PKI_PKCS11_MODULE")
PKI_PKCS11_TOKEN_LABEL = env_opt("PKI_PKCS11_TOKEN_LABEL")
PKI_PKCS11_PIN = env_opt("PKI_PKCS11_PIN")
PKI_PKCS11_PIN_FILE = env_opt("PKI_PKCS11_PIN_FILE")
PKI_PKCS11_TIMEOUT_S = env_float("PKI_PKCS11_TIMEOUT_S", 10.0, minimum=0.1)
if PKI_PKCS11_MODULE and not PKI_PKCS11_TOKEN_LABEL:
    raise ImproperlyConfiguredEnv("PKI_PKCS11_MODULE is set: set PKI_PKCS11_TOKEN_LABEL to the token's label too")
if PKI_PKCS11_MODULE and bool(PKI_PKCS11_PIN) == bool(PKI_PKCS11_PIN_FILE):
    raise ImproperlyConfiguredEnv("PKI_PKCS11_MODULE is set: set one of PKI_PKCS11_PIN_FILE and PKI_PKCS11_PIN")
# The TLS listener's certificate and key (PEM); unset: a server certificate issued from the built-in PKI into PKI_DIR.
TLS_CERT_FILE = env_opt("TLS_CERT_FILE")
TLS_KEY_FILE = env_opt("TLS_KEY_FILE")
# Client certificates (profile 3) are verified against this CA bundle; unset: the built-in PKI's root and sub-CA.
TLS_CLIENT_CA_FILE = env_opt("TLS_CLIENT_CA_FILE")
# TLS terminated by a proxy in front of Daphne (deploy/haproxy.cfg, chargers.proxy; HTTP and WebSockets): the addresses
# (CIDRs) whose X-Forwarded-Proto/-For, Client-Cert and X-Client-Cert-Verify headers are believed. Empty: such headers
# are stripped unread from every connection (a client connecting directly cannot claim TLS, a certificate or an
# address in a header).
OCPP_TRUSTED_PROXIES = [str(ipaddress.ip_network(cidr, strict=False)) for cidr in env_list("OCPP_TRUSTED_PROXIES", [])]
# ... and only when the request also carries X-Proxy-Secret equal to this (the proxy adds it: VPP_PROXY_SECRET in
# deploy/haproxy.cfg). The proxy's address alone is not proof: any process on its host has it. From the file
# OCPP_PROXY_SECRET_FILE (read once at start) or OCPP_PROXY_SECRET; at least 32 characters. OCPP_TRUSTED_PROXIES
# without a secret stops the start: every proxied station would otherwise be refused, or (worse) believed.
OCPP_PROXY_SECRET_MIN_LENGTH = 32


def _proxy_secret() -> str:
    path, value = env_opt("OCPP_PROXY_SECRET_FILE"), env_opt("OCPP_PROXY_SECRET")
    if path and value:
        raise ImproperlyConfiguredEnv("set one of OCPP_PROXY_SECRET_FILE and OCPP_PROXY_SECRET, not both")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfiguredEnv(f"OCPP_PROXY_SECRET_FILE {path}: {exc.strerror}") from exc
    secret = value or ""
    if secret and len(secret) < OCPP_PROXY_SECRET_MIN_LENGTH:
        raise ImproperlyConfiguredEnv(f"the proxy secret must be at least {OCPP_PROXY_SECRET_MIN_LENGTH} characters")
    if OCPP_TRUSTED_PROXIES and not secret:
        raise ImproperlyConfiguredEnv(
            "OCPP_TRUSTED_PROXIES is set: set OCPP_PROXY_SECRET_FILE (or OCPP_PROXY_SECRET) to the secret the proxy "
            "adds as X-Proxy-Secret (VPP_PROXY_SECRET in deploy/haproxy.cfg)"
        )
    return secret


OCPP_PROXY_SECRET = _proxy_secret()
# Station certificates (SignCertificate -> CertificateSigned): at most this many requests per station per day, and
# a connected station is asked for a new CSR (TriggerMessage) once its certificate expires within this many days.
PKI_SIGN_PER_DAY = env_int("PKI_SIGN_PER_DAY", 5, minimum=1)
PKI_RENEW_BEFORE_DAYS = env_int("PKI_RENEW_BEFORE_DAYS", 30, minimum=1)
# OCSP and Plug & Charge (chargers.pki.ocsp, chargers.handlers.plug_and_charge). PKI_OCSP_URL: the public base URL
# relying parties reach this server at (e.g. https://csms.example.com); set, every leaf certificate issued names
# <base>/pki/ocsp in its authorityInfoAccess. PKI_OCSP_TIMEOUT_S bounds each request to a responder (connect + answer).
PKI_OCSP_URL = env_opt("PKI_OCSP_URL")
PKI_OCSP_TIMEOUT_S = env_float("PKI_OCSP_TIMEOUT_S", 5.0, minimum=0.1)
# Responder URLs come from stations (OCSPRequestData, certificates' authorityInfoAccess): only public addresses are
# asked, unless in these CIDRs (e.g. an in-house responder); never loopback or cloud metadata by a station's say-so.
PKI_OUTBOUND_ALLOWED_NETWORKS = [
    str(ipaddress.ip_network(cidr, strict=False)) for cidr in env_list("PKI_OUTBOUND_ALLOWED_NETWORKS", [])
]
# What stations can make this server ask (review 14, finding 4): responders per message (Authorize,
# GetCertificateStatus, GetCertificateChainStatus; the rest are not asked), look-ups in flight per station and in all
# (the rest wait, within the message's deadline), and how long a responder that failed (no connection, timeout,
# HTTP error) is not asked again, nor an answer that could not be used re-asked for the same certificate.
PKI_OCSP_URLS_PER_MESSAGE = env_int("PKI_OCSP_URLS_PER_MESSAGE", 4, minimum=1)
PKI_OCSP_LOOKUPS_PER_STATION = env_int("PKI_OCSP_LOOKUPS_PER_STATION", 2, minimum=1)
PKI_OCSP_LOOKUPS_TOTAL = env_int("PKI_OCSP_LOOKUPS_TOTAL", 32, minimum=1)
PKI_OCSP_FAILURE_CACHE_S = env_float("PKI_OCSP_FAILURE_CACHE_S", 60.0, minimum=0.0)
# PEM bundle of the contract (MO) CA certificates: the trust anchors of contract certificates (with our own CAs). An
# OCSP answer counts only when its issuer is one of these or chains up to one; a PEM chain must end at one.
PKI_CONTRACT_CA_FILE = env_opt("PKI_CONTRACT_CA_FILE")
# Where Get15118EVCertificate's EXI requests are relayed (HTTP POST, JSON); unset: they are answered Failed.
PKI_CONTRACT_PROVIDER_URL = env_opt("PKI_CONTRACT_PROVIDER_URL")
PKI_CONTRACT_PROVIDER_TIMEOUT_S = env_float("PKI_CONTRACT_PROVIDER_TIMEOUT_S", 5.0, minimum=0.1)

# --- Regulation dispatch (vpp.dispatch) ----------------------------------------------------------------------------
DISPATCH_REFRESH_S = env_float("DISPATCH_REFRESH_S", 5.0, minimum=0.1)  # in-memory fleet state reload period
DISPATCH_HOLD_S = env_float("DISPATCH_HOLD_S", 60.0, minimum=1.0)  # each setpoint must be holdable this long
DISPATCH_CALL_TIMEOUT_S = env_float("DISPATCH_CALL_TIMEOUT_S", 1.5, minimum=0.1)  # per command, < signal period
# Closed-loop tracking: allocate by each vehicle's measured response gain plus a bounded fleet correction.
DISPATCH_CLOSED_LOOP = env_bool("DISPATCH_CLOSED_LOOP", True)
# Issue 13 (dispatch correctness): the intake's clock window, idle dispatchers, the telemetry group re-join.
# A value stamped further than this ahead of this server's clock is refused (422 / an error frame), never dispatched.
REGULATION_SIGNAL_MAX_SKEW_S = env_float("REGULATION_SIGNAL_MAX_SKEW_S", 5.0, minimum=0.0)
# A value older than this is stored (the operator's record; retransmissions stay idempotent) but not dispatched.
REGULATION_SIGNAL_MAX_AGE_S = env_float("REGULATION_SIGNAL_MAX_AGE_S", 10.0, minimum=0.0)
DISPATCH_IDLE_S = env_float("DISPATCH_IDLE_S", 600.0, minimum=1.0)  # a dispatcher with no signal this long stops
DISPATCHERS_MAX = env_int("DISPATCHERS_MAX", 64, minimum=1)  # per server process; the least recently used goes
DISPATCH_TELEMETRY_REJOIN_S = env_float("DISPATCH_TELEMETRY_REJOIN_S", 5.0, minimum=0.1)  # group_add again this often
# A reserve event's own run (vpp.dispatch.reserve) re-sends its setpoints (each valid DISPATCH_HOLD_S) this often.
RESERVE_RESEND_S = env_float("RESERVE_RESEND_S", 15.0, minimum=0.5)

# --- Markets: synchronized reserve (markets.reserve) ---------------------------------------------------------------
# PJM's average days between synchronized reserve events: how far a shortfall penalty reaches back (check PJM's).
RESERVE_PENALTY_AVERAGE_DAYS = env_float("RESERVE_PENALTY_AVERAGE_DAYS", 3.0, minimum=0.0)

# --- Markets: bid optimiser ------------------------------------------------------------------------------------
# Flat energy price ($/MWh) for the fleet's own charging and the expected energy of activations: the imported
# price files are capacity (reserve/regulation) prices only. 0 costs charging at degradation only.
MARKETS_ENERGY_PRICE_USD_PER_MWH = env_float("MARKETS_ENERGY_PRICE_USD_PER_MWH", 40.0, minimum=0.0)

# --- Utility programs (vpp.utility) ------------------------------------------------------------------------------
# Each organisation's files in its own subdirectory (<slug>/), its secrets in UTILITY_ORG<id>_* variables.
UTILITY_CREDENTIALS_DIR = Path(env_str("UTILITY_CREDENTIALS_DIR", str(VAR_DIR / "utility-credentials")))
# Plain-http utility endpoints (a token or a secret would go in clear): tests and development only.
UTILITY_ALLOW_HTTP = env_bool("UTILITY_ALLOW_HTTP", False)
UTILITY_EVENT_LEAD_S = env_float("UTILITY_EVENT_LEAD_S", 5.0, minimum=0.0)  # setpoints out this long before start
# Run the clients inside the (one) server process, on its loop: what the embedded in-memory channel layer needs to
# reach the stations. Several server processes (REDIS_URL, --workers): run ``manage.py utility run`` once instead.
UTILITY_IN_SERVER = env_bool("UTILITY_IN_SERVER", False)
UTILITY_RETRY_S = env_float("UTILITY_RETRY_S", 30.0, minimum=1.0)  # a program that failed to start: retried this often
# The programs are re-read this often: a disabled, deleted or changed program's client stops (and restarts with the
# new configuration), a newly enabled one starts.
UTILITY_RELOAD_S = env_float("UTILITY_RELOAD_S", 5.0, minimum=0.5)

# --- Fleet -------------------------------------------------------------------------------------------------------
# Committed telemetry reaches the fleet (SoC beliefs, sessions) as one Celery task per window per server process,
# carrying the newest reading of each station's EVSE and transaction and every status change: the worker's load
# follows the number of cars, not the stations' reporting rate; a status change (a car leaving) goes at once.
# 0: one task per committed batch.
FLEET_INGEST_WINDOW_S = env_float("FLEET_INGEST_WINDOW_S", 5.0, minimum=0.0)
# A car's derived state (VehicleState: SoC shown, flexibility envelope) follows its telemetry this much later at most;
# plug-ins, unplugs and plans within 2 s (fleet.services.vehicles.vehicle_request_refresh).
FLEET_TELEMETRY_REFRESH_S = env_float("FLEET_TELEMETRY_REFRESH_S", 30.0, minimum=1.0)
FLEET_DEFAULT_MOBILITY_FLOOR_PCT = env_int("FLEET_DEFAULT_MOBILITY_FLOOR_PCT", 20, minimum=0, maximum=100)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # One line per task run drowns the console when tasks run eagerly in-process; failures still show.
        "celery.app.trace": {"level": "WARNING"},
        "kombu.connection": {"level": "ERROR"},
        # django-axes logs its banner and every login at INFO; lockouts (WARNING) still show.
        "axes": {"level": "WARNING"},
    },
}

DEMO_ADMIN_PASSWORD = env_opt("DEMO_ADMIN_PASSWORD")
