"""What a car's compute can do: its CPU's instruction sets, its accelerator and ONNX Runtime's providers, and the
compute class that follows from them. No Django: the car imports this, and so does the platform, which classifies
what a car reports with the same function (`compute_class`) and never takes a class from the car.

Why the class matters: the same INT8 model gives different numbers on different CPUs. ONNX Runtime multiplies uint8
activations by int8 weights (U8S8). Where the CPU has a dot-product instruction that sums into 32 bits (x86 VNNI,
ARM's NEON/dot-product) that is exact; on x86 without VNNI (AVX2, AVX-512 without VNNI) the kernels use
`vpmaddubsw`, which adds two uint8 × int8 products into a saturating int16, so a large activation times a large
weight clips. MiniLM's INT8 variant gives a worst cosine of 0.948 to FP32 there against 0.994 on VNNI. The classes:

    x86_64-vnni      x86-64 with AVX-512 VNNI or AVX-VNNI: U8S8 exact
    x86_64-avx2      x86-64 with AVX2, without VNNI: U8S8 may saturate
    x86_64-baseline  x86-64 without AVX2 (SSE only): U8S8 may saturate
    arm64-dotprod    ARMv8.2+ with the dot-product extension: exact
    arm64-neon       ARMv8 NEON: exact (products widened before they are summed)
    other            anything else, or a report that says nothing: assume the worst

The report (the body of POST /api/v1/agent/hardware/, sent when the agent starts):

    arch             str        "x86_64", "arm64" or what the platform module says
    isa              list[str]  the CPU features that matter here (ISA_FEATURES), lower case
    cpu_model        str        e.g. "AMD EPYC 7B12" (for people; decides nothing)
    cpus             int        logical CPUs
    accelerator      str        the inference accelerator, "" when the work runs on the CPU
    providers        list[str]  ONNX Runtime's execution providers, e.g. ["CPUExecutionProvider"]
    runtime_version  str        ONNX Runtime's version
    fp8              bool       the hardware runs FP8 natively (no CPU does; the FP8 variant is emulated there)
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

VNNI = "x86_64-vnni"
AVX2 = "x86_64-avx2"
X86_BASELINE = "x86_64-baseline"
ARM_DOTPROD = "arm64-dotprod"
ARM_NEON = "arm64-neon"
OTHER = "other"
COMPUTE_CLASSES = (VNNI, AVX2, X86_BASELINE, ARM_DOTPROD, ARM_NEON, OTHER)
CLASS_NAMES = {
    VNNI: "x86-64 with VNNI",
    AVX2: "x86-64 with AVX2, no VNNI",
    X86_BASELINE: "x86-64 without AVX2",
    ARM_DOTPROD: "ARM64 with dot product",
    ARM_NEON: "ARM64 NEON",
    OTHER: "unknown CPU",
}

# The features reported (Linux's names in /proc/cpuinfo); the rest of a CPU's long list says nothing about inference.
X86_FEATURES = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
)  # fmt: skip
ARM_FEATURES = ("asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2")
ISA_FEATURES = X86_FEATURES + ARM_FEATURES
_VNNI_FEATURES = {"avx512_vnni", "avx_vnni"}
_ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# Limits of a report, shared with the platform's validation (fleet/apis.py).
MAX_FEATURES = 64
MAX_PROVIDERS = 16
_FEATURE = re.compile(r"[a-z0-9_]{1,32}")


def compute_class(report: Mapping[str, Any]) -> str:
    """The compute class of a hardware report (see the module docstring); OTHER when it cannot tell."""
    arch = _ARCH_NAMES.get(str(report.get("arch", "")).lower(), "")
    isa = {str(feature).lower() for feature in report.get("isa") or ()}
    if arch == "x86_64":
        if isa & _VNNI_FEATURES:
            return VNNI
        return AVX2 if "avx2" in isa else X86_BASELINE
    if arch == "arm64":
        return ARM_DOTPROD if "asimddp" in isa else ARM_NEON
    return OTHER


def int8_exact(compute_class_: str) -> bool:
    """Whether ONNX Runtime's U8S8 kernels are exact on this class (no int16 saturation): see the module docstring."""
    return compute_class_ in (VNNI, ARM_DOTPROD, ARM_NEON)


def detect(*, accelerator: str = "") -> dict[str, Any]:
    """This machine's report. Reads /proc/cpuinfo on Linux (sysctl on macOS); where neither says anything the report
    has no features, and the platform classes the car as OTHER (the worst case) rather than guess."""
    arch = _ARCH_NAMES.get(platform.machine().lower(), platform.machine().lower()[:16] or "unknown")
    model, features = _cpu_linux(Path("/proc/cpuinfo"))
    if not features and platform.system() == "Darwin":
        model, features = _cpu_macos()
    try:
        import onnxruntime

        providers, version = list(onnxruntime.get_available_providers()), onnxruntime.__version__
    except ImportError:
        providers, version = [], ""
    return {
        "arch": arch,
        "isa": sorted(features & set(ISA_FEATURES)),
        "cpu_model": model[:200],
        "cpus": os.cpu_count() or 1,
        "accelerator": accelerator,
        "providers": providers[:MAX_PROVIDERS],
        "runtime_version": version[:40],
        "fp8": False,
    }


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, features) from the text of Linux's /proc/cpuinfo, x86 ("flags") or ARM ("Features")."""
    model, features = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not features:
            features = set(value.split())
    return model, features


def _cpu_linux(path: Path) -> tuple[str, set[str]]:
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        return "", set()


def _cpu_macos() -> tuple[str, set[str]]:
    import subprocess

    def sysctl(name: str) -> str:
        try:
            result = subprocess.run(  # noqa: S603 - a fixed program and a name of ours
                ["/usr/sbin/sysctl", "-n", name], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    model = sysctl("machdep.cpu.brand_string")
    listed = f"{sysctl('machdep.cpu.features')} {sysctl('machdep.cpu.leaf7_features')}"
    features = {feature.lower().replace(".", "_") for feature in listed.split()}
    if "avx512vnni" in features:
        features.add("avx512_vnni")
    if "avx2_0" in features or "avx2" in features:
        features.add("avx2")
    if platform.machine().lower() == "arm64":
        features.add("asimd")  # every Apple silicon CPU has NEON and the dot product
        if sysctl("hw.optional.arm.FEAT_DotProd") == "1":
            features.add("asimddp")
    return model, features


def clean_features(features: Iterable[str]) -> list[str]:
    """The reported features the platform keeps: known names only, sorted, de-duplicated."""
    return sorted({f for f in features if isinstance(f, str) and _FEATURE.fullmatch(f) and f in ISA_FEATURES})
