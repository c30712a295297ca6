"""Switching a live site, as docs/migration.md describes it, end to end.

The real django-user-tasks 4.0 runs in a virtualenv of its own (made once, kept in
``.venv/legacy-user-tasks``) on a fresh database: its migrations and a project migration that
depends on ``("user_tasks", "0004_url_textfield")`` run, and ``live_site/fill.py`` fills its
tables (every state and a custom one, a chain, file, URL and text artifacts, rows of the
project's models pointing at tasks).  Then the same database is switched with this project's
virtualenv (``live_site/switch.py``): migrate, import, and every row, file, time, constraint and
foreign key is checked; a second import changes nothing.  SQLite always; PostgreSQL too when
``DATABASE_URL`` names it.
"""

import os
import subprocess
import sys
import urllib.parse

import django
import pytest

from ..helpers import ROOT

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "live_site")
LEGACY_VENV = os.path.join(ROOT, ".venv", "legacy-user-tasks")
LEGACY_PACKAGES = [
    "django-user-tasks==4.0.0",
    f"Django=={django.get_version()}",
    "celery>=5.3,<6",
    "dj-database-url",
    "psycopg[binary]",
    "setuptools",
]


def legacy_python():
    python = os.path.join(LEGACY_VENV, "bin", "python")
    stamp = os.path.join(LEGACY_VENV, ".installed-" + django.get_version())
    if not os.path.exists(stamp):
        subprocess.run([sys.executable, "-m", "venv", "--clear", LEGACY_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *LEGACY_PACKAGES], check=True, timeout=900)
        open(stamp, "w").close()
    return python


def databases(tmp_path):
    yield "sqlite", f"sqlite:///{tmp_path / 'site.sqlite3'}"
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        name = "live_site_switch" + os.environ.get("USERTASKS_TEST_DB_SUFFIX", "") + os.environ.get(
            "PYTEST_XDIST_WORKER", ""
        )
        parts = urllib.parse.urlsplit(url)
        admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        yield "postgresql", urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def run(python, args, env, timeout=300):
    done = subprocess.run([python, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_switch_a_live_site_from_django_user_tasks(tmp_path):
    old = legacy_python()
    for vendor, url in databases(tmp_path):
        media = tmp_path / f"media-{vendor}"
        media.mkdir()
        env = dict(os.environ, LIVE_SITE_DATABASE_URL=url, LIVE_SITE_MEDIA_ROOT=str(media),
                   LIVE_SITE_SNAPSHOT=str(tmp_path / f"{vendor}.json"))
        env.pop("DJANGO_SETTINGS_MODULE", None)
        legacy_env = dict(env, DJANGO_SETTINGS_MODULE="legacy_settings", PYTHONPATH=HERE)
        run(old, ["-m", "django", "migrate", "--verbosity", "0"], legacy_env)
        assert "filled" in run(old, ["fill.py"], legacy_env)
        ours = dict(env, DJANGO_SETTINGS_MODULE="tests.compat.live_site.switched_settings",
                    PYTHONPATH=os.pathsep.join([HERE, ROOT, os.path.join(ROOT, "compat")]))
        assert "switched: ok" in run(sys.executable, ["switch.py"], ours), vendor
