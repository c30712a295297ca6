"""Page latency: the status page and the JSON detail with 1,000,000 task rows in PostgreSQL.

    python bench/page_latency.py [--rows 1000000] [--user-tasks 1000] [--requests 500]

Creates a dedicated database (``usertasks_bench_pages_<pid>``) on ``BENCH_PG_HOST``:``BENCH_PG_PORT``
(default 127.0.0.1:5432, user ``BENCH_PG_USER`` = postgres), fills it with ``INSERT ... SELECT
generate_series`` (one user with ``--user-tasks`` tasks, each with an artifact and three events;
the other rows spread over 10,000 users), then times requests through Django's full stack
(middleware, session, template or JSON rendering) with the test client, in one process, after a
warm-up.  Reports p50/p95/p99 per endpoint and drops the database.  Not a test.
"""

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PG = {
    "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
    "USER": os.environ.get("BENCH_PG_USER", "postgres"),
    "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
}
OTHER_USERS = 10_000


def admin_connection():
    import psycopg

    return psycopg.connect(host=PG["HOST"], port=PG["PORT"], user=PG["USER"], password=PG["PASSWORD"] or None,
                           dbname="postgres", autocommit=True)


def configure(dbname):
    from django.conf import settings

    settings.configure(
        SECRET_KEY="bench-only", DEBUG=False, ALLOWED_HOSTS=["*"], USE_TZ=True, TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": dbname, **PG,
                               "CONN_MAX_AGE": 60}},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                        "django.contrib.messages", "django.contrib.staticfiles", "django_dramatiq", "usertasks"],
        MIDDLEWARE=["django.middleware.security.SecurityMiddleware",
                    "django.contrib.sessions.middleware.SessionMiddleware",
                    "django.middleware.common.CommonMiddleware", "django.middleware.csrf.CsrfViewMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware",
                    "django.contrib.messages.middleware.MessageMiddleware"],
        ROOT_URLCONF=sys.modules[__name__],  # this module: urlpatterns below
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
                    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                       "django.contrib.auth.context_processors.auth",
                                                       "django.contrib.messages.context_processors.messages"]}}],
        STATIC_URL="/static/",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        DRAMATIQ_BROKER={"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {},
                         "MIDDLEWARE": ["dramatiq.middleware.Retries"]},
        USERTASKS={"BASE_URL": "http://bench"},
    )
    import django

    django.setup()


urlpatterns = []  # filled after setup (ROOT_URLCONF is this module)


def fill(rows, user_tasks):
    """Users, then tasks with generate_series (the bench user's tasks last: the newest)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from usertasks.models import UserTaskArtifact, UserTaskEvent, UserTaskStatus

    User = get_user_model()
    me = User.objects.create_user("bench", "bench@example.com", "pw")
    t = {m: m._meta.db_table for m in (UserTaskStatus, UserTaskArtifact, UserTaskEvent)}
    user_table = User._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"""
            INSERT INTO {user_table} (password, is_superuser, username, first_name, last_name, email, is_staff,
                                      is_active, date_joined)
            SELECT '!', false, 'u' || g, '', '', 'u' || g || '@example.com', false, true, now()
            FROM generate_series(1, %s) g""", [OTHER_USERS])
        cur.execute(f"SELECT min(id), max(id) FROM {user_table} WHERE username LIKE 'u%%'")
        lo, hi = cur.fetchone()
        others = rows - user_tasks
        common = """
            task_class, name, state, completed_steps, total_steps, attempts, message, backend, queue_name,
            error, error_class, traceback, created, modified, started, finished, worker, is_container,
            children_total, children_succeeded, children_failed, children_canceled, children_skipped,
            children_retried, options"""
        values = """
            'demo.export', 'Export report #' || g,
            (ARRAY['Succeeded','Succeeded','Succeeded','Failed','Canceled','In Progress','Pending'])[1 + g %% 7],
            g %% 100, 100, 1, 'Exported ' || (g %% 100) || ' of 100 chunks', 'dramatiq', 'default',
            '', '', '', now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval,
            now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval + interval '1 minute',
            '', false, 0, 0, 0, 0, 0, 0, '{}'::jsonb"""
        cur.execute(f"""
            INSERT INTO {t[UserTaskStatus]} (uuid, user_id, task_id, {common})
            SELECT gen_random_uuid(), %s + (g %% %s), 'other-' || g, {values}
            FROM generate_series(%s, %s) g""", [lo, hi - lo + 1, user_tasks + 1, user_tasks + others])
        cur.execute(f"""
            INSERT INTO {t[UserTaskStatus]} (uuid, user_id, task_id, {common})
            SELECT gen_random_uuid(), %s, 'mine-' || g, {values}
            FROM generate_series(1, %s) g""", [me.pk, user_tasks])
        cur.execute(f"""
            INSERT INTO {t[UserTaskArtifact]} (uuid, status_id, name, file, url, text, created, modified)
            SELECT gen_random_uuid(), id, 'Report', '', '', 'rows: 100', now(), now()
            FROM {t[UserTaskStatus]} WHERE user_id = %s""", [me.pk])
        cur.execute(f"""
            INSERT INTO {t[UserTaskEvent]} (status_id, kind, created, attempt, detail)
            SELECT s.id, k.kind, s.created, 1, ''
            FROM {t[UserTaskStatus]} s, (VALUES ('enqueued'), ('started'), ('succeeded')) k(kind)
            WHERE s.user_id = %s""", [me.pk])
        cur.execute("ANALYZE")
        cur.execute(f"SELECT count(*) FROM {t[UserTaskStatus]}")
        total = cur.fetchone()[0]
    return me, total


def measure(client, urls, n):
    for url in urls[:50]:  # warm-up
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(n):
        url = random.choice(urls)
        start = time.perf_counter()
        response = client.get(url)
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"p50": statistics.median(times), "p95": pick(0.95), "p99": pick(0.99), "n": n}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--user-tasks", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    dbname = f"usertasks_bench_pages_{os.getpid()}"
    with admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        configure(dbname)
        from django.core.management import call_command
        from django.db import connections
        from django.test import Client
        from django.urls import include, path, reverse

        urlpatterns.append(path("tasks/", include("usertasks.urls")))
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        me, total = fill(args.rows, args.user_tasks)
        print(f"{total:,} task rows ({args.user_tasks:,} of them the measured user's) in "
              f"{time.perf_counter() - started:.1f} s")

        from usertasks.models import UserTaskStatus

        uuids = list(UserTaskStatus.objects.filter(user=me).values_list("uuid", flat=True))
        client = Client()
        client.force_login(me)
        results = {
            "status page": measure(client, [reverse("usertasks:status", args=[u]) for u in uuids], args.requests),
            "JSON detail": measure(client, [reverse("usertasks:api-detail", args=[u]) for u in uuids],
                                   args.requests),
            "dashboard (page 1)": measure(client, [reverse("usertasks:dashboard")], args.requests // 5),
            "JSON list (page 1)": measure(client, [reverse("usertasks:api-list")], args.requests // 5),
        }
        print(f"{'endpoint':<22} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'n':>6}")
        for name, r in results.items():
            print(f"{name:<22} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['n']:6d}")
        connections.close_all()
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
