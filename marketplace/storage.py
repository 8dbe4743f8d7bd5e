"""Content-addressed artifacts (model files, tokenizers, datasets) through Django's storage API, and the datasets'
items as parsed from them (kept in memory for the next lease, self-test or build that reads them).

A file is stored once under its sha256, whoever uploads it; local files by default, any storage backend (e.g. an
S3-compatible one through django-storages) in production.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import TYPE_CHECKING

from cachetools import LRUCache
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from .datasets import DatasetLimits, ParsedDataset, parse_dataset

if TYPE_CHECKING:
    from .models import Dataset


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


# --- Parsed datasets ----------------------------------------------------------------------------------------------


def dataset_limits() -> DatasetLimits:
    """What a dataset may become once parsed (MAX_DATASET_ITEMS items, MAX_DATASET_INFLATED_BYTES bytes)."""
    return DatasetLimits(max_items=settings.MAX_DATASET_ITEMS, max_inflated_bytes=settings.MAX_DATASET_INFLATED_BYTES)


def dataset_items(dataset: Dataset) -> ParsedDataset:
    """The dataset's items, parsed. Every lease and every variant build needs them: a stored dataset never changes
    (it is addressed by its sha256), so the last ones parsed are kept in memory, up to DATASET_CACHE_BYTES of items,
    instead of re-read each time. The caps hold here too: a dataset stored before them cannot inflate in a worker."""
    model = dataset.inference_model
    return _parsed(dataset.sha256, dataset.format, model.kind, json.dumps(model.inputs, sort_keys=True))


_parsed_lock = threading.Lock()  # web threads and gthread workers share the cache
_parsed_cache: LRUCache = LRUCache(maxsize=0)


def dataset_cache() -> LRUCache:
    """This process's cache of parsed datasets, weighed in bytes of items (made anew when DATASET_CACHE_BYTES
    changes). Callers hold `_parsed_lock`."""
    global _parsed_cache
    if _parsed_cache.maxsize != settings.DATASET_CACHE_BYTES:
        _parsed_cache = LRUCache(maxsize=settings.DATASET_CACHE_BYTES, getsizeof=lambda parsed: max(parsed.nbytes, 1))
    return _parsed_cache


def _parsed(sha256: str, fmt: str, kind: str, inputs_json: str) -> ParsedDataset:
    key = (sha256, fmt, kind, inputs_json)
    with _parsed_lock:
        if (parsed := dataset_cache().get(key)) is not None:
            return parsed
    # Parsed outside the lock (seconds for a large dataset): two threads may parse the same one at once, harmlessly.
    parsed = parse_dataset(
        artifact_read(sha256), fmt=fmt, kind=kind, inputs=json.loads(inputs_json), limits=dataset_limits()
    )
    with _parsed_lock:
        cache = dataset_cache()
        if max(parsed.nbytes, 1) <= cache.maxsize:  # one larger than the whole cache is used once, not kept
            cache[key] = parsed
    return parsed
