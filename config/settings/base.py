"""Settings shared by every environment; everything that varies comes from the environment."""

from datetime import timedelta
from pathlib import Path

import environ

from config.db_router import REPLICA, ROUTER, replica_settings
from config.logging_setup import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(str(BASE_DIR / ".env"))

SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",  # failed sign-ins throttled per account and per IP (AXES_* below)
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served locally: /v1/docs works offline
    "accounts",
    "agents",
    "steps",
    "traces",
    "runner",
    "monitors",
    "ops",  # probes, metrics and the system page's state: reads the apps below, below the console
    "console",  # last: its admin replaces the apps' model admins with its pages (console/admin.py)
]

MIDDLEWARE = [
    # First: times every request (http.server.request.duration) and gives its log lines the request's ids.
    "config.request_metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin CSS, Swagger UI) from the web process itself: gunicorn serves none.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.RejectNulMiddleware",
    "config.middleware.ApiErrorMiddleware",
    "config.middleware.ReplicaReadsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.RequestIdMiddleware",
    "axes.middleware.AxesMiddleware",
    "accounts.middleware.AuditDeniedMiddleware",  # refused console requests go to the audit log
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
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

# The laptop default is a SQLite file; production sets DATABASE_URL=postgres://...
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
# Behind PgBouncer in transaction mode: no server-side cursors, and nothing prepared (steps.selectors._Statements).
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS", default=False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let the dev server and in-process runs write concurrently without
    # "database is locked"; synchronous=NORMAL is safe with WAL and avoids an fsync per commit.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )

# A PostgreSQL streaming replica of DATABASE_URL, parsed the same way (README "Read replicas"): lists, reports and the
# console read from it; without it every query goes to the one database.
if env("DATABASE_REPLICA_URL", default=""):
    DATABASES[REPLICA] = replica_settings(env.db("DATABASE_REPLICA_URL"), primary=DATABASES["default"])
    DATABASE_ROUTERS = [ROUTER]
# Seconds a browser's console pages read the primary after it sent a form, so the page it lands on shows the change.
STEPLENS_REPLICA_PIN_SECONDS = env.int("STEPLENS_REPLICA_PIN_SECONDS", default=10)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
# Where `collectstatic` gathers the files WhiteNoise serves (production.py hashes and compresses them).
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.authentication.HasOrganization"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
# Retry-After (seconds) of the 503 answered while the database is unreachable: clients (OTLP exporters included)
# retry a 503 after this delay instead of losing the request to a 500.
STEPLENS_DB_RETRY_AFTER_SECONDS = env.int("STEPLENS_DB_RETRY_AFTER_SECONDS", default=5)
# Largest JSON request body of the API (413 above it): a body is parsed whole, in memory (OTLP has its own limit).
STEPLENS_API_MAX_BODY_BYTES = env.int("STEPLENS_API_MAX_BODY_BYTES", default=16 * 1024 * 1024)
# People: Django's own accounts, plus permissions from organization roles (accounts.backends).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out account or address before any password check
    "django.contrib.auth.backends.ModelBackend",
    "accounts.backends.MembershipBackend",
]
# Sign-in throttling (django-axes): after this many failures an account, and separately an address, is locked out
# for the cool-off; a success resets the account's count.
AXES_FAILURE_LIMIT = env.int("STEPLENS_SIGNIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("STEPLENS_SIGNIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/steplens/locked.html"
AXES_VERBOSE = False  # no banner on every start; lockouts are still logged as warnings
# Teams (accounts/): how long an invitation link works, and the audit rows one /v1/audit page returns at most.
STEPLENS_INVITATION_TTL_HOURS = env.int("STEPLENS_INVITATION_TTL_HOURS", default=72)
STEPLENS_AUDIT_PAGE_MAX = env.int("STEPLENS_AUDIT_PAGE_MAX", default=500)

SPECTACULAR_SETTINGS = {
    "TITLE": "Steplens API",
    "DESCRIPTION": "Observability for LLM agent steps: runs, steps, usage, errors and traces.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request bodies get their own components: what a client must send (non-blank strings) differs from what it reads.
    "COMPONENT_SPLIT_REQUEST": True,
    # Error answers of every operation, optional parameters that may be empty, pinned discriminators.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.openapi.postprocess_error_responses",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: embedded mode runs tasks eagerly in process with no broker.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="memory://")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL == "memory://")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}

REDIS_URL = env("REDIS_URL", default=CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "")

# Where a step's trace_id/span_id link to in the user's tracing backend, e.g.
# "http://localhost:16686/trace/{trace_id}" (Jaeger). Empty: no link.
STEPLENS_TRACE_URL_TEMPLATE = env("STEPLENS_TRACE_URL_TEMPLATE", default="")

# LOG_FORMAT=json: one JSON object per line with request, organization, run and step ids; plain (the default) is
# one readable line. Either way secrets are scrubbed and WARNING+ records go to the recent-errors ring
# (config/logging_setup.py) that the console's system page shows, at most STEPLENS_RECENT_ERRORS of them.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
LOGGING = logging_config(log_format=LOG_FORMAT, level=env("LOG_LEVEL", default="INFO"))
STEPLENS_RECENT_ERRORS = env.int("STEPLENS_RECENT_ERRORS", default=100)
# Celery workers keep this configuration (JSON lines, the scrubbing, the ring) instead of replacing the root
# logger's handlers with their own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Beat's record of when each periodic task last ran, kept out of the source tree's root (var/ is
# git-ignored); losing it only makes each sweep run once at beat's next start.
CELERY_BEAT_SCHEDULE_FILENAME = env(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(BASE_DIR / "var" / "celerybeat-schedule")
)

# Agent runs: provider retries (attempts include the first), backoff, and how often a running run
# checks whether it was cancelled from another process.
STEPLENS_LLM_MAX_ATTEMPTS = env.int("STEPLENS_LLM_MAX_ATTEMPTS", default=3)
STEPLENS_LLM_RETRY_BASE_SECONDS = env.float("STEPLENS_LLM_RETRY_BASE_SECONDS", default=1.0)
STEPLENS_LLM_RETRY_MAX_SECONDS = env.float("STEPLENS_LLM_RETRY_MAX_SECONDS", default=30.0)
STEPLENS_CANCEL_POLL_SECONDS = env.float("STEPLENS_CANCEL_POLL_SECONDS", default=0.25)
STEPLENS_RUN_SOFT_TIME_LIMIT = env.int("STEPLENS_RUN_SOFT_TIME_LIMIT", default=15 * 60)
STEPLENS_SSE_PING_SECONDS = env.float("STEPLENS_SSE_PING_SECONDS", default=15.0)
# Silence before the first chunk of the built-in `scripted/slow-first-token` model: long enough to show that
# streams outlive gunicorn's timeout and idle proxies (tests shorten it).
STEPLENS_SLOW_FIRST_TOKEN_SECONDS = env.float("STEPLENS_SLOW_FIRST_TOKEN_SECONDS", default=75.0)
STEPLENS_SYNC_WAIT_SECONDS = env.float("STEPLENS_SYNC_WAIT_SECONDS", default=15 * 60)

# Crash safety of runs (README "Crash safety"): the worker executing a run touches its heartbeat this often; a
# heartbeat older than STALE_RUN means the worker is gone, and the sweep (every SWEEP seconds, Celery beat)
# resumes the run on another worker, up to RUN_MAX_ATTEMPTS executions, then fails it (stop reason `error`).
STEPLENS_RUN_HEARTBEAT_SECONDS = env.float("STEPLENS_RUN_HEARTBEAT_SECONDS", default=5.0)
STEPLENS_STALE_RUN_SECONDS = env.int("STEPLENS_STALE_RUN_SECONDS", default=60)
STEPLENS_RUN_MAX_ATTEMPTS = env.int("STEPLENS_RUN_MAX_ATTEMPTS", default=3)
STEPLENS_SWEEP_SECONDS = env.float("STEPLENS_SWEEP_SECONDS", default=15.0)
# A step still pending this long after it started cannot belong to a live run (a run's hard time limit is
# RUN_SOFT_TIME_LIMIT + 60 s); the sweep fails it, and any pending step of a run that already ended.
STEPLENS_STALE_STEP_SECONDS = env.int(
    "STEPLENS_STALE_STEP_SECONDS", default=STEPLENS_RUN_SOFT_TIME_LIMIT + 60 + STEPLENS_STALE_RUN_SECONDS
)
# Retention (README "Retention and deletion"): raw steps older than a project's, else the organization's,
# retention_days, else this default (unset: forever), are removed by the periodic task in batches of BATCH_SIZE
# steps (one short transaction each); rollups are kept unless `manage.py apply_retention --rollups`.
STEPLENS_RETENTION_DAYS = env.int("STEPLENS_RETENTION_DAYS", default=None)
STEPLENS_RETENTION_BATCH_SIZE = env.int("STEPLENS_RETENTION_BATCH_SIZE", default=1000)
STEPLENS_RETENTION_INTERVAL_SECONDS = env.float("STEPLENS_RETENTION_INTERVAL_SECONDS", default=3600.0)
# Deletion jobs (DELETE /v1/steps): steps deleted, and subtracted from the rollups, per transaction.
STEPLENS_DELETION_BATCH_SIZE = env.int("STEPLENS_DELETION_BATCH_SIZE", default=500)
# A deletion job with nothing done for RESUME_SECONDS (lost task, dead worker, failed batch) is queued again by the
# resume-deletions sweep, up to MAX_ATTEMPTS starts in all.
STEPLENS_DELETION_RESUME_SECONDS = env.float("STEPLENS_DELETION_RESUME_SECONDS", default=300.0)
STEPLENS_DELETION_MAX_ATTEMPTS = env.int("STEPLENS_DELETION_MAX_ATTEMPTS", default=5)
# Partitioned storage on PostgreSQL (README "Partitioned storage"): steps and their children are partitioned by
# the step's created_at in intervals of PARTITION_DAYS (aligned to Mondays 00:00 UTC); the periodic task keeps
# PARTITION_AHEAD intervals ahead created. A partition create or drop waits at most LOCK_TIMEOUT_MS for its lock,
# then is left for the next run (ingest and reads never queue behind it for longer).
STEPLENS_PARTITION_DAYS = env.int("STEPLENS_PARTITION_DAYS", default=7)
STEPLENS_PARTITION_AHEAD = env.int("STEPLENS_PARTITION_AHEAD", default=4)
STEPLENS_PARTITION_INTERVAL_SECONDS = env.float("STEPLENS_PARTITION_INTERVAL_SECONDS", default=3600.0)
STEPLENS_PARTITION_LOCK_TIMEOUT_MS = env.int("STEPLENS_PARTITION_LOCK_TIMEOUT_MS", default=2000)
CELERY_BEAT_SCHEDULE = {
    "recover-stale-runs": {"task": "agents.recover_stale_runs", "schedule": STEPLENS_SWEEP_SECONDS},
    "fail-stale-steps": {"task": "steps.fail_stale_steps", "schedule": STEPLENS_SWEEP_SECONDS},
    "apply-retention": {"task": "steps.apply_retention", "schedule": STEPLENS_RETENTION_INTERVAL_SECONDS},
    "ensure-partitions": {"task": "steps.ensure_partitions", "schedule": STEPLENS_PARTITION_INTERVAL_SECONDS},
    "resume-deletions": {"task": "steps.resume_deletions", "schedule": STEPLENS_SWEEP_SECONDS},
}

# The cache holds the rate-limit counters. CACHE_URL (e.g. redis://host:6379/1) shares them across
# processes; the default is per process (production.py defaults to REDIS_URL).
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

# Per API key request rate (config.throttling): over it, 429 with Retry-After. "<n>/<second|minute|hour|day>".
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["config.throttling.ApiKeyRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"api_key": env("STEPLENS_API_RATE", default="100000/minute")}

# --- OpenTelemetry and OTLP ingest (traces/) ----------------------------------------------------------------------
# Export is configured by the standard OTEL_* variables only (see config/telemetry.py), never here.
# Largest OTLP/HTTP body accepted by POST /v1/traces, compressed or inflated (413 above it).
STEPLENS_OTLP_MAX_BODY_BYTES = env.int("STEPLENS_OTLP_MAX_BODY_BYTES", default=8 * 1024 * 1024)
# Spans per OTLP request (413 above it, counted on the wire before anything is built): bounds the memory a small
# gzip body of millions of empty spans could take. SDK batch processors send 512 at most.
STEPLENS_OTLP_MAX_SPANS_PER_REQUEST = env.int("STEPLENS_OTLP_MAX_SPANS_PER_REQUEST", default=10_000)
# Largest span attribute value kept; a longer one is cut (visibly, JSON kept valid) and the answer says so.
STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES = env.int("STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES", default=1024 * 1024)
# Largest ProviderTrace request_json / response_json stored (agent loop and ingest alike): cut visibly above it,
# so one huge prompt cannot make a multi-megabyte row.
STEPLENS_PROVIDER_TRACE_MAX_BYTES = env.int("STEPLENS_PROVIDER_TRACE_MAX_BYTES", default=1024 * 1024)
# Ingest requests handled at once per web process; beyond that the endpoint answers 503 with Retry-After
# instead of queueing batches in memory.
STEPLENS_OTLP_MAX_CONCURRENT = env.int("STEPLENS_OTLP_MAX_CONCURRENT", default=8)
# Accepted requests are stored as IngestBatch rows (the durable queue) and mapped by workers on the `ingest`
# queue. Backpressure: with this many batches, or this many body bytes, accepted but not yet mapped, the endpoint
# answers 503 with Retry-After (0 turns a limit off).
STEPLENS_OTLP_BACKLOG_MAX_BATCHES = env.int("STEPLENS_OTLP_BACKLOG_MAX_BATCHES", default=2000)
STEPLENS_OTLP_BACKLOG_MAX_BYTES = env.int("STEPLENS_OTLP_BACKLOG_MAX_BYTES", default=1024 * 1024 * 1024)
STEPLENS_OTLP_RETRY_AFTER_SECONDS = env.int("STEPLENS_OTLP_RETRY_AFTER_SECONDS", default=2)
# Batches a worker claims and maps in one transaction (bigger inserts, fewer commits).
STEPLENS_OTLP_CLAIM_BATCHES = env.int("STEPLENS_OTLP_CLAIM_BATCHES", default=8)
# A batch processing for longer than the lease lost its worker: the sweep queues it again, up to MAX_ATTEMPTS
# claims, then marks it failed. Queued batches older than REQUEUE_AFTER get a new task (the broker may have
# lost theirs). Done batches are deleted after RETENTION_HOURS (their bodies are dropped when they are done).
STEPLENS_OTLP_BATCH_LEASE_SECONDS = env.int("STEPLENS_OTLP_BATCH_LEASE_SECONDS", default=300)
STEPLENS_OTLP_BATCH_MAX_ATTEMPTS = env.int("STEPLENS_OTLP_BATCH_MAX_ATTEMPTS", default=5)
STEPLENS_OTLP_REQUEUE_AFTER_SECONDS = env.int("STEPLENS_OTLP_REQUEUE_AFTER_SECONDS", default=60)
STEPLENS_OTLP_BATCH_RETENTION_HOURS = env.int("STEPLENS_OTLP_BATCH_RETENTION_HOURS", default=24)
CELERY_BEAT_SCHEDULE["sweep-ingest-batches"] = {"task": "traces.sweep_ingest_batches", "schedule": 30.0}
# Stable enum names in the OpenAPI schema (several fields share a name with different choices).
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "StepStatusEnum": "steps.models.StepStatus",
    "RunStatusEnum": "agents.models.RunStatus",
    "MonitorStateEnum": "monitors.models.MonitorState",
    "MonitorStateValueEnum": [("ok", "ok"), ("alerting", "alerting"), ("no_data", "no_data")],
    "FeedbackEnum": "steps.models.Feedback",
    "ToolReturnStatusEnum": [("success", "success"), ("error", "error")],
    "ReportSourceEnum": [("rollup", "rollup"), ("rollup+steps", "rollup+steps"), ("steps", "steps")],
    "ReasoningSourceEnum": [("model", "model"), ("summary", "summary")],
    "RequestErrorSourceEnum": [("run", "run"), ("step", "step"), ("provider_trace", "provider_trace")],
}

# --- Monitors and alerts (monitors/; README "Monitors and alerts") -------------------------------------------------
# Evaluation cycle period (Celery beat); the recovery margin (a fraction of the threshold) an alert must cross back
# before it resolves; notifications per monitor and cycle at most (every event is recorded regardless).
STEPLENS_MONITOR_EVALUATE_SECONDS = env.float("STEPLENS_MONITOR_EVALUATE_SECONDS", default=60.0)
STEPLENS_MONITOR_RECOVERY_MARGIN = env.float("STEPLENS_MONITOR_RECOVERY_MARGIN", default=0.1)
STEPLENS_MONITOR_MAX_NOTIFICATIONS_PER_CYCLE = env.int("STEPLENS_MONITOR_MAX_NOTIFICATIONS_PER_CYCLE", default=20)
CELERY_BEAT_SCHEDULE["evaluate-monitors"] = {
    "task": "monitors.evaluate_monitors",
    "schedule": STEPLENS_MONITOR_EVALUATE_SECONDS,
}
# Alert history (events, deliveries, attempts) older than this many days is removed by a periodic task (every
# STEPLENS_RETENTION_INTERVAL_SECONDS, in batches of STEPLENS_RETENTION_BATCH_SIZE); empty: kept forever. A
# monitor's state and its latest event are always kept.
_alert_retention = env.str("STEPLENS_ALERT_RETENTION_DAYS", default="90").strip()
STEPLENS_ALERT_RETENTION_DAYS = int(_alert_retention) if _alert_retention else None
if STEPLENS_ALERT_RETENTION_DAYS is not None and STEPLENS_ALERT_RETENTION_DAYS < 1:
    raise ValueError("STEPLENS_ALERT_RETENTION_DAYS must be at least 1 (or empty: keep forever).")
CELERY_BEAT_SCHEDULE["prune-alert-history"] = {
    "task": "monitors.prune_alert_history",
    "schedule": STEPLENS_RETENTION_INTERVAL_SECONDS,
}
# Webhook and email delivery: attempts (the first included), backoff doubling from BASE up to MAX seconds, the
# timeout of one webhook POST, and whether URLs may point at private, loopback or link-local addresses.
STEPLENS_NOTIFY_MAX_ATTEMPTS = env.int("STEPLENS_NOTIFY_MAX_ATTEMPTS", default=6)
STEPLENS_NOTIFY_RETRY_BASE_SECONDS = env.float("STEPLENS_NOTIFY_RETRY_BASE_SECONDS", default=30.0)
STEPLENS_NOTIFY_RETRY_MAX_SECONDS = env.float("STEPLENS_NOTIFY_RETRY_MAX_SECONDS", default=900.0)
STEPLENS_NOTIFY_TIMEOUT_SECONDS = env.float("STEPLENS_NOTIFY_TIMEOUT_SECONDS", default=10.0)
STEPLENS_NOTIFY_ALLOW_PRIVATE = env.bool("STEPLENS_NOTIFY_ALLOW_PRIVATE", default=False)
STEPLENS_NOTIFY_FROM_EMAIL = env("STEPLENS_NOTIFY_FROM_EMAIL", default="steplens@localhost")
# Base of the links in notifications (the console and the API as users reach them).
STEPLENS_PUBLIC_URL = env("STEPLENS_PUBLIC_URL", default="http://127.0.0.1:8000")
# Email goes through Django's backend: EMAIL_URL=smtp://user:password@host:587 (or smtp+tls://, smtp+ssl://);
# the default prints emails on the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))

# --- Operating Steplens (ops/, config/metrics.py; README "Operating Steplens") ---------------------------------------
# GET /metrics (Prometheus text) is served only when this token is set, to scrapes sending "Authorization: Bearer
# <token>". Metrics of several processes (gunicorn workers, Celery children) are summed through the directory named
# by the PROMETHEUS_MULTIPROC_DIR environment variable (read by prometheus-client itself, before settings load).
STEPLENS_METRICS_TOKEN = env("STEPLENS_METRICS_TOKEN", default="")
# Each readiness check, queue-depth read and worker broadcast gives up after this long.
STEPLENS_OPS_CHECK_TIMEOUT_SECONDS = env.float("STEPLENS_OPS_CHECK_TIMEOUT_SECONDS", default=2.0)
# The console's warning banner: mapping lag (age of the oldest unmapped OTLP batch) and queue depth thresholds, a
# periodic task late after this many of its periods; the banner is recomputed at most this often.
STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS = env.int("STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS", default=300)
STEPLENS_OPS_WARN_QUEUE_DEPTH = env.int("STEPLENS_OPS_WARN_QUEUE_DEPTH", default=1000)
STEPLENS_OPS_PERIODIC_LATE_FACTOR = env.float("STEPLENS_OPS_PERIODIC_LATE_FACTOR", default=4.0)
STEPLENS_OPS_BANNER_CACHE_SECONDS = env.int("STEPLENS_OPS_BANNER_CACHE_SECONDS", default=15)
# The state gauges (backlog, lag, queues, runs, pending steps) over OTLP: each exporting process reads them once per
# OTEL_METRIC_EXPORT_INTERVAL; turn off on all hosts but one to read them once.
STEPLENS_OTEL_STATE_METRICS = env.bool("STEPLENS_OTEL_STATE_METRICS", default=True)
