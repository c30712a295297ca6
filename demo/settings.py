"""Settings of the demo project (``make demo`` runs it through ``demo/run.py``).

SQLite in WAL mode with a busy timeout (a worker and the web server write at the same time),
the private Redis that ``demo/run.py`` starts (its URL in ``USERTASKS_DEMO_REDIS_URL``), files in
``demo/var/``, emails on the console.
"""

import os

import django

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
VAR_DIR = os.environ.get("USERTASKS_DEMO_VAR", os.path.join(BASE_DIR, "var"))
os.makedirs(VAR_DIR, exist_ok=True)

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dramatiq",
    "usertasks",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
WSGI_APPLICATION = None

_sqlite_options = {"timeout": 20}
if django.VERSION >= (5, 1):
    _sqlite_options.update({
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(VAR_DIR, "demo.sqlite3"),
    "OPTIONS": _sqlite_options,
}}

STATIC_URL = "/static/"
MEDIA_ROOT = os.path.join(VAR_DIR, "media")
MEDIA_URL = "/media/"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "demo-home"
LOGOUT_REDIRECT_URL = "login"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "usertasks-demo@example.com"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DRAMATIQ_BROKER = {
    "BROKER": "usertasks.redis.RedisBroker",
    "OPTIONS": {"url": os.environ.get("USERTASKS_DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")},
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Pipelines",
        "dramatiq.middleware.Retries",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
    ],
}
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]

# Django's task API (demo/tasks.py ``count_words``) on usertasks: Dramatiq workers, status pages.
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")  # the backport (pip install django-tasks)
TASKS = {"default": {"BACKEND": "usertasks.backends.UserTasksBackend"}}

USERTASKS = {
    "BASE_URL": os.environ.get("USERTASKS_DEMO_BASE_URL", "http://127.0.0.1:8000"),
    "BASE_TEMPLATE": "demo/base.html",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"usertasks": {"handlers": ["console"], "level": "INFO"}},
}
