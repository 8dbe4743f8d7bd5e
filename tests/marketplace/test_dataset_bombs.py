"""Datasets that are small files but huge once parsed, or that lie about their size, are refused before they are
inflated, naming the cap; texts that are not text are refused naming the line. Nothing of them is kept."""

import hashlib
import io
import json
import math
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace import storage
from marketplace.datasets import (
    DatasetLimits,
    DatasetRejected,
    DatasetTooLarge,
    calibration_indices,
    holdout_indices,
    parse_dataset,
)
from marketplace.inference.catalogue import digits_items
from marketplace.models import Dataset, InferenceModel, PrecisionVariant
from tests.marketplace.conftest import PIXELS

TEXTS = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
         {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]  # fmt: skip

# Artifacts in a folder of each test's own: "nothing stored" must not see another test's files.
pytestmark = pytest.mark.usefixtures("own_artifacts")


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape, dtype="<f4") -> bytes:
    """A .npy header alone: what a file claims before its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npz_of_zeros(shape, dtype="<f4") -> bytes:
    """A real .npz whose one array is zeros of `shape`, written a block at a time: deflate makes 512 MB of zeros
    about 0.5 MB."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    out = io.BytesIO()
    archive = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED)
    with archive, archive.open("items.npy", "w", force_zip64=True) as member:
        member.write(npy_header(shape, dtype))
        block = bytes(16 * 1024 * 1024)
        for start in range(0, size, len(block)):
            member.write(block[: min(len(block), size - start)])
    return out.getvalue()


def plain_npz(array, *, name="items.npy") -> bytes:
    """A .npz written without zip64 fields, so its directory's sizes sit where a test can rewrite them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, npy(array))
    return out.getvalue()


def with_declared_size(data: bytes, size: int) -> bytes:
    """The archive with its one member's uncompressed size rewritten, in its local header and the directory."""
    data = bytearray(data)
    struct.pack_into("<I", data, 22, size)  # local file header
    directory = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, directory + 24, size)  # central directory entry
    return bytes(data)


@pytest.fixture(scope="module")
def bomb():
    """About 0.5 MB: one million items of 64 float64 zeros, 512 MB once inflated, twice MAX_DATASET_INFLATED_BYTES."""
    return npz_of_zeros((1_000_000, 64), "<f8")


@pytest.fixture
def text_model(alice):
    return InferenceModel.objects.create(
        owner=alice, name="embeddings", kind="text", onnx_sha256="1" * 64, onnx_size=1, inputs=TEXTS,
        output_name="461", status=InferenceModel.Status.READY,
    )  # fmt: skip


def upload(client, model, name: str, data: bytes):
    return client.post(f"/api/v1/models/{model.pk}/datasets/", {"file": SimpleUploadedFile(name, data), "name": "x"})


def assert_nothing_kept(client, model, data: bytes) -> None:
    assert not Dataset.objects.exists()
    assert not PrecisionVariant.objects.filter(inference_model=model).exists()
    assert not storage.artifact_exists(hashlib.sha256(data).hexdigest())
    assert client.get("/customer/").status_code == 200
    assert client.get(f"/customer/models/{model.pk}/").status_code == 200


@pytest.mark.django_db
def test_a_1_mb_npz_that_inflates_past_the_cap_is_refused_before_it_is_materialized(client, alice, digits_model, bomb):
    client.force_login(alice)
    assert len(bomb) < 1_000_000

    tracemalloc.start()
    try:
        response = upload(client, digits_model, "bomb.npz", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert response.json()["message"] == (
        "file: Too large for digits: the array inflates to 512.0 MB; the limit is 268.4 MB "
        "(MAX_DATASET_INFLATED_BYTES)."
    )
    # The request held the upload and its headers, never the array (NumPy reports its buffers to tracemalloc).
    assert peak < 16 * 1024 * 1024
    assert_nothing_kept(client, digits_model, bomb)


@pytest.mark.django_db
def test_an_npz_with_more_items_than_the_cap_is_refused_naming_the_cap(client, alice, digits_model, settings):
    settings.MAX_DATASET_ITEMS = 1000
    client.force_login(alice)
    data = npz_of_zeros((5000, 64))

    response = upload(client, digits_model, "many.npz", data)

    assert response.status_code == 413
    assert "the array has 5,000 items; the limit is 1,000 (MAX_DATASET_ITEMS)" in response.json()["message"]
    assert_nothing_kept(client, digits_model, data)


@pytest.mark.django_db
def test_an_npz_member_that_lies_about_its_size_is_refused(client, alice, digits_model):
    client.force_login(alice)
    honest = plain_npz(digits_items(100))
    declared = zipfile.ZipFile(io.BytesIO(honest)).infolist()[0].file_size
    lying = with_declared_size(honest, declared - 6400)

    response = upload(client, digits_model, "lying.npz", lying)

    assert response.status_code == 400
    assert f"holds {declared - 6400:,} bytes but its array needs {declared:,}" in response.json()["message"]
    assert_nothing_kept(client, digits_model, lying)


def test_a_member_that_inflates_to_more_than_its_header_says_is_refused():
    # The header promises 10 items, the deflated data hold 1,000: only what the header promised is ever inflated.
    header = npy_header((10, 64))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("items.npy", header + np.zeros((1000, 64), np.float32).tobytes())
    data = with_declared_size(out.getvalue(), len(header) + 10 * 64 * 4)

    with pytest.raises(DatasetRejected, match=r"Bad CRC-32 for file 'items.npy'"):
        parse_dataset(data, fmt="npz", kind="tensor", inputs=PIXELS)


def test_an_npy_header_claiming_33_million_items_is_refused_without_reading_on():
    data = npy_header((33_554_432, 64))  # the header alone: 128 bytes that claim 8.6 GB

    with pytest.raises(DatasetTooLarge, match=r"33,554,432 items; the limit is 1,000,000 \(MAX_DATASET_ITEMS\)"):
        parse_dataset(data, fmt="npy", kind="tensor", inputs=PIXELS)


def test_an_npy_header_of_gigabytes_is_refused_before_it_is_read():
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{"

    with pytest.raises(DatasetRejected, match="its header says it is 2,147,483,648 bytes long"):
        parse_dataset(data, fmt="npy", kind="tensor", inputs=PIXELS)


def test_an_npz_listing_thousands_of_members_is_refused_before_its_directory_is_read():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for number in range(100):
            archive.writestr(f"a{number}.npy", b"")

    with pytest.raises(DatasetRejected, match="lists 100 members"):
        parse_dataset(out.getvalue(), fmt="npz", kind="tensor", inputs=PIXELS)


def test_a_truncated_npy_is_refused():
    with pytest.raises(DatasetRejected, match="the file is truncated"):
        parse_dataset(npy(digits_items(10))[:-4], fmt="npy", kind="tensor", inputs=PIXELS)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['"hello"', '"caf\\u00e9 \\ud800"'], "line 2: holds a lone surrogate (U+D800)"),
        (['{"text": "a \\udfff lone low half"}'], "line 1: holds a lone surrogate (U+DFFF)"),
        (['"fine"', "", '"a NUL \\u0000 here"'], "line 3: holds a NUL character"),
    ],
    ids=["high-surrogate", "low-surrogate", "nul"],
)
@pytest.mark.django_db
def test_texts_with_a_lone_surrogate_or_a_nul_are_refused_naming_the_line(client, alice, text_model, lines, message):
    client.force_login(alice)
    data = "\n".join(lines).encode()

    response = upload(client, text_model, "texts.jsonl", data)

    assert response.status_code == 400
    assert message in response.json()["message"]
    assert_nothing_kept(client, text_model, data)


def test_texts_with_real_non_ascii_characters_and_escaped_pairs_are_kept():
    data = '"café"\n"\\ud83d\\ude00 a smile"\n'.encode()

    assert parse_dataset(data, fmt="jsonl", kind="text", inputs=TEXTS).items == ["café", "😀 a smile"]


@pytest.mark.django_db
def test_more_texts_than_the_cap_are_refused_at_the_first_line_past_it(client, alice, text_model, settings):
    settings.MAX_DATASET_ITEMS = 10
    client.force_login(alice)
    data = b'"a text"\n' * 50

    response = upload(client, text_model, "texts.jsonl", data)

    assert response.status_code == 413
    assert "line 11: more than 10 texts; the limit is 10 (MAX_DATASET_ITEMS)" in response.json()["message"]
    assert_nothing_kept(client, text_model, data)


def test_texts_past_the_inflated_cap_are_refused_naming_it():
    data = b"\n".join([json.dumps("x" * 1000).encode()] * 100)

    with pytest.raises(DatasetTooLarge, match=r"the limit is 10.0 kB \(MAX_DATASET_INFLATED_BYTES\)"):
        parse_dataset(data, fmt="jsonl", kind="text", inputs=TEXTS, limits=DatasetLimits(max_inflated_bytes=10_000))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<u1"])
def test_a_legitimate_array_parses_to_the_same_float32_items(order, dtype):
    items = np.asarray(digits_items(300) * 16, dtype=dtype, order=order)

    parsed = parse_dataset(npy(items), fmt="npy", kind="tensor", inputs=PIXELS)

    assert parsed.items.dtype == np.float32
    assert np.array_equal(parsed.items, items.astype(np.float32))
    assert parsed.nbytes == 300 * 64 * 4


def test_the_largest_dataset_the_default_caps_allow_is_accepted_from_its_header():
    # One million digit images: the product's largest dataset, at both caps (1,000,000 items, 256 MB of float32).
    from marketplace.datasets import _check_array

    _check_array((1_000_000, 64), np.dtype("<f4"), inputs=PIXELS, limits=DatasetLimits())


class CountingHeldOut(list):
    """A list of held-out indices that counts how often it is walked."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_choosing_calibration_items_walks_the_held_out_items_once_not_once_per_item():
    held_out = CountingHeldOut(holdout_indices(100_000))
    CountingHeldOut.walks = 0

    chosen = calibration_indices(100_000, held_out, 32)

    assert CountingHeldOut.walks == 1
    assert len(chosen) == 32
    assert not set(chosen) & set(held_out)
    assert chosen == [i for i in range(100_000) if i not in set(held_out)][:32]


def test_when_every_item_is_held_out_they_calibrate_too():
    assert calibration_indices(5, holdout_indices(5), 32) == [0, 1, 2, 3, 4]


@pytest.mark.django_db
def test_the_dataset_cache_is_bounded_by_bytes_and_keeps_the_newest(alice, digits_model, settings):
    one = 200 * 64 * 4  # bytes of 200 digit images as float32
    settings.DATASET_CACHE_BYTES = 3 * one
    datasets = []
    for offset in range(4):
        data = npy(digits_items(200 + offset)[offset:])
        datasets.append(Dataset.objects.create(
            owner=alice, inference_model=digits_model, name=f"d{offset}", sha256=storage.artifact_save(data),
            size_bytes=len(data), format="npy", item_count=200, status=InferenceModel.Status.READY,
        ))  # fmt: skip

    for dataset in datasets:
        assert storage.dataset_items(dataset).count == 200
    cache = storage.dataset_cache()

    assert cache.currsize == 3 * one <= settings.DATASET_CACHE_BYTES
    assert {key[0] for key in cache} == {d.sha256 for d in datasets[1:]}  # the oldest went first
    big = np.resize(digits_items(1797), (1000, 64))
    data = npy(big)
    huge = Dataset.objects.create(
        owner=alice, inference_model=digits_model, name="big", sha256=storage.artifact_save(data),
        size_bytes=len(data), format="npy", item_count=1000, status=InferenceModel.Status.READY,
    )  # fmt: skip
    assert np.array_equal(storage.dataset_items(huge).items, big)  # used once, larger than the whole cache
    assert huge.sha256 not in {key[0] for key in cache} and cache.currsize <= settings.DATASET_CACHE_BYTES


@pytest.mark.django_db
def test_the_dataset_form_answers_413_on_its_page_for_a_dataset_over_a_cap(client, alice, digits_model, settings):
    settings.MAX_DATASET_ITEMS = 10
    client.force_login(alice)
    data = npy(digits_items(20))

    response = client.post(
        f"/customer/models/{digits_model.pk}/datasets/", {"name": "many", "file": SimpleUploadedFile("d.npy", data)}
    )

    assert response.status_code == 413
    assert "the array has 20 items; the limit is 10 (MAX_DATASET_ITEMS)" in response.content.decode()
    assert response.context["dataset_form"].errors  # the model's page, its form showing why
    assert_nothing_kept(client, digits_model, data)
