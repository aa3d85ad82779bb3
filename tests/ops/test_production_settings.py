"""The production settings in their own processes: `check --deploy` passes, no built-in secret key with DEBUG
off, and WhiteNoise serving the admin's static files after collectstatic under gunicorn."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ops.conftest import dead_port

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = "SECRET_KEY is not set and DEBUG is off: refusing to start with a built-in key."


def environment(**overrides: str) -> dict[str, str]:
    """This process's environment (database, Redis) with the production basics and `overrides`."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_production", "DEBUG": "false",
           "SECRET_KEY": secrets.token_urlsafe(50)}  # fmt: skip
    env.update(overrides)
    return env


def manage(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment(**overrides), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_check_deploy_passes_at_warning_level_with_the_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_fails_with_a_weak_key_so_the_check_above_means_something():
    result = manage("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY="short")

    assert result.returncode != 0
    assert "security.W009" in result.stderr


@pytest.mark.parametrize("module", ["config.settings", "config.settings_production"])
def test_debug_off_without_a_secret_key_refuses_to_start(module):
    result = manage("check", DJANGO_SETTINGS_MODULE=module, SECRET_KEY="")  # empty: a .env cannot fill it in

    assert result.returncode != 0
    assert REFUSAL in result.stderr


@pytest.mark.parametrize("module", ["config.settings", "config.settings_production"])
def test_migration_commands_run_without_a_secret_key(module):
    result = manage("makemigrations", "--check", "--dry-run", DJANGO_SETTINGS_MODULE=module, SECRET_KEY="")

    assert result.returncode == 0, result.stderr  # they neither serve nor sign: a random key nobody knows


def test_debug_on_without_a_secret_key_starts_for_local_development():
    result = manage("check", DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true", SECRET_KEY="")

    assert result.returncode == 0, result.stderr


def test_the_production_settings_refuse_debug():
    result = manage("check", DEBUG="true")

    assert result.returncode != 0
    assert "config.settings_production runs with DEBUG off" in result.stderr


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback server
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_whitenoise_serves_the_admin_css_after_collectstatic_with_debug_off(tmp_path):
    static_root = tmp_path / "static"
    overrides = {"STATIC_ROOT": str(static_root), "SECURE_SSL_REDIRECT": "false"}  # plain HTTP on loopback
    collected = manage("collectstatic", "--noinput", **overrides)
    assert collected.returncode == 0, collected.stderr
    assert (static_root / "admin" / "css" / "base.css").is_file()

    port = dead_port()
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and gunicorn
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT, env=environment(**overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, headers, body = _get(f"{base}/static/admin/css/base.css")
                break
            except (ConnectionError, urllib.error.URLError):
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        login_status, _, login_page = _get(f"{base}/admin/login/")
        hashed = re.search(rb'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login_page)
        assert hashed is not None, login_page[:2000]
        hashed_status, hashed_headers, hashed_body = _get(base + hashed.group(1).decode())
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css")
    assert body == (static_root / "admin" / "css" / "base.css").read_bytes()
    assert login_status == 200
    assert (hashed_status, hashed_body) == (
        200,
        (static_root / hashed.group(1).decode().removeprefix("/static/")).read_bytes(),
    )
    assert "immutable" in hashed_headers["Cache-Control"]  # hashed names are cached for ever
