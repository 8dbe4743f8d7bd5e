"""Seed the hardware profiles from the article. Staff edit every figure in the admin; HW5's are assumptions."""

from django.db import migrations

PROFILES = [
    {
        "name": "HW3",
        "int8_tops": 144.0,
        "factor_int8": 1.0,
        "factor_fp16": 0.1,
        "factor_fp32": 0.05,
        "typical_power_w": 72,
        "max_power_w": 150,
        "runtime_version": "1.20.1",
        "notes": "FSD computer 3: about 144 INT8 TOPS. FP16/FP32 run on the GPU at a fraction of the NPU's speed.",
    },
    {
        "name": "HW4",
        "int8_tops": 245.0,
        "factor_int8": 1.0,
        "factor_fp16": 0.25,
        "factor_fp32": 0.1,
        "typical_power_w": 100,
        "max_power_w": 200,
        "runtime_version": "1.20.1",
        "notes": "FSD computer 4: about 245 INT8 TOPS at about 100 W (the article's figures).",
    },
    {
        "name": "HW5",
        "int8_tops": 1225.0,
        "factor_int8": 1.0,
        "factor_fp8": 1.0,
        "factor_fp16": 0.5,
        "factor_fp32": 0.25,
        "typical_power_w": 300,
        "max_power_w": 800,
        "runtime_version": "1.20.1",
        "is_assumed": True,
        "notes": "Designed, expected in cars toward the end of next year; its figures are unknown. These are "
        "placeholders (5x HW4, with native FP8): edit them when the real ones are published.",
    },
]


def seed(apps, schema_editor):
    HardwareProfile = apps.get_model("fleet", "HardwareProfile")
    for profile in PROFILES:
        HardwareProfile.objects.update_or_create(name=profile["name"], defaults=profile)


class Migration(migrations.Migration):
    dependencies = [("fleet", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
