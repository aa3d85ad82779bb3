"""Test settings: the real stack (PostgreSQL and Redis) unless told otherwise."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/backoffice")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("CONN_MAX_AGE", "0")
os.environ.setdefault("SECRET_KEY", "tests-only-" + "k" * 50)  # config.settings refuses to start without one

# Under pytest-xdist each worker has its own database (pytest-django adds a suffix) and its own Redis database,
# counted down from the one given: circuit breakers, rate limits and caches never leak between workers.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    _base, _, _db = os.environ["REDIS_URL"].rpartition("/")
    os.environ["REDIS_URL"] = f"{_base}/{int(_db or 0) - int(_worker[2:])}"

from config.settings import *  # noqa: E402, F403

CELERY_TASK_ALWAYS_EAGER = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The sandbox retries webhooks our endpoint did not take within seconds, not days (0.25 s, 0.5 s, 1 s, 2 s).
SANDBOX_WEBHOOK_RETRY_BASE_SECONDS = 0.25
SANDBOX_WEBHOOK_RETRY_CAP_SECONDS = 2.0
SANDBOX_WEBHOOK_RETRY_JITTER = 0.0
SANDBOX_WEBHOOK_MAX_ATTEMPTS = 5
SANDBOX_WEBHOOK_MAX_AGE_SECONDS = 60.0
