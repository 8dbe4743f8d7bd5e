"""Speed and accuracy of each precision variant of the catalogue's inference models, on this machine.

    .venv/bin/python bench/inference.py [--quick] [--threads N] [--repeats N]

For MiniLM (text embeddings of standard-library docstrings) and the digits classifier (held-out digits), every
precision (fp32, fp16, fp8 emulated, and INT8 by each recipe: u8s8 full range, u8s7 with 7-bit weights, u8u8 with
uint8 weights; marketplace/inference/quantization.py) is built from the FP32 model, run through the car's own
`ModelRunner` with the same thread count, and compared with FP32 from the same run:
- items_per_s: items / median wall time of one pass over all items (tokenizing included, as in the car), after a
  warm-up pass; repeats are interleaved across precisions so that a noisy neighbour hits them all alike.
- batch_latency_ms: median wall time of one batch (ModelRunner.run_batch), over every batch of every repeat.
- speedup_vs_fp32: the median over repeats of (FP32's pass time / this precision's pass time in the same repeat):
  pairing passes run seconds apart keeps a slow spell of a shared machine from landing on one side only.
- cosine_min (embeddings) or top1_agreement (classifier), max_abs_error: against FP32 outputs, see accuracy.py.
- fp8 is emulated (FP8-rounded weights, FP32 compute): its accuracy is FP8's, its speed FP32's.

INT8's accuracy depends on the CPU (U8S8 saturates without VNNI), so the report starts with this CPU's instruction
sets and compute class (fleet/agent/hardware.py), and names the INT8 recipe the platform would build for a fleet of
every class (`int8_sent`: the first of int8_recipes that meets the model's tolerance here).

Results: bench/results/inference.json (and a table on stdout). Tests never assert timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from fleet.agent import hardware  # noqa: E402
from fleet.agent.inference import TENSOR, TEXT, ModelRunner, ModelSpec, batches  # noqa: E402
from marketplace.inference import catalogue  # noqa: E402
from marketplace.inference.accuracy import compare, passes  # noqa: E402
from marketplace.inference.costing import ch_per_item, macs_per_item  # noqa: E402
from marketplace.inference.quantization import INT8_RECIPES, build_variant, int8_recipes, variant_method  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "inference.json"
# (name, precision, INT8 recipe)
VARIANTS = (
    ("fp32", "fp32", None),
    ("fp16", "fp16", None),
    *((f"int8-{recipe}", "int8", recipe) for recipe in INT8_RECIPES),
    ("fp8", "fp8", None),
)
PRECISIONS = tuple(name for name, _, _ in VARIANTS)
# Every class a car may have: what the platform builds INT8 for by default (INT8_TARGET_CLASSES).
FLEET_CLASSES = hardware.COMPUTE_CLASSES
MIN_SAMPLE_S = 0.25


@dataclass
class Workload:
    name: str
    description: str
    fp32: bytes
    spec: ModelSpec
    items: list[Any]
    batch_size: int
    metric: str  # "cosine" or "top1"
    tolerance: float  # the catalogue's: what a variant must meet
    calibration: list[dict[str, np.ndarray]] | None = None
    labels: np.ndarray | None = None


def minilm_workload(quick: bool) -> Workload:
    onnx_path, tokenizer_path = catalogue.minilm_paths()
    return Workload(
        name="minilm-l3-embeddings",
        description="paraphrase-MiniLM-L3 sentence embeddings (384-d) of standard-library docstrings",
        fp32=onnx_path.read_bytes(),
        spec=ModelSpec(kind=TEXT, output_name=catalogue.MINILM_OUTPUT, tokenizer_json=tokenizer_path.read_text()),
        items=catalogue.demo_documents(64 if quick else 200),
        batch_size=32,
        metric="cosine",
        tolerance=0.99,
    )


def digits_workload(quick: bool) -> Workload:
    held_out = 256 if quick else 597
    all_digits = catalogue.digits_items(1797)
    training = all_digits[597:]
    return Workload(
        name="digits-mlp-classifier",
        description="scikit-learn MLP (64-64-10) on the bundled 8x8 digits, held-out digits",
        fp32=catalogue.build_digits_classifier(),
        spec=ModelSpec(kind=TENSOR, output_name=catalogue.DIGITS_OUTPUT),
        items=list(all_digits[:held_out]),
        batch_size=64,
        metric="top1",
        tolerance=0.98,
        # The customer's own data: a few batches of the training digits, never the held-out ones.
        calibration=[{catalogue.DIGITS_INPUT: training[start : start + 32]} for start in range(0, 256, 32)],
        labels=catalogue.digits_labels(held_out),
    )


def run_workload(workload: Workload, *, threads: int, repeats: int) -> dict[str, Any]:
    variants: dict[str, bytes] = {}
    build_s: dict[str, float] = {}
    for name, precision, recipe in VARIANTS:
        started = time.perf_counter()
        options = {"recipe": recipe} if recipe else {}
        variants[name] = build_variant(workload.fp32, precision, calibration=workload.calibration, **options)
        build_s[name] = time.perf_counter() - started

    runners = {precision: ModelRunner(data, workload.spec, threads=threads) for precision, data in variants.items()}
    parts = list(batches(workload.items, workload.batch_size))
    # Warm-up pass, which is also the pass whose outputs are compared.
    outputs = {
        precision: runner.run(workload.items, batch_size=workload.batch_size) for precision, runner in runners.items()
    }

    # A tiny model's pass takes a millisecond: time enough passes per sample that timer and scheduler noise fade.
    started = time.perf_counter()
    runners["fp32"].run(workload.items, batch_size=workload.batch_size)
    loops = max(1, math.ceil(MIN_SAMPLE_S / max(time.perf_counter() - started, 1e-6)))
    pass_s: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    batch_s: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    for _ in range(repeats):
        for precision, runner in runners.items():
            started = time.perf_counter()
            for _ in range(loops):
                for part in parts:
                    batch_started = time.perf_counter()
                    runner.run_batch(part)
                    batch_s[precision].append(time.perf_counter() - batch_started)
            pass_s[precision].append((time.perf_counter() - started) / loops)

    example = runners["fp32"].feeds(parts[0])
    macs = macs_per_item(workload.fp32, example_feeds=example)
    items = len(workload.items)
    reference = outputs["fp32"]
    results: dict[str, Any] = {}
    for precision in PRECISIONS:
        rate = items / statistics.median(pass_s[precision])
        metrics = compare(reference, outputs[precision], metric=workload.metric)
        row: dict[str, Any] = {
            "items_per_s": round(rate, 1),
            "speedup_vs_fp32": round(
                statistics.median(ref / own for ref, own in zip(pass_s["fp32"], pass_s[precision], strict=True)), 3
            ),
            **{key: round(value, 6) for key, value in metrics.items()},
            "batch_latency_ms": round(statistics.median(batch_s[precision]) * 1e3, 3),
            "size_bytes": len(variants[precision]),
            "build_s": round(build_s[precision], 2),
            "method": variant_method(variants[precision]),
        }
        if workload.labels is not None:
            row["label_accuracy"] = round(float(np.mean(outputs[precision].argmax(axis=1) == workload.labels)), 4)
        if precision == "fp8":
            row["emulated"] = True
        row["meets_tolerance"] = passes(metrics, metric=workload.metric, tolerance=workload.tolerance)
        results[precision] = row
    recipes = int8_recipes(set(FLEET_CLASSES) | {hardware.compute_class(hardware.detect())})
    sent = next((f"int8-{r}" for r in recipes if results[f"int8-{r}"]["meets_tolerance"]), f"int8-{recipes[-1]}")
    return {
        "description": workload.description,
        "metric": workload.metric,
        "tolerance": workload.tolerance,
        "int8_sent": sent,
        "items": items,
        "batch_size": workload.batch_size,
        "passes_per_sample": loops,
        "macs_per_item": macs,
        "ch_per_item": ch_per_item(macs),
        "variants": results,
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    report = hardware.detect()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": report["cpu_model"],
        "isa": report["isa"],
        "compute_class": hardware.compute_class(report),
        "int8_exact": hardware.int8_exact(hardware.compute_class(report)),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def print_table(name: str, result: dict[str, Any]) -> None:
    accuracy = "cosine_min" if result["metric"] == "cosine" else "top1_agreement"
    print(f"\n{name}: {result['description']}")
    print(f"  {result['items']} items, batch {result['batch_size']}, {result['macs_per_item']:,} MACs/item")
    print(
        f"  {'variant':<16}{'items/s':>10}{'vs fp32':>9}{'batch ms':>10}{accuracy:>16}{'max abs err':>13}"
        f"{'size kB':>10}  meets {result['tolerance']}"
    )
    for precision, row in result["variants"].items():
        label = "fp8 (emulated)" if row.get("emulated") else precision
        sent = "  <- sent to cars" if precision == result["int8_sent"] else ""
        print(
            f"  {label:<16}{row['items_per_s']:>10.1f}{row['speedup_vs_fp32']:>8.2f}x{row['batch_latency_ms']:>10.2f}"
            f"{row[accuracy]:>16.4f}{row['max_abs_error']:>13.4f}{row['size_bytes'] / 1e3:>10,.0f}"
            f"  {'yes' if row['meets_tolerance'] else 'NO'}{sent}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per precision (default 7, quick 3)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)

    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {"quick": args.quick, "threads": args.threads, "repeats": repeats},
        "models": {},
    }
    # ONNX Runtime's quantization tools log advice (pre-processing) to the root logger; it does not apply here.
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for workload in (minilm_workload(args.quick), digits_workload(args.quick)):
            result = run_workload(workload, threads=args.threads, repeats=repeats)
            report["models"][workload.name] = result
            print_table(workload.name, result)
    report["settings"]["wall_s"] = round(time.perf_counter() - started, 1)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    cpu = report["machine"]
    isa = ", ".join(cpu["isa"])
    print(f"\n{cpu['cpu_model']} ({cpu['compute_class']}: {isa}), {args.threads} threads, {repeats} repeats")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {report['settings']['wall_s']} s")


if __name__ == "__main__":
    main()
