"""Settings, all from the environment (django-environ); see .env.example.

The embedded default needs nothing running: a SQLite file, Celery tasks run
eagerly in-process and the cache is local memory. Set DATABASE_URL to a
PostgreSQL URL and REDIS_URL to a Redis URL for the real stack.
"""

import secrets
import sys
from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# No built-in key with DEBUG off: whoever knows the key can forge sessions and signed values, so a server, a worker
# or `check` refuses to start without one. (The Makefile's targets generate one per run when none is set;
# production sets its own: config/settings_production.py.) One-off commands that neither serve nor sign anything
# (migrations, collectstatic) run with a random key nobody knows.
KEYLESS_COMMANDS = {"makemigrations", "migrate", "showmigrations", "sqlmigrate", "collectstatic", "help", "version"}
_command = sys.argv[1] if len(sys.argv) > 1 and Path(sys.argv[0]).name in ("manage.py", "django-admin") else ""
SECRET_KEY = env.str("SECRET_KEY", default="") or ("insecure-dev-key-change-me" if DEBUG else "")
if not SECRET_KEY and _command in KEYLESS_COMMANDS:
    SECRET_KEY = secrets.token_urlsafe(50)
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set and DEBUG is off: refusing to start with a built-in key. Set SECRET_KEY to 50 or "
        "more random characters, e.g. SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))'), "
        "or set DEBUG=true for local development only."
    )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "core.admin_config.StaffAdminConfig",  # django.contrib.admin, with a second factor when STAFF_2FA_REQUIRED is on
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_beat",
    "import_export",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "axes",
    "core",
    "ledger",
    "providers",
    "payouts",
    "escrow",
    "monitoring",
    "analytics",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # first: request metrics for /metrics
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files (after collectstatic into STATIC_ROOT)
    "core.middleware.RequestContextMiddleware",
    "core.middleware.RefuseControlCharactersMiddleware",  # before anything reads the path or query string
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "core.staff_security.StaffActivityMiddleware",  # audit actor, and the idle timeout (not SESSION_SAVE_EVERY_REQUEST)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",  # sees the final answer, lockouts included
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into core.staff_security.lockout_response
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- Database: SQLite file by default (the embedded demo), PostgreSQL when configured.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'backoffice.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # libpq waits for a connection without limit by default: a black-holed database would hang health checks.
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Serialise writers at BEGIN so two demo processes cannot interleave a posting.
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and Celery broker when REDIS_URL is set; otherwise in-process.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = None
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# ETA/countdown tasks longer than this are redelivered; keep it above any countdown we use.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=3600)}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "ledger-nightly-integrity-check": {
        "task": "ledger.check_integrity",
        "schedule": crontab(hour=2, minute=30),
    },
    "ledger-expire-holds": {"task": "ledger.expire_holds", "schedule": crontab()},  # every minute
    "monitoring-reconcile-yesterday": {  # after the provider's day has closed (UTC)
        "task": "monitoring.reconcile_yesterday",
        "schedule": crontab(hour=2, minute=45),
    },
    "providers-sweep-money-movements": {"task": "providers.sweep_money_movements", "schedule": crontab()},
    "payouts-sync-batches": {"task": "payouts.sync_batches", "schedule": crontab(minute="*/5")},  # item statuses
    "payouts-cancel-unclaimed-items": {"task": "payouts.cancel_unclaimed_items", "schedule": crontab(minute=23)},
    "providers-sweep-webhook-events": {"task": "providers.sweep_webhook_events", "schedule": crontab(minute="*/5")},
    # Proves beat and the workers alive and the queue moving (monitoring.heartbeat, /api/health/celery).
    "monitoring-heartbeat": {"task": "monitoring.heartbeat", "schedule": crontab(), "options": {"expires": 120}},
    "core-purge-idempotency-keys": {
        "task": "core.purge_idempotency_keys",
        "schedule": crontab(minute=15),
    },
    "escrow-time-out-purchases": {"task": "escrow.time_out_purchases", "schedule": crontab()},  # every minute
    "escrow-apply-deal-timeouts": {"task": "escrow.apply_deal_timeouts", "schedule": crontab()},  # every minute
    "escrow-retry-deal-transfers": {"task": "escrow.retry_deal_transfers", "schedule": crontab(minute=7)},  # hourly
    # Stale processing locks and money movements unknown for too long raise alerts (monitoring.checks).
    "monitoring-check-stuck-work": {"task": "monitoring.check_stuck_work", "schedule": crontab(minute="*/5")},
    # Summary tables for the dashboard: today and yesterday often, the last weeks nightly (late outcomes).
    "analytics-roll-up-recent-days": {"task": "analytics.roll_up_recent_days", "schedule": crontab(minute="*/10")},
    "analytics-roll-up-settling-days": {
        "task": "analytics.roll_up_recent_days",
        "schedule": crontab(hour=3, minute=10),
        "kwargs": {"days": env.int("ANALYTICS_SETTLE_DAYS", default=35)},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` copies every app's static files here; WhiteNoise serves them (with DEBUG off too).
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")

# --- Staff security (core.staff_security, core.staff_audit, core.tokens).
# A session ends after this many minutes without a request (the dashboard's own refreshes do not count).
STAFF_SESSION_IDLE_MINUTES = env.int("STAFF_SESSION_IDLE_MINUTES", default=30)
SESSION_COOKIE_AGE = STAFF_SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = False  # StaffActivityMiddleware saves it on every request but a background refresh
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
# The admin asks for a TOTP code (django-otp) after the password; `manage.py staff_totp <username>` gives a device.
STAFF_2FA_REQUIRED = env.bool("STAFF_2FA_REQUIRED", default=False)
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Back office")  # the name authenticator apps show
# django-axes: AXES_FAILURE_LIMIT failed sign-ins lock that username from that IP (only) for the cool-off.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.staff_security.client_ip"
AXES_LOCKOUT_CALLABLE = "core.staff_security.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # sign-ins are in the audit log
AXES_VERBOSE = False
# Client API tokens (core.models.ApiToken): staff issue them in the admin with this default lifetime (empty there:
# no date). No token, nor a legacy DRF one, is accepted once older than API_TOKEN_MAX_AGE_DAYS (0: no limit).
API_TOKEN_DEFAULT_DAYS = env.int("API_TOKEN_DEFAULT_DAYS", default=90)
API_TOKEN_MAX_AGE_DAYS = env.int("API_TOKEN_MAX_AGE_DAYS", default=0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.ExpiringTokenAuthentication",  # Authorization: Token <key>; revocable, expiring
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.ApiSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    # JSON only (amounts are JSON integers; a form cannot tell 12 from "12"), within DATA_UPLOAD_MAX_MEMORY_SIZE
    # (413) and a sane nesting depth (400); any other body type is a 415.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONBodyParser"],
    "DEFAULT_PAGINATION_CLASS": "core.api.BoundedPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Back office API",
    "DESCRIPTION": "Money movement, ledger and payouts. Amounts are integers in minor units.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "ProviderEnum": "providers.models.Provider",
        "StatusEnum": "providers.models.Payment.Status",
        "PayoutBatchStatusEnum": "payouts.models.PayoutBatch.Status",
        "PayoutItemStatusEnum": "payouts.models.PayoutItem.Status",
        "AnalyticsKindEnum": "analytics.models.Kind",
    },
}

# --- Idempotency-Key on API POSTs (Stripe semantics).
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
# An in-flight key older than this is treated as abandoned by a crashed request.
IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS = env.int("IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS", default=300)

# --- Ledger.
# Balance rows per hot account (accounts allowed to go negative); writers spread over them.
LEDGER_HOT_ACCOUNT_SHARDS = env.int("LEDGER_HOT_ACCOUNT_SHARDS", default=16)
LEDGER_MAX_RETRIES = env.int("LEDGER_MAX_RETRIES", default=5)
# Accounts whose (immutable) facts each process remembers; see ledger.services.
LEDGER_REMEMBERED_ACCOUNTS = env.int("LEDGER_REMEMBERED_ACCOUNTS", default=100_000)

# --- Daily reconciliation (monitoring/reconciliation/).
RECONCILIATION_PROVIDERS = env.list("RECONCILIATION_PROVIDERS", default=["stripe"])  # compared every night
# Our records this long before or after the day are read too, so one recorded just across midnight still matches.
RECONCILIATION_RECORD_SLACK_HOURS = env.int("RECONCILIATION_RECORD_SLACK_HOURS", default=24)
RECONCILIATION_STAGE_BATCH = env.int("RECONCILIATION_STAGE_BATCH", default=5_000)  # rows per staging insert

# --- The status dashboard (the admin index): how often its sections, and its charts, refresh themselves.
DASHBOARD_POLL_SECONDS = env.int("DASHBOARD_POLL_SECONDS", default=5)
DASHBOARD_CHART_POLL_SECONDS = env.int("DASHBOARD_CHART_POLL_SECONDS", default=60)

# --- Analytics (analytics/): summary tables rolled up by beat; see CELERY_BEAT_SCHEDULE.
ANALYTICS_RECENT_DAYS = env.int("ANALYTICS_RECENT_DAYS", default=2)  # each frequent run: today and yesterday
ANALYTICS_ROLLUP_CHUNK_DAYS = env.int("ANALYTICS_ROLLUP_CHUNK_DAYS", default=31)  # days per transaction
# CSV export from the admin changelists (django-import-export): staff with the model's view permission.
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"
ADMIN_EXPORT_MAX_ROWS = env.int("ADMIN_EXPORT_MAX_ROWS", default=100_000)  # one file is built in memory

# --- Money. The largest amount one movement may carry, in major units of its currency (core.money).
MONEY_MAX_MAJOR_UNITS = env.int("MONEY_MAX_MAJOR_UNITS", default=99_999_999)

# Webhook requests rejected (bad signature, malformed body) per source before it is refused for a while.
WEBHOOK_REJECTED_RATE = env.str("WEBHOOK_REJECTED_RATE", default="60/m")

# --- Payment providers. PROVIDER_MODE=sandbox points every client at SANDBOX_URL.
PROVIDER_MODE = env.str("PROVIDER_MODE", default="sandbox")
# Payouts: batches above this total (minor units) need a second staff user's approval.
PAYOUT_APPROVAL_THRESHOLD_MINOR = env.int("PAYOUT_APPROVAL_THRESHOLD_MINOR", default=1_000_000)
PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS = env.int("PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS", default=25)
SANDBOX_URL = env.str("SANDBOX_URL", default="http://127.0.0.1:8765")
# The sandbox's webhook delivery (providers/sandbox/webhooks.py), as real providers deliver: parallel threads, and
# a delivery our endpoint refused to take (no connection, timeout, 5xx, 408, 429) retried after base, 2 x base, ...
# up to the cap, until max attempts or max age (Stripe: 3 days). `manage.py sandbox` serves on SANDBOX_URL's port
# and points each provider's deliveries at SANDBOX_WEBHOOK_BASE_URL/webhooks/<provider>/ when that is set.
SANDBOX_WEBHOOK_BASE_URL = env.str("SANDBOX_WEBHOOK_BASE_URL", default="")
SANDBOX_WEBHOOK_WORKERS = env.int("SANDBOX_WEBHOOK_WORKERS", default=8)
SANDBOX_WEBHOOK_TIMEOUT_SECONDS = env.float("SANDBOX_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
SANDBOX_WEBHOOK_RETRY_BASE_SECONDS = env.float("SANDBOX_WEBHOOK_RETRY_BASE_SECONDS", default=1.0)
SANDBOX_WEBHOOK_RETRY_CAP_SECONDS = env.float("SANDBOX_WEBHOOK_RETRY_CAP_SECONDS", default=3600.0)
SANDBOX_WEBHOOK_RETRY_JITTER = env.float("SANDBOX_WEBHOOK_RETRY_JITTER", default=0.1)
SANDBOX_WEBHOOK_MAX_ATTEMPTS = env.int("SANDBOX_WEBHOOK_MAX_ATTEMPTS", default=25)
SANDBOX_WEBHOOK_MAX_AGE_SECONDS = env.float("SANDBOX_WEBHOOK_MAX_AGE_SECONDS", default=3 * 24 * 3600.0)
# Unknown connected accounts are created active when first asked for (as once onboarding finished).
SANDBOX_ACTIVATE_ACCOUNTS = env.bool("SANDBOX_ACTIVATE_ACCOUNTS", default=True)
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=10.0)
# The money-moving protocol: how long a worker owns a movement it is sending, and how old an unanswered
# intent gets before the sweeper takes it over. Keep it above the longest provider call with its retries.
PROTOCOL_CLAIM_SECONDS = env.int("PROTOCOL_CLAIM_SECONDS", default=120)
# Chaos tests only (tests/chaos/, providers/protocol/pause.py): a file naming a protocol step at which one process
# pauses (for PROTOCOL_PAUSE_SECONDS) so the test can kill it there. Empty (the default): never.
PROTOCOL_PAUSE_FILE = env.str("PROTOCOL_PAUSE_FILE", default="")
PROTOCOL_PAUSE_SECONDS = env.float("PROTOCOL_PAUSE_SECONDS", default=60.0)
# Escrow deals (escrow/deals/). Releases above this amount (minor units) need a second staff user's approval.
ESCROW_APPROVAL_THRESHOLD_MINOR = env.int("ESCROW_APPROVAL_THRESHOLD_MINOR", default=1_000_000)
# A deal's deadline is at most this far ahead when it is opened (a later one is a 400): money is not held for years.
ESCROW_DEADLINE_MAX = timedelta(days=env.int("ESCROW_DEADLINE_MAX_DAYS", default=365))
# A held deal's timeout policy applies this long after its deadline.
ESCROW_TIMEOUT_GRACE = timedelta(seconds=env.int("ESCROW_TIMEOUT_GRACE_SECONDS", default=15 * 60))
# The timeout job's circuit breaker: past either limit a run stops and raises a staff alert.
ESCROW_TIMEOUT_MAX_DEALS_PER_RUN = env.int("ESCROW_TIMEOUT_MAX_DEALS_PER_RUN", default=50)
ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR = env.int("ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR", default=10_000_000)
# Card authorizations lapse after about 7 days: flag them after this; deals that may outlive it are captured at once.
ESCROW_AUTHORIZATION_WARN_AFTER = timedelta(hours=env.int("ESCROW_AUTHORIZATION_WARN_AFTER_HOURS", default=6 * 24))
# Transfers Stripe declined are tried again (a new attempt, a new key) after 1 h, 2 h, 4 h, 8 h. After the last
# attempt a staff alert waits for a person.
ESCROW_TRANSFER_MAX_ATTEMPTS = env.int("ESCROW_TRANSFER_MAX_ATTEMPTS", default=5)
ESCROW_TRANSFER_RETRY_BASE = timedelta(seconds=env.int("ESCROW_TRANSFER_RETRY_BASE_SECONDS", default=3600))
# Where providers send the customer back after a redirect payment: <url>/<payment reference>/<outcome>.
PAYMENT_RETURN_URL = env.str("PAYMENT_RETURN_URL", default="http://127.0.0.1:8000/payments/return")
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="sk_test_sandbox")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="whsec_sandbox")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
PAYPAL_CLIENT_ID = env.str("PAYPAL_CLIENT_ID", default="sandbox-client")
PAYPAL_CLIENT_SECRET = env.str("PAYPAL_CLIENT_SECRET", default="sandbox-secret")
PAYPAL_WEBHOOK_ID = env.str("PAYPAL_WEBHOOK_ID", default="WHSANDBOX")  # the spec allows [a-zA-Z0-9]+
PAYPAL_API_BASE = env.str("PAYPAL_API_BASE", default="https://api-m.sandbox.paypal.com")
PAYMONGO_SECRET_KEY = env.str("PAYMONGO_SECRET_KEY", default="sk_test_paymongo_sandbox")
PAYMONGO_WEBHOOK_SECRET = env.str("PAYMONGO_WEBHOOK_SECRET", default="whsk_paymongo_sandbox")
PAYMONGO_API_BASE = env.str("PAYMONGO_API_BASE", default="https://api.paymongo.com")
MAYA_PUBLIC_KEY = env.str("MAYA_PUBLIC_KEY", default="pk-maya-sandbox")
MAYA_SECRET_KEY = env.str("MAYA_SECRET_KEY", default="sk-maya-sandbox")
MAYA_WEBHOOK_SECRET = env.str("MAYA_WEBHOOK_SECRET", default="maya-webhook-sandbox")
MAYA_API_BASE = env.str("MAYA_API_BASE", default="https://pg-sandbox.paymaya.com")

# --- Alerts (core.alerts; what each means: docs/runbook.md). Mail goes through Django's email backend, set by
# EMAIL_URL (django-environ: consolemail:// prints it, smtp+tls://user:password@host:587 sends it).
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)  # seconds: a slow mail server must not hold a worker
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="backoffice@localhost")
# Alerts go to the active Finance operators and approvers with an email address, and to these addresses.
ALERT_EMAILS = env.list("ALERT_EMAILS", default=[])
# A warning whose cause comes back within this many minutes of its last resolution is not emailed again.
ALERT_WARNING_REOPEN_QUIET_MINUTES = env.int("ALERT_WARNING_REOPEN_QUIET_MINUTES", default=60)
# A money movement whose outcome has been unknown this long raises its provider's alert (and fails diagnose).
ALERT_UNKNOWN_AFTER_MINUTES = env.int("ALERT_UNKNOWN_AFTER_MINUTES", default=60)
# Where staff open the admin: links in alert emails.
BACKOFFICE_URL = env.str("BACKOFFICE_URL", default="http://127.0.0.1:8000")

LOG_FORMAT = env.str("LOG_FORMAT", default="json")  # or "console": key=value lines
# One JSON object a line on standard error, for our loggers, Django's and Celery's alike, with the request id and
# PII redacted (core.logging; Celery applies this too: core.task_context).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "core.logging.log_formatter", "renderer": LOG_FORMAT}},
    "handlers": {"console": {"class": "core.logging.ConsoleHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own handlers (plain text, runserver's lines) give way to the root's.
        **{name: {"handlers": [], "level": "INFO", "propagate": True} for name in ("django", "django.server")},
        # httpx logs every request at INFO; provider calls are recorded by availability and our own logs.
        **{name: {"level": "WARNING"} for name in ("httpx", "httpcore", "stripe")},
    },
}

# --- Health and metrics (monitoring.health, monitoring.views_metrics; docs/observability.md).
HEALTH_KEY_PREFIX = env.str("HEALTH_KEY_PREFIX", default="bo:health")  # worker and beat heartbeats in Redis
HEALTH_CELERY_WORKER_STALE_SECONDS = env.int("HEALTH_CELERY_WORKER_STALE_SECONDS", default=60)  # written every 15 s
HEALTH_CELERY_BEAT_STALE_SECONDS = env.int("HEALTH_CELERY_BEAT_STALE_SECONDS", default=180)  # beat sends every minute
HEALTH_CELERY_FLOW_STALE_SECONDS = env.int("HEALTH_CELERY_FLOW_STALE_SECONDS", default=300)  # monitoring.heartbeat
# /metrics answers these addresses or networks (REMOTE_ADDR only), and Authorization: Bearer <METRICS_TOKEN>.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.0/8", "::1"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Circuit breakers and availability (providers.breaker, providers.availability, providers.retry).
# With REDIS_URL set, breaker state and availability figures live in Redis and every process shares
# them; without it (the embedded demo) each process keeps its own in memory.
PROVIDER_STATE_KEY_PREFIX = env.str("PROVIDER_STATE_KEY_PREFIX", default="bo:providers")
PROVIDER_BREAKER_DEFAULTS = {
    "failure_threshold": env.int("PROVIDER_BREAKER_FAILURE_THRESHOLD", default=5),
    "success_threshold": env.int("PROVIDER_BREAKER_SUCCESS_THRESHOLD", default=2),
    "half_open_max_calls": env.int("PROVIDER_BREAKER_HALF_OPEN_MAX_CALLS", default=1),
    "base_backoff_seconds": env.float("PROVIDER_BREAKER_BASE_BACKOFF_SECONDS", default=30.0),
    "max_backoff_seconds": env.float("PROVIDER_BREAKER_MAX_BACKOFF_SECONDS", default=600.0),
    "jitter": env.float("PROVIDER_BREAKER_JITTER", default=0.2),
    # A half-open trial that never reports gives its slot back after this; keep it above PROVIDER_TIMEOUT_SECONDS.
    "trial_timeout_seconds": env.float("PROVIDER_BREAKER_TRIAL_TIMEOUT_SECONDS", default=60.0),
}
# Per-provider overrides of the defaults above, e.g. {"paypal": {"failure_threshold": 3}}.
PROVIDER_BREAKERS: dict[str, dict[str, float]] = {}
PROVIDER_AVAILABILITY_WINDOW_SECONDS = env.int("PROVIDER_AVAILABILITY_WINDOW_SECONDS", default=300)
PROVIDER_AVAILABILITY_BUCKET_SECONDS = env.int("PROVIDER_AVAILABILITY_BUCKET_SECONDS", default=1)
# Retries of calls that are safe to repeat (same idempotency key); waits use full jitter.
PROVIDER_RETRY_ATTEMPTS = env.int("PROVIDER_RETRY_ATTEMPTS", default=3)
PROVIDER_RETRY_BASE_DELAY_SECONDS = env.float("PROVIDER_RETRY_BASE_DELAY_SECONDS", default=0.5)
PROVIDER_RETRY_MAX_DELAY_SECONDS = env.float("PROVIDER_RETRY_MAX_DELAY_SECONDS", default=5.0)
