"""What a car reports about its compute, and the class the platform derives from it: the real functions, fed with
the CPU descriptions of machines with and without VNNI (and ARM), whatever CPU runs the tests."""

import pytest

from fleet.agent import hardware

# Excerpts of Linux's /proc/cpuinfo on three kinds of machine.
XEON_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni
processor\t: 1
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi2 sha_ni
"""
SKYLAKE_AVX512 = """model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
ALDER_LAKE = """model name\t: 12th Gen Intel(R) Core(TM) i7-1255U
flags\t\t: fpu sse sse2 fma sse4_1 sse4_2 avx f16c avx2 avx_vnni
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""
OLD_ARM = """Features\t: fp asimd evtstrm crc32 cpuid
"""


def report_of(cpuinfo: str, arch: str) -> dict:
    model, features = hardware.parse_cpuinfo(cpuinfo)
    return {"arch": arch, "isa": hardware.clean_features(features), "cpu_model": model}


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "compute_class", "exact"),
    [
        (XEON_VNNI, "x86_64", hardware.VNNI, True),
        (ALDER_LAKE, "x86_64", hardware.VNNI, True),  # AVX-VNNI, without AVX-512
        (EPYC_AVX2, "x86_64", hardware.AVX2, False),
        (SKYLAKE_AVX512, "x86_64", hardware.AVX2, False),  # AVX-512 without VNNI saturates like AVX2
        (GRAVITON2, "aarch64", hardware.ARM_DOTPROD, True),
        (OLD_ARM, "aarch64", hardware.ARM_NEON, True),
    ],
)
def test_a_cpu_description_gives_its_compute_class_and_whether_int8_is_exact_there(cpuinfo, arch, compute_class, exact):
    report = report_of(cpuinfo, arch)

    assert hardware.compute_class(report) == compute_class
    assert hardware.int8_exact(compute_class) is exact


def test_only_the_features_that_matter_are_kept_and_the_model_name_is_read():
    report = report_of(XEON_VNNI, "x86_64")

    assert report["cpu_model"] == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert "avx512_vnni" in report["isa"] and "sha_ni" not in report["isa"] and "fpu" not in report["isa"]
    assert report["isa"] == sorted(set(report["isa"]))


def test_a_report_that_says_nothing_is_the_worst_case():
    assert hardware.compute_class({}) == hardware.OTHER
    assert hardware.compute_class({"arch": "x86_64"}) == hardware.X86_BASELINE
    assert hardware.compute_class({"arch": "riscv64", "isa": ["avx512_vnni"]}) == hardware.OTHER
    assert not hardware.int8_exact(hardware.OTHER)


def test_this_machine_reports_a_known_class_and_its_runtime():
    report = hardware.detect()

    assert hardware.compute_class(report) in hardware.COMPUTE_CLASSES
    assert "CPUExecutionProvider" in report["providers"]
    assert report["runtime_version"]
    assert report["fp8"] is False  # no CPU runs FP8: the FP8 variant is emulated on it
    assert set(report["isa"]) <= set(hardware.ISA_FEATURES)
