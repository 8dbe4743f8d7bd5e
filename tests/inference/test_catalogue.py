"""The built-in catalogue: everything comes from installed packages, nothing is downloaded."""

import numpy as np
import onnx

from marketplace.inference import catalogue


def test_minilm_and_its_tokenizer_are_installed_files():
    onnx_path, tokenizer_path = catalogue.minilm_paths()

    assert onnx_path.suffix == ".onnx"
    assert onnx_path.is_file()
    assert tokenizer_path.name == "tokenizer.json"
    assert tokenizer_path.is_file()


def test_demo_documents_are_distinct_english_paragraphs_in_a_fixed_order():
    documents = catalogue.demo_documents(200)

    assert len(documents) == len(set(documents)) == 200
    assert all(40 <= len(document) <= 400 for document in documents)
    assert all(document[0].isupper() and " " in document for document in documents)
    assert catalogue.demo_documents(50) == documents[:50]


def test_digits_items_are_scaled_float32_images_held_out_first():
    items = catalogue.digits_items(700)

    assert items.shape == (700, 64)
    assert items.dtype == np.float32
    assert items.min() >= 0.0 and items.max() <= 1.0
    assert catalogue.digits_labels(700).shape == (700,)


def test_the_digits_classifier_is_rebuilt_byte_for_byte():
    first = catalogue.build_digits_classifier()
    catalogue.build_digits_classifier.cache_clear()

    second = catalogue.build_digits_classifier()

    assert first == second
    model = onnx.load_from_string(first)
    assert [i.name for i in model.graph.input] == [catalogue.DIGITS_INPUT]
    assert catalogue.DIGITS_OUTPUT in [o.name for o in model.graph.output]
