"""The distributions: ``python -m build`` makes an sdist and a wheel without a single warning, the
wheel carries what the apps need at run time (templates, static files, translations, the Lua
scripts, py.typed, the migrations and the management commands of usertasks and user_tasks) and
nothing of the repository's tests, benchmarks, demo or docs, and ``twine check`` accepts both.

The build runs on a copy of the source tree (without the virtualenvs, caches and earlier build
outputs), so it neither writes into the repository nor depends on what an earlier build left in
it; it needs setuptools from the package index, as any isolated build does."""

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME, VERSION = "usertasks", "0.1.0"
# Where each package's files are in the repository, and under which name the wheel installs them.
SOURCES = {"usertasks": ROOT / "usertasks", "user_tasks": ROOT / "compat" / "user_tasks"}
NOT_SHIPPED = ("tests", "bench", "demo", "docs")

# Not copied: version control, virtualenvs, tool caches and build outputs.
_ROOT_SKIPPED = {".git", ".tox", "build", "dist", ".hypothesis"}


def _skip(directory, names):
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc") or n.startswith(".venv")}
    if Path(directory) == ROOT:
        skipped |= {n for n in names if n in _ROOT_SKIPPED or n.endswith((".egg-info", "_cache"))}
    return skipped


def _build_env():
    env = dict(os.environ)
    # PYTHONDONTWRITEBYTECODE makes setuptools warn that it does not byte-compile, whatever the
    # configuration; PYTHONWARNINGS could hide setuptools' own warnings (or turn them into errors).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONWARNINGS", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(output of the build, wheel, sdist)``."""
    pytest.importorskip("build", reason="the `build` package is not installed (pip install build)")
    tmp = tmp_path_factory.mktemp("packaging")
    source, out = tmp / "source", tmp / "dist"
    shutil.copytree(ROOT, source, ignore=_skip, symlinks=True)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        cwd=source,
        env=_build_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout}"
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"{NAME}-{VERSION}-py3-none-any.whl"], result.stdout
    assert [s.name for s in sdists] == [f"{NAME}-{VERSION}.tar.gz"], result.stdout
    return result.stdout, wheels[0], sdists[0]


@pytest.fixture(scope="module")
def wheel_files(built):
    with zipfile.ZipFile(built[1]) as wheel:
        return set(wheel.namelist())


@pytest.fixture(scope="module")
def sdist_files(built):
    prefix = f"{NAME}-{VERSION}/"
    with tarfile.open(built[2]) as sdist:
        return {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}


def _in_wheel(package, *patterns):
    """The paths in the wheel that the files of ``package``'s repository directory matching one of
    ``patterns`` must have."""
    found = set()
    for pattern in patterns:
        for path in SOURCES[package].glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts:
                found.add(f"{package}/{path.relative_to(SOURCES[package]).as_posix()}")
    return found


def test_the_build_prints_no_warning(built):
    output = built[0]
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, "python -m build warned:\n" + "\n".join(warnings)


@pytest.mark.parametrize(
    ("what", "package", "patterns"),
    [
        ("templates", "usertasks", ["templates/**/*"]),
        ("static files", "usertasks", ["static/**/*"]),
        ("translations", "usertasks", ["locale/**/*.po", "locale/**/*.mo"]),
        ("Lua scripts", "usertasks", ["**/*.lua"]),
        ("migrations", "usertasks", ["migrations/*.py"]),
        ("migrations", "user_tasks", ["migrations/*.py"]),
        ("management commands", "usertasks", ["management/**/*.py"]),
        ("management commands", "user_tasks", ["management/**/*.py"]),
        ("modules", "usertasks", ["**/*.py"]),
        ("modules", "user_tasks", ["**/*.py"]),
    ],
)
def test_the_wheel_carries(wheel_files, what, package, patterns):
    expected = _in_wheel(package, *patterns)
    assert expected, f"no {what} of {package} found in the repository: is the test out of date?"
    missing = sorted(expected - wheel_files)
    assert not missing, f"{what} of {package} missing from the wheel: {missing}"


def test_the_wheel_carries_the_known_data_files(wheel_files):
    # The globs above find what the repository has; these are files the code loads by name, and
    # the markers that tell type checkers both packages are typed.
    for name in (
        "usertasks/py.typed",
        "user_tasks/py.typed",
        "usertasks/redis/enqueue.lua",
        "usertasks/redis/fetch.lua",
        "usertasks/redis/ack.lua",
        "usertasks/abort/claim.lua",
        "usertasks/abort/cancel_pending.lua",
        "usertasks/templates/usertasks/base.html",
        "usertasks/static/usertasks/usertasks.js",
        "usertasks/locale/fr/LC_MESSAGES/django.mo",
        "usertasks/management/commands/usertasks_purge.py",
        "usertasks/migrations/0001_initial.py",
        "user_tasks/migrations/0001_initial.py",
        "user_tasks/migrations/0001_after_django_user_tasks.py",
        "user_tasks/migrations/0004_url_textfield.py",
        "user_tasks/migrations/0006_proxies.py",
        "user_tasks/management/commands/usertasks_import_user_tasks.py",
    ):
        assert name in wheel_files, f"{name} is missing from the wheel"


def test_the_wheel_carries_nothing_else(wheel_files):
    top_level = {name.split("/", 1)[0] for name in wheel_files}
    assert top_level == {"usertasks", "user_tasks", f"{NAME}-{VERSION}.dist-info"}
    assert not [n for n in wheel_files if n.split("/", 1)[0] in NOT_SHIPPED]
    assert not [n for n in wheel_files if "__pycache__" in n or n.endswith(".pyc")]


def test_the_sdist_has_the_sources_and_not_the_repository_tooling(sdist_files, wheel_files):
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= sdist_files
    shipped = {n for n in wheel_files if not n.split("/", 1)[0].endswith(".dist-info")}
    in_sdist = {("compat/" + n if n.startswith("user_tasks/") else n) for n in shipped}
    assert not sorted(in_sdist - sdist_files), "the sdist cannot rebuild the wheel"
    assert not [n for n in sdist_files if n.split("/", 1)[0] in NOT_SHIPPED]


def test_the_metadata(built):
    with zipfile.ZipFile(built[1]) as wheel:
        metadata = email.message_from_bytes(wheel.read(f"{NAME}-{VERSION}.dist-info/METADATA"))
    assert metadata["Name"] == NAME
    assert metadata["Version"] == VERSION
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (ROOT / "README.md").read_text(encoding="utf-8").strip()
    requires = metadata.get_all("Requires-Dist")
    assert "django>=4.2" in requires
    assert {"postgres", "s3", "rabbitmq", "celery", "asgi"} <= set(metadata.get_all("Provides-Extra"))
    # kombu's Redis transport imports packaging without requiring it.
    assert 'packaging; extra == "celery"' in requires


def test_twine_accepts_the_distributions(built):
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built[1]), str(built[2])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"twine check failed:\n{result.stdout}"


CELERY_SIDE = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_dramatiq", "usertasks",
                    "rest_framework", "user_tasks"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DRAMATIQ_BROKER={"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}},
    USE_TZ=True,
)
django.setup()
import kombu.transport.redis  # noqa: F401  (Celery's Redis transport imports packaging)
from celery import Celery

import user_tasks.rules, user_tasks.serializers, user_tasks.signals, user_tasks.tasks, user_tasks.views  # noqa: E401,F401

app = Celery("check", broker="redis://127.0.0.1:1/0")
assert app.connection().transport.driver_type == "redis"
print("celery side: ok")
"""


def test_the_celery_extra_brings_what_the_compatibility_layer_needs(built, tmp_path):
    """``pip install "usertasks[celery]"`` in a new virtualenv: the compatibility layer and
    Celery's Redis transport import and start."""
    _, wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{wheel}[celery]"],
        capture_output=True, text=True, timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    done = subprocess.run([python, "-c", CELERY_SIDE], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "celery side: ok" in done.stdout
