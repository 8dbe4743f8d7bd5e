"""The `idlefleet` command as a customer installs it: `pip install ./client` into a fresh virtual environment (no
site packages of the server's), then run as a subprocess from its installed entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture(scope="session")
def idlefleet_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the client installed from this repository (from the package index: httpx,
    typer, rich)."""
    venv = tmp_path_factory.mktemp("idlefleet-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPOSITORY / "client")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The command runs without the server's code: the environment has none of its packages.
    assert subprocess.run([str(python), "-c", "import django"], capture_output=True).returncode != 0
    return venv


@dataclass(frozen=True)
class Result:
    code: int
    out: str  # stdout without terminal escapes
    err: str  # stderr, likewise


@pytest.fixture
def cli_env(idlefleet_venv, tmp_path) -> dict[str, str]:
    """A user's environment: the venv's commands on PATH, a home and a config file of this test's own."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": f"{idlefleet_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "IDLEFLEET_CONFIG": str(home / ".config" / "idlefleet" / "config.json"),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
    }


@pytest.fixture
def idlefleet(idlefleet_venv, cli_env, tmp_path):
    """Run `idlefleet ARGS` (the installed entry point) in `tmp_path`; `env` adds or overrides variables."""

    def run(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 60) -> Result:
        done = subprocess.run(
            [str(idlefleet_venv / "bin" / "idlefleet"), *args], env={**cli_env, **(env or {})}, input=input,
            capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
        )  # fmt: skip
        return Result(done.returncode, ANSI.sub("", done.stdout), ANSI.sub("", done.stderr))

    return run
