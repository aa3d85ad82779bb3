"""Plumbing the benchmarks share: the PostgreSQL server from DATABASE_URL, a throwaway
database per run, and pointing Django at it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit


@dataclass(frozen=True)
class Server:
    """Where PostgreSQL listens, from DATABASE_URL; the database name in it is ignored (it need not exist):
    the benchmarks connect to the `postgres` maintenance database to create and drop their own."""

    scheme: str
    user: str
    password: str
    host: str
    port: int
    maintenance_db: str

    @classmethod
    def from_url(cls, url: str) -> Server:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise SystemExit(f"DATABASE_URL must be a PostgreSQL URL, got scheme {parts.scheme!r}")
        return cls(
            scheme=parts.scheme,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            maintenance_db="postgres",
        )

    def url(self, dbname: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return urlunsplit((self.scheme, f"{auth}@{self.host}:{self.port}", f"/{dbname}", "", ""))

    def connect(self, dbname: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname or self.maintenance_db,
            autocommit=True,
        )

    def pg_env(self) -> dict[str, str]:
        env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def create_database(server: Server, dbname: str) -> None:
    with server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')


def drop_database(server: Server, dbname: str) -> None:
    with server.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def checkpoint(server: Server) -> None:
    """Start each measured phase from the same clean state of the WAL."""
    with server.connect() as conn:
        conn.execute("CHECKPOINT")


@contextmanager
def bench_database(server: Server, prefix: str) -> Iterator[str]:
    """A fresh database named after the benchmark, dropped afterwards even on failure."""
    dbname = f"bench_{prefix}_{os.getpid()}"
    drop_database(server, dbname)
    create_database(server, dbname)
    try:
        yield dbname
    finally:
        close_django_connections()
        drop_database(server, dbname)
        print(f"dropped database {dbname}", flush=True)


def django_setup(database_url: str) -> None:
    """Point Django at the bench database; call before importing any project model."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = ""
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def close_django_connections() -> None:
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()
