"""``make demo``: a private Redis, the SQLite database migrated, demo users, a worker and the
development server.  Prints where to log in and what to click; Ctrl-C stops everything.
Needs no input (safe to run from a script)."""

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

USERS = [("demo", "demo", False), ("admin", "admin", True)]


def free_port(preferred):
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def wait_http(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the web server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the web server did not start")


def setup_database():
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    User = get_user_model()
    for username, password, is_super in USERS:
        if not User.objects.filter(username=username).exists():
            if is_super:
                User.objects.create_superuser(username, f"{username}@example.com", password)
            else:
                User.objects.create_user(username, f"{username}@example.com", password)


def main():
    from usertasks.devredis import RedisServer

    port = free_port(int(os.environ.get("PORT", "8000")))
    redis = RedisServer().start()
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "USERTASKS_DEMO_REDIS_URL": redis.url,
        "USERTASKS_DEMO_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    })
    os.environ.update(env)
    procs = []

    def stop(*_):
        for proc in reversed(procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        redis.stop()

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started in the background
    try:
        setup_database()
        manage = [sys.executable, os.path.join(ROOT, "manage.py")]
        procs.append(subprocess.Popen(
            manage + ["rundramatiq", "--processes", "1", "--threads", "4"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        ))
        procs.append(subprocess.Popen(
            manage + ["runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        ))
        wait_http(port, procs[-1])
        url = f"http://127.0.0.1:{port}/"
        print(f"""
==========================================================================
 usertasks demo is running:  {url}
   log in as   demo / demo     (a user)
          or   admin / admin   (a superuser; the admin is at {url}admin/)
 Click "Export a sales report": watch the progress bar, then download the CSV.
 Start another and press "Cancel task"; try "Import enrolments" to see a failure
 after a retry.  All your tasks: {url}tasks/   Emails are printed here.
 Redis: {redis.url}   Database: demo/var/demo.sqlite3
 Press Ctrl-C to stop.
==========================================================================
""", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("A demo process exited; stopping.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the demo...")
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
