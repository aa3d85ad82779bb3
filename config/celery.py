"""The Celery app. Tasks are at-least-once nudges; the database row is the truth."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("backoffice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Before any worker, beat or publisher starts: JSON logs and the request id in tasks (core.task_context), and the
# worker and beat heartbeats behind /api/health/celery (monitoring.heartbeat).
from core.task_context import connect_celery_signals  # noqa: E402
from monitoring.heartbeat import connect_heartbeats  # noqa: E402

connect_celery_signals()
connect_heartbeats(app)
