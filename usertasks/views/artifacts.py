"""Serving one artifact: stream a stored file, redirect to a presigned link, or plain text."""

import os

from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.utils.encoding import iri_to_uri

from ..conf import app_settings
from ..models import ArtifactStorage
from ..text import strip_bidi_controls


def download_name(artifact):
    """The file name offered to the browser: the stored base name (never a path), without the
    characters that reorder text on screen (U+202E would show ``exe.txt`` as ``txt.exe``)."""
    name = os.path.basename((artifact.file.name or "").replace("\\", "/"))
    return strip_bidi_controls(name).strip() or "artifact"


def _presigned(storage, name, filename):
    """A link that expires, when the storage makes such links (django-storages S3), else None."""
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages < 1.14 or not installed
        try:
            from storages.backends.s3boto3 import S3Boto3Storage as S3Storage
        except ImportError:
            return None
    if not isinstance(storage, S3Storage):
        return None
    from django.utils.http import content_disposition_header

    disposition = content_disposition_header(True, filename)
    return storage.url(
        name, parameters={"ResponseContentDisposition": disposition}, expire=int(app_settings.ARTIFACT_URL_EXPIRY)
    )


def serve_artifact(artifact):
    kind = artifact.kind
    if kind == "url":
        return HttpResponseRedirect(iri_to_uri(artifact.url))
    if kind == "text":
        response = HttpResponse(artifact.text, content_type="text/plain; charset=utf-8")
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'"
        return response
    storage = ArtifactStorage.resolve()
    filename = download_name(artifact)
    link = _presigned(storage, artifact.file.name, filename)
    if link:
        response = HttpResponseRedirect(link)
        response["Cache-Control"] = "no-store"
        return response
    try:
        fh = storage.open(artifact.file.name, "rb")
    except (FileNotFoundError, OSError):
        raise Http404("The file of this artifact is gone.") from None
    download = FileResponse(fh, as_attachment=True, filename=filename)
    download["X-Content-Type-Options"] = "nosniff"
    download["Content-Security-Policy"] = "default-src 'none'"
    return download
