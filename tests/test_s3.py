"""Artifacts on S3 (django-storages + boto3) against moto's S3 server on a loopback port."""

import socket
import urllib.request
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from django.urls import reverse

from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact

boto3 = pytest.importorskip("boto3")
pytest.importorskip("storages")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.django_db

BUCKET = "usertasks-artifacts"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint, settings):
    endpoint, client = s3_endpoint
    storages = dict(settings.STORAGES)
    storages["artifacts"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": BUCKET, "endpoint_url": endpoint, "access_key": "test", "secret_key": "test",
            "region_name": "us-east-1", "addressing_style": "path", "signature_version": "s3v4",
            "querystring_auth": True,
        },
    }
    with override_settings(STORAGES=storages, USERTASKS={
        "BASE_URL": "http://testserver", "ARTIFACT_STORAGE": "artifacts", "ARTIFACT_URL_EXPIRY": 120,
    }):
        yield client


def test_download_redirects_to_a_presigned_link_made_per_request(client, user, s3_settings):
    task = make_task(user, "Export", "Succeeded")
    art = create_artifact(task.pk, "Report", file=ContentFile(b"a,b\n1,2\n", name="r\u00e9port.csv"))
    s3_settings.head_object(Bucket=BUCKET, Key=art.file.name)  # really uploaded

    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    assert response.status_code == 302
    link = response["Location"]
    query = parse_qs(urlparse(link).query)
    assert query["X-Amz-Expires"] == ["120"]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - signed_at).total_seconds()) < 60
    assert "attachment" in query["response-content-disposition"][0]

    with urllib.request.urlopen(link, timeout=30) as fetched:
        assert fetched.read() == b"a,b\n1,2\n"
        assert fetched.headers["Content-Disposition"].startswith("attachment")

    # Others still get 404, without a link.
    client.logout()
    assert client.get(reverse("usertasks:artifact", args=[art.uuid])).status_code == 404


def test_delete_removes_the_object(client, user, s3_settings, django_capture_on_commit_callbacks):
    task = make_task(user, "Export", "Succeeded")
    art = create_artifact(task.pk, "Report", file=ContentFile(b"x", name="x.txt"))
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("usertasks:api-delete", args=[task.uuid])).status_code == 204
    listed = s3_settings.list_objects_v2(Bucket=BUCKET, Prefix=art.file.name)
    assert listed.get("KeyCount", 0) == 0


def test_expiry_setting_is_read_per_request(client, user, s3_settings):
    task = make_task(user, "Export", "Succeeded")
    art = create_artifact(task.pk, "Report", file=ContentFile(b"x", name="x.txt"))
    client.force_login(user)
    with override_settings(USERTASKS={"BASE_URL": "http://testserver", "ARTIFACT_STORAGE": "artifacts",
                                      "ARTIFACT_URL_EXPIRY": 30}):
        link = client.get(reverse("usertasks:artifact", args=[art.uuid]))["Location"]
    assert parse_qs(urlparse(link).query)["X-Amz-Expires"] == ["30"]
