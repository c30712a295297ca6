"""The JSON API: real responses validated against docs/openapi.yaml, and a schemathesis run."""

import os

import pytest
import yaml
from django.urls import reverse
from jsonschema import Draft202012Validator, FormatChecker

from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact
from usertasks.models import UserTaskEvent

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "openapi.yaml")


@pytest.fixture(scope="module")
def openapi():
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def validate(openapi, name, data):
    schema = {"$ref": f"#/components/schemas/{name}", "components": openapi["components"]}
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(data)


def test_schema_is_valid_openapi(openapi):
    from openapi_spec_validator import validate as validate_spec

    validate_spec(openapi)


@pytest.mark.django_db
def test_responses_match_schema(client, user, django_user_model, openapi):
    running = make_task(user, "Running", "In Progress", total_steps=10, completed_steps=4, attempts=1)
    done = make_task(user, "Done", "Failed", error="bad", traceback="tb", error_class="ValueError")
    unknown = make_task(user, "No total", "Pending")
    container = make_task(user, "Fan", "In Progress", is_container=True, children_total=3)
    create_artifact(done.pk, "file", text="t")
    create_artifact(done.pk, "link", url="https://example.com/")
    UserTaskEvent.objects.create(status=done, kind="failed", detail="bad", attempt=1)
    client.force_login(user)

    listing = client.get(reverse("usertasks:api-list"))
    assert listing.status_code == 200
    validate(openapi, "TaskList", listing.json())
    assert listing.json()["count"] == 4
    for task in (running, done, unknown, container):
        detail = client.get(reverse("usertasks:api-detail", args=[task.uuid])).json()
        validate(openapi, "TaskDetail", detail)
    assert client.get(reverse("usertasks:api-detail", args=[unknown.uuid])).json()["percent"] is None
    validate(openapi, "Error", client.get(reverse("usertasks:api-list"), {"filter": "x"}).json())
    validate(openapi, "Error", client.post(reverse("usertasks:api-delete", args=[running.uuid])).json())
    canceled = client.post(reverse("usertasks:api-cancel", args=[running.uuid]))
    assert canceled.status_code == 200
    validate(openapi, "TaskDetail", canceled.json())
    assert canceled.json()["cancel_requested"] is True
    validate(openapi, "Error", client.post(reverse("usertasks:api-cancel", args=[done.uuid])).json())
    refused = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))  # no stored input
    assert refused.status_code == 409
    validate(openapi, "Error", refused.json())
    root = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(root)
    validate(openapi, "TaskDetail", client.get(reverse("usertasks:api-detail", args=[done.uuid])).json())
    client.logout()
    validate(openapi, "Error", client.get(reverse("usertasks:api-list")).json())


def test_every_url_name_is_documented(openapi):
    from usertasks import urls

    api_paths = {str(p.pattern) for p in urls.urlpatterns if p.name.startswith("api-")}
    documented = {p.lstrip("/").replace("{uuid}", "<uuid:uuid>") for p in openapi["paths"]}
    assert api_paths == documented


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_server_error(user, client, settings):
    import schemathesis
    from django.core.handlers.wsgi import WSGIHandler
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import not_a_server_error

    settings.USERTASKS = {**settings.USERTASKS, "LIVE_STREAM_SECONDS": 1}
    tasks = [make_task(user, "Running", "In Progress", total_steps=5, completed_steps=1),
             make_task(user, "Done", "Succeeded"), make_task(user, "Waiting", "Pending")]
    create_artifact(tasks[1].pk, "x", text="y")
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value, "csrftoken": "a" * 32}
    headers = {"X-CSRFToken": "a" * 32}

    schema = schemathesis.openapi.from_path(SCHEMA_PATH)
    schema.app = WSGIHandler()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    calls = {"n": 0}

    for operation in operations:
        strategies = [operation.as_strategy()]
        if "{uuid}" in operation.path:
            strategies += [operation.as_strategy(path_parameters={"uuid": str(t.uuid)}) for t in tasks]
        for strategy in strategies:
            @hypothesis_settings(max_examples=15, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                calls["n"] += 1
                response = case.call(cookies=cookies, headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

            run()
    assert calls["n"] > 50
