"""Run django-user-tasks' own test modules against the compatibility layer.

    python compat/upstream-suite/run.py [pytest arguments...]

Downloads the django-user-tasks sdist from the package index with pip (once; kept in
``.venv/upstream-sdist``), copies its ``tests/`` next to this directory's settings, URLs and
conftest in a temporary directory, starts a private Redis, and runs pytest there twice: with
Celery message protocol 1 and with protocol 2.  The test modules are not modified.  One test is
deselected: ``test_storage_from_storages_dict`` sets a ``STORAGES`` attribute on
django-user-tasks' settings object, an alias django-user-tasks itself never reads from Django's
``STORAGES`` (docs/compat-differences.md).  Exits non-zero when either run fails or collects
nothing.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VERSION = os.environ.get("USERTASKS_UPSTREAM_VERSION", "4.0.0")
CACHE = os.path.join(ROOT, ".venv", "upstream-sdist")
DESELECT = ["tests/test_storages.py::TestUserTaskStatus::test_storage_from_storages_dict"]
HARNESS = ("test_settings.py", "upstream_urls.py")


def sdist():
    """The path of the django-user-tasks sdist, downloaded with pip when it is not cached."""
    name = f"django_user_tasks-{VERSION}.tar.gz"
    path = os.path.join(CACHE, name)
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                CACHE,
                f"django-user-tasks=={VERSION}",
            ],
            check=True,
        )
    return path


def extract_tests(archive, dest):
    """Copy the sdist's ``tests/`` directory (and nothing else) to ``dest/tests``."""
    with tarfile.open(archive) as tar:
        prefix = tar.getnames()[0].split("/")[0] + "/tests/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not members:
            raise SystemExit(f"{archive} has no tests/ directory")
        for member in members:
            target = os.path.join(dest, "tests", member.name[len(prefix) :])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def missing_public_names(archive):
    """Public names that django-user-tasks' modules define (functions, classes, module-level
    assignments; not what they import) and ``user_tasks`` lacks."""
    import ast
    import importlib

    missing = []
    with tarfile.open(archive) as tar:
        prefix = tar.getnames()[0].split("/")[0] + "/user_tasks/"
        for member in tar.getmembers():
            rel = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
            if not rel.endswith(".py") or "/" in rel:
                continue  # the package's own modules (not migrations)
            tree = ast.parse(tar.extractfile(member).read())
            names = set()
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            module_name = "user_tasks" + ("" if rel == "__init__.py" else "." + rel[:-3])
            module = importlib.import_module(module_name)
            missing += [f"{module_name}.{n}" for n in sorted(names) if not n.startswith("_") and not hasattr(module, n)]
    return missing


def check_names(archive, workdir, redis_url):
    """Run :func:`missing_public_names` with the suite's settings; 0 when none is missing."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="test_settings",
        USERTASKS_UPSTREAM_REDIS_URL=redis_url,
        USERTASKS_UPSTREAM_TMP=workdir,
        PYTHONPATH=os.pathsep.join([workdir, os.path.join(ROOT, "compat"), ROOT, HERE]),
    )
    code = (
        "import django; django.setup(); import run\n"
        f"missing = run.missing_public_names({archive!r})\n"
        "print('== missing names: ' + ', '.join(missing) if missing else '== every public name of its modules exists')\n"
        "raise SystemExit(1 if missing else 0)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env).returncode


def run(protocol, workdir, redis_url, extra):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="test_settings",
        USERTASKS_UPSTREAM_PROTOCOL=str(protocol),
        USERTASKS_UPSTREAM_REDIS_URL=redis_url,
        USERTASKS_UPSTREAM_TMP=tempfile.mkdtemp(dir=workdir, prefix=f"proto{protocol}-"),
        PYTHONPATH=os.pathsep.join([workdir, os.path.join(ROOT, "compat"), ROOT, env.get("PYTHONPATH", "")]),
    )
    print(f"== django-user-tasks {VERSION}'s tests, Celery message protocol {protocol}", flush=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--rootdir",
        workdir,
        "-c",
        os.path.join(workdir, "pytest.ini"),
        *(f"--deselect={d}" for d in DESELECT),
        *extra,
        "tests",
    ]
    return subprocess.run(command, cwd=workdir, env=env).returncode


def main(argv):
    from usertasks.devredis import RedisServer

    archive = sdist()
    workdir = tempfile.mkdtemp(prefix="user-tasks-upstream-")
    try:
        extract_tests(archive, workdir)
        for name in HARNESS:
            shutil.copy(os.path.join(HERE, name), workdir)
        shutil.copy(os.path.join(HERE, "conftest.py"), os.path.join(workdir, "tests", "conftest.py"))
        with open(os.path.join(workdir, "pytest.ini"), "w") as f:
            f.write(
                "[pytest]\nDJANGO_SETTINGS_MODULE = test_settings\nfilterwarnings =\n    ignore::DeprecationWarning\n"
            )
        with RedisServer() as redis:
            codes = [run(protocol, workdir, redis.url, argv) for protocol in (1, 2)]
            codes.append(check_names(archive, workdir, redis.url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
