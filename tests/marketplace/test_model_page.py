"""The model page tells a customer what her results hold, with the graph's own tensor names one click away."""

import pytest

from marketplace.models import InferenceModel
from tests.browser.test_page_widths import MINILM_OUTPUTS, TEXT_INPUTS

pytestmark = pytest.mark.django_db


def summary_and_details(html: str) -> tuple[str, str]:
    start = html.index('<article class="outputs">')
    article = html[start : html.index("</article>", start)]
    details = article[article.index("<details>") :]
    return article[: article.index("<details>")], details


def test_the_outputs_say_what_results_hold_and_keep_onnx_internals_in_technical_details(client, alice):
    model = InferenceModel.objects.create(
        owner=alice, name="MiniLM", kind="text", onnx_sha256="1" * 64, onnx_size=1, inputs=TEXT_INPUTS,
        outputs=MINILM_OUTPUTS, output_name="461", metric="cosine", status=InferenceModel.Status.READY,
    )  # fmt: skip
    client.force_login(alice)

    summary, details = summary_and_details(client.get(f"/customer/models/{model.pk}/").content.decode())

    assert "Your results hold the model&#x27;s embedding (384 values per item)." in summary
    for internal in ("onnx::Shape_422", "461", "463", "Concat461_dim_1"):
        assert internal not in summary, internal
        assert internal in details, internal
    assert "<summary><small>Technical details</small></summary>" in details
    assert 'class="overflow-auto"' in details  # a wide table scrolls inside its card


def test_a_meaningful_output_name_is_kept_and_a_classifier_gives_class_scores(client, digits_with_variants, alice):
    summary, _ = summary_and_details(client.get(f"/customer/models/{digits_with_variants.pk}/").content.decode())

    assert "Your results hold the model&#x27;s class scores, “probabilities” (10 values per item)." in summary


@pytest.mark.parametrize(
    ("output", "kind", "said"),
    [
        ({"name": "y", "dtype": "float32", "shape": None, "run_shape": [1, 8, 8]}, "tensor",
         "the model's output, “y” (an 8 × 8 array per item, 64 values)"),
        ({"name": "tokens", "dtype": "float32", "shape": ["b", "s", 384], "run_shape": [1, 1, 384]}, "text",
         "the model's output, “tokens” (384 values per token of each item)"),
        ({"name": "/pooler/Tanh_output_0", "dtype": "float32", "shape": ["b", "d"]}, "tensor",
         "the model's output (its size per item is set when the model runs)"),
    ],
)  # fmt: skip
def test_output_summaries(output, kind, said):
    from marketplace.templatetags.marketplace_tags import output_summary

    model = InferenceModel(kind=kind, metric="max_abs", outputs=[output], output_name=output["name"])
    assert output_summary(model) == said
