"""Fail fast, with a clear message, when PostgreSQL or Redis does not answer."""

import os
import sys

import psycopg
import redis

database_url = os.environ["DATABASE_URL"]
redis_url = os.environ["REDIS_URL"]
problems = []
try:
    # Connect to the server's maintenance database: the test database may not exist yet.
    base, _, _ = database_url.rpartition("/")
    psycopg.connect(f"{base}/postgres", connect_timeout=3).close()
except Exception as error:
    problems.append(
        f"PostgreSQL at {database_url} does not answer: {error}\n"
        "  start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    )
try:
    redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
except Exception as error:
    problems.append(
        f"Redis at {redis_url} does not answer: {error}\n"
        '  start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
    )
if problems:
    print("make test needs PostgreSQL and Redis:\n" + "\n".join(problems), file=sys.stderr)
    sys.exit(2)
print(f"services ok: {database_url} {redis_url}")
