"""Acceptance: the vehicle agent runs in the car, where there is no Django; importing it must not pull Django in."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]

CHECK = (
    "import fleet.agent, fleet.agent.runner, fleet.agent.client, fleet.agent.simulation, fleet.agent.clock, "
    "fleet.agent.signing, fleet.agent.protocol, fleet.agent.executor, fleet.agent.inference, fleet.agent.vehicle, sys; "
    "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')]"
)


def test_the_agent_imports_without_django():
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}

    result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPOSITORY, env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def test_the_agent_command_line_starts_without_django():
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    check = textwrap.dedent(
        """
        import runpy, sys
        sys.argv = ["fleet.agent", "--help"]
        try:
            runpy.run_module("fleet.agent", run_name="__main__")
        except SystemExit:
            pass
        assert not [m for m in sys.modules if m == "django" or m.startswith("django.")]
        """
    )

    result = subprocess.run([sys.executable, "-c", check], cwd=REPOSITORY, env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "--simulate" in result.stdout
