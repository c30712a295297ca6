"""Django settings for mypy's django-stubs plugin (mypy.ini): the apps' models, nothing running."""

SECRET_KEY = "type-checking-only"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "django_dramatiq",
    "usertasks",
    "rest_framework",
    "user_tasks",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": []}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
