"""docs/openapi.yaml against the running server: the schemathesis command line, every check it
has, in positive and negative modes, for a logged-in user, against the live test server."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse

from tests.helpers import ROOT
from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA_PATH = os.path.join(ROOT, "docs", "openapi.yaml")
CSRF = "b" * 32


def run_schemathesis(tmp_path, origin, cookie, parameters, max_examples=10):
    config = tmp_path / "schemathesis.toml"
    lines = ["max-stream-events = 2", "",
             "[auth.openapi.session]", f'api_key = "{cookie}"', "",
             "[auth.openapi.csrfCookie]", f'api_key = "{CSRF}"', "",
             "[auth.openapi.csrfHeader]", f'api_key = "{CSRF}"', ""]
    for operation_id, uuid in parameters.items():
        lines += ["[[operations]]", f'include-operation-id = "{operation_id}"', f'parameters = {{ uuid = "{uuid}" }}', ""]
    config.write_text("\n".join(lines))
    command = [
        os.path.join(os.path.dirname(sys.executable), "schemathesis"), "--config-file", str(config), "--no-color",
        "run", SCHEMA_PATH, "--origin", origin, "--checks", "all", "--mode", "all",
        "--max-examples", str(max_examples), "--seed", "1", "--workers", "1", "--generation-database", "none",
        "--suppress-health-check", "all", "--continue-on-failure",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    return done.returncode, done.stdout + done.stderr


def test_schemathesis_every_check_passes(django_db_setup, live_server, user, client, settings, tmp_path):
    settings.USERTASKS = {**settings.USERTASKS, "LIVE_STREAM_SECONDS": 1}
    running = make_task(user, "Running", "In Progress", total_steps=5, completed_steps=1)
    done = make_task(user, "Done", "Succeeded")
    create_artifact(done.pk, "x", text="y")
    for i in range(3):
        make_task(user, f"Older {i}", "Failed", error="It broke.")
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    parameters = {"getTask": done.uuid, "streamTask": running.uuid, "cancelTask": running.uuid,
                  "deleteTask": running.uuid, "deleteTaskByMethod": running.uuid, "rerunTask": done.uuid}
    code, output = run_schemathesis(tmp_path, live_server.url, cookie, parameters)
    (tmp_path.parent / "schemathesis-output.txt").write_text(output)
    assert code == 0, output
    assert "No issues found" in output, output
    # The requests did reach the views: the running task was asked to cancel.
    running.refresh_from_db()
    assert running.cancel_requested is not None
    assert client.get(reverse("usertasks:api-detail", args=[done.uuid])).status_code == 200
