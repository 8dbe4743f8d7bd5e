"""Content-addressed artifacts (model files, tokenizers, datasets) through Django's storage API.

A file is stored once under its sha256, whoever uploads it; local files by default, any storage backend (e.g. an
S3-compatible one through django-storages) in production.
"""

from __future__ import annotations

import hashlib

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def artifact_name(sha256: str) -> str:
    return f"artifacts/{sha256[:2]}/{sha256}"


def artifact_save(data: bytes) -> str:
    """Store bytes (once) and return their sha256."""
    sha256 = hashlib.sha256(data).hexdigest()
    name = artifact_name(sha256)
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(data))
    return sha256


def artifact_read(sha256: str) -> bytes:
    with default_storage.open(artifact_name(sha256), "rb") as handle:
        return handle.read()


def artifact_exists(sha256: str) -> bool:
    return bool(sha256) and default_storage.exists(artifact_name(sha256))


def artifact_delete(sha256: str) -> None:
    if artifact_exists(sha256):
        default_storage.delete(artifact_name(sha256))


def artifact_open(sha256: str):
    return default_storage.open(artifact_name(sha256), "rb")
