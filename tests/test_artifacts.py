"""Artifacts: files through the configured storage, URLs and texts."""

import os

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test.utils import override_settings

from usertasks import TaskContext
from usertasks.models import UserTaskArtifact, UserTaskStatus
from usertasks.states import State

from . import tasks
from .helpers import wait_final


def make_ctx(user):
    row = UserTaskStatus.objects.create(user=user, task_id=f"art-{user.pk}-{os.urandom(4).hex()}",
                                        task_class="artifacts", name="a")
    return row, TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="artifacts")


@pytest.mark.django_db(transaction=True)
def test_artifacts_of_each_kind_from_a_worker(worker, user):
    status = tasks.artifacts.send_for(user, label="k")
    wait_final(status)
    assert status.state == State.SUCCEEDED
    report, link, summary = status.artifacts.all()
    assert [a.kind for a in (report, link, summary)] == ["file", "url", "text"]
    assert [a.name for a in (report, link, summary)] == ["Report", "Link", "Summary"]

    assert report.file.name == f"usertasks/{status.uuid}/{report.uuid}/report.csv"
    with report.file.open("rb") as fh:
        assert fh.read() == b"a,b\n1,2\n"
    assert os.path.isfile(os.path.join(settings.MEDIA_ROOT, report.file.name))
    assert report.url == "" and report.text == ""

    assert link.url == "https://example.com/out" and not link.file
    assert summary.text == "<b>done</b>" and not summary.file and summary.url == ""


@pytest.mark.django_db
def test_add_artifact_validation(user):
    row, ctx = make_ctx(user)
    with pytest.raises(ValueError, match="exactly one"):
        ctx.add_artifact("none")
    with pytest.raises(ValueError, match="exactly one"):
        ctx.add_artifact("two", url="https://example.com", text="x")
    with pytest.raises(ValueError, match="exactly one"):
        ctx.add_artifact("three", file=ContentFile(b"x", name="x"), url="https://example.com", text="x")
    with pytest.raises(TypeError, match="ContentFile"):
        ctx.add_artifact("raw bytes", file=b"data")
    with pytest.raises(TypeError):
        ctx.add_artifact("raw str", file="data")
    with pytest.raises(ValidationError):
        ctx.add_artifact("bad url", url="not a url")
    with pytest.raises(ValidationError):
        ctx.add_artifact("js url", url="javascript:alert(1)")
    assert not row.artifacts.exists()
    # Empty text is a valid (if dull) artifact.
    assert ctx.add_artifact("empty", text="").kind == "text"


@pytest.mark.django_db
def test_file_name_cannot_escape_the_artifact_folder(user):
    row, ctx = make_ctx(user)
    evil = ctx.add_artifact("Evil", file=ContentFile(b"root:x:0:0", name="../../etc/passwd"))
    assert evil.file.name == f"usertasks/{row.uuid}/{evil.uuid}/passwd"
    path = os.path.realpath(evil.file.path)
    assert path.startswith(os.path.realpath(os.path.join(settings.MEDIA_ROOT, "usertasks", str(row.uuid))) + os.sep)
    with evil.file.open("rb") as fh:
        assert fh.read() == b"root:x:0:0"

    windows = ctx.add_artifact("Win", file=ContentFile(b"w", name="..\\..\\boot.ini"))
    assert windows.file.name == f"usertasks/{row.uuid}/{windows.uuid}/boot.ini"
    odd = ctx.add_artifact("Odd", file=ContentFile(b"o", name="/abs/dir/we ird name?.txt"))
    assert odd.file.name.startswith(f"usertasks/{row.uuid}/{odd.uuid}/")
    assert "/" not in odd.file.name.rsplit("/", 1)[1] and ".." not in odd.file.name

    nameless = ctx.add_artifact("Nameless", file=ContentFile(b"n"))
    assert nameless.file.name == f"usertasks/{row.uuid}/{nameless.uuid}/Nameless"


@pytest.mark.django_db
def test_file_goes_to_the_configured_storage(user, tmp_path):
    other = tmp_path / "other-storage"
    stores = dict(settings.STORAGES, artifacts={
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(other)},
    })
    row, ctx = make_ctx(user)
    with override_settings(STORAGES=stores, USERTASKS={"ARTIFACT_STORAGE": "artifacts"}):
        art = ctx.add_artifact("Out", file=ContentFile(b"elsewhere", name="out.bin"))
        assert (other / art.file.name).read_bytes() == b"elsewhere"
        fresh = UserTaskArtifact.objects.get(pk=art.pk)
        with fresh.file.open("rb") as fh:
            assert fh.read() == b"elsewhere"
        assert fresh.file.size == 9
    assert not os.path.exists(os.path.join(settings.MEDIA_ROOT, art.file.name))
    assert storages["default"].exists(art.file.name) is False


@pytest.mark.django_db
@pytest.mark.parametrize("filename", ["..", ".", "../", "dir/", "/", "???"])
def test_degenerate_file_names_fall_back_to_a_safe_name(user, filename):
    row, ctx = make_ctx(user)
    art = ctx.add_artifact("Output", file=ContentFile(b"data", name=filename))
    folder, base = art.file.name.rsplit("/", 1)
    assert folder == f"usertasks/{row.uuid}/{art.uuid}"
    assert base not in ("", ".", "..")
    with art.file.open("rb") as fh:
        assert fh.read() == b"data"
