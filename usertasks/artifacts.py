"""Creating and removing artifact rows and their stored files."""

import logging

from django.core.files.base import ContentFile, File

logger = logging.getLogger(__name__)


def create_artifact(status_id, name, *, file=None, url=None, text=None):
    from .models import UserTaskArtifact

    artifact = UserTaskArtifact(status_id=status_id, name=str(name)[:255])
    if url is not None:
        UserTaskArtifact._meta.get_field("url").run_validators(url)
        artifact.url = url
    elif text is not None:
        artifact.text = str(text)
    else:
        if isinstance(file, (bytes, str)):
            raise TypeError("file= takes a django.core.files.File (e.g. ContentFile(data, name='out.csv'))")
        if not isinstance(file, File):
            file = File(file)
        filename = getattr(file, "name", None) or name or "artifact"
        if isinstance(file, ContentFile) and not file.name:
            file.name = filename
        # Store the file first, then the row: a crash in between leaves an orphan file (which
        # the purge cannot see), never a row pointing at nothing.
        artifact.file.save(filename, file, save=False)
    try:
        artifact.save(force_insert=True)
    except BaseException:
        if artifact.file:
            _delete_file(artifact.file)
        raise
    return artifact


def _delete_file(fieldfile):
    name = fieldfile.name
    try:
        fieldfile.storage.delete(name)
    except Exception:  # storage down: report, keep going
        logger.exception("Could not delete artifact file %r", name)
