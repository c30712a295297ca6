"""Each system check id, triggered and not triggered."""

import warnings

import dramatiq
import dramatiq.broker
import pytest
from django.conf import settings
from django.core import checks
from django.test.utils import override_settings
from dramatiq.brokers.stub import StubBroker

from usertasks.middleware import install as install_middleware
from usertasks.checks import check_broker, check_settings, check_sqlite
from usertasks.middleware import UserTaskTracking


def ids(messages):
    return [m.id for m in messages]


@pytest.fixture
def global_broker():
    """Lets a test replace the global broker; puts the real one back afterwards."""
    saved = dramatiq.broker.global_broker

    def use(broker):
        dramatiq.broker.global_broker = broker
        return broker

    yield use
    dramatiq.broker.global_broker = saved


def test_the_test_settings_pass_every_check():
    found = [m for m in checks.run_checks(tags=["usertasks"]) if m.id.startswith("usertasks.")]
    assert found == []
    assert check_broker() == []
    assert check_settings() == []


def test_e001_no_broker(global_broker):
    global_broker(None)
    assert ids(check_broker()) == ["usertasks.E001"]
    assert "DRAMATIQ_BROKER" in check_broker()[0].hint


def test_e002_middleware_missing(global_broker):
    stub = global_broker(StubBroker())
    assert ids(check_broker()) == ["usertasks.E002"]
    install_middleware(stub)
    assert check_broker() == []
    stub.close()


def test_w003_a_plain_dramatiq_redis_broker_has_no_fast_path(global_broker, redis):
    from dramatiq.brokers.redis import RedisBroker

    from usertasks.redis import RedisBroker as FastBroker

    plain = install_middleware(global_broker(RedisBroker(client=redis)))
    found = check_broker()
    assert ids(found) == ["usertasks.W003"] and found[0].level == checks.WARNING
    assert "usertasks.redis.RedisBroker" in found[0].hint and "fast path is off" in found[0].msg
    plain.close()
    fast = install_middleware(global_broker(FastBroker(client=redis)))
    assert check_broker() == []
    fast.close()
    stub = install_middleware(global_broker(StubBroker()))  # no fast path to miss on other brokers
    assert check_broker() == []
    stub.close()


def test_e003_middleware_after_retries(global_broker):
    stub = global_broker(StubBroker())
    install_middleware(stub)
    tracking = next(m for m in stub.middleware if isinstance(m, UserTaskTracking))
    stub.middleware.remove(tracking)
    stub.middleware.append(tracking)  # now after Retries
    assert ids(check_broker()) == ["usertasks.E003"]
    stub.close()


def test_install_middleware_places_it_before_retries_and_is_idempotent(global_broker):
    stub = global_broker(StubBroker())
    install_middleware(stub)
    install_middleware(stub)
    kinds = [type(m) for m in stub.middleware]
    assert kinds.count(UserTaskTracking) == 1
    assert kinds.index(UserTaskTracking) < kinds.index(dramatiq.middleware.Retries)
    assert check_broker() == []
    # A broker without Retries at all is fine too.
    bare = global_broker(StubBroker(middleware=[]))
    install_middleware(bare)
    assert check_broker() == []
    stub.close()
    bare.close()


def test_e004_settings_not_a_dict():
    with override_settings(USERTASKS=["PROGRESS_INTERVAL", 0.1]):
        assert ids(check_settings()) == ["usertasks.E004"]
    with override_settings(USERTASKS={}):
        assert check_settings() == []


def test_e005_unknown_key():
    with override_settings(USERTASKS={"PROGRES_INTERVAL": 0.1, "MAX_AGE": 10}):
        errors = check_settings()
    assert ids(errors) == ["usertasks.E005"]
    assert "PROGRES_INTERVAL" in errors[0].msg and "MAX_AGE" not in errors[0].msg
    assert "PROGRESS_INTERVAL" in errors[0].hint


@pytest.mark.parametrize("value", [0, -1, 0.6, 5, "0.1", None])
def test_e006_progress_interval_out_of_bounds(value):
    with override_settings(USERTASKS={"PROGRESS_INTERVAL": value}):
        assert ids(check_settings()) == ["usertasks.E006"]


@pytest.mark.parametrize("value", [0.5, 0.25, 0.01, 1])
def test_e006_not_triggered(value):
    with override_settings(USERTASKS={"PROGRESS_INTERVAL": value}):
        found = ids(check_settings())
    assert ("usertasks.E006" in found) == (value == 1)


@pytest.mark.parametrize("value", [-0.01, 1.5, "0.02", None, True])
def test_e008_write_linger_out_of_bounds(value):
    with override_settings(USERTASKS={"WRITE_LINGER": value}):
        assert ids(check_settings()) == ["usertasks.E008"]


@pytest.mark.parametrize("value", [0, 0.02, 1])
def test_e008_not_triggered(value):
    with override_settings(USERTASKS={"WRITE_LINGER": value}):
        assert check_settings() == []


def test_e007_unknown_storage_alias():
    with override_settings(USERTASKS={"ARTIFACT_STORAGE": "nowhere"}):
        assert ids(check_settings()) == ["usertasks.E007"]
    stores = dict(settings.STORAGES, artifacts={"BACKEND": "django.core.files.storage.FileSystemStorage"})
    with override_settings(STORAGES=stores, USERTASKS={"ARTIFACT_STORAGE": "artifacts"}):
        assert check_settings() == []
    with override_settings(USERTASKS={"ARTIFACT_STORAGE": "django.core.files.storage.FileSystemStorage"}):
        assert check_settings() == []
    with override_settings(USERTASKS={"ARTIFACT_STORAGE": "default"}):
        assert check_settings() == []


def test_w001_sqlite_without_timeout():
    databases = {
        "default": settings.DATABASES["default"],
        "bare": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "tuned": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "OPTIONS": {"timeout": 20}},
        "pg": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to unexpected behavior"
        with override_settings(DATABASES=databases):
            found = check_sqlite(databases=["bare", "tuned", "pg"])
            assert ids(found) == ["usertasks.W001"]
            assert "'bare'" in found[0].msg
            assert found[0].level == checks.WARNING
            assert check_sqlite(databases=["tuned", "pg"]) == []
            assert check_sqlite(databases=None) == []
    assert check_sqlite(databases=["default"]) == []  # the test settings set a timeout
