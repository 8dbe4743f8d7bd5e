"""The agent's wheel, as the site offers it for download (GET /agent/download/): the very files this server runs as
`fleet.agent`, packed as the `idlefleet-agent` distribution its pyproject.toml describes.

Why the server packs it itself rather than serving a file `pip wheel ./fleet/agent` made at deploy time: a pure-Python
wheel is a zip of the modules plus four small metadata files (PEP 427), which takes milliseconds and no build tools,
and the download can never be older or newer than the agent API this server speaks. tests/fleet/test_agent_package.py
checks that it holds the same files and metadata as the wheel `pip wheel ./fleet/agent` builds.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent / "agent"
PACKAGE = "idlefleet_agent"
# Zip entries dated at the format's epoch: the same files always give the same bytes (and sha256).
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheel:
    filename: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project['requires-python']}",
        *(f"Requires-Dist: {requirement}" for requirement in project.get("dependencies", [])),
    ]
    return "\n".join(lines) + "\n"


@functools.cache
def agent_wheel() -> Wheel:
    """The agent's wheel (built once per process: the files do not change while it runs)."""
    project = tomllib.loads((AGENT_DIR / "pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    dist_info = f"{name}-{version}.dist-info"
    files: dict[str, bytes] = {
        f"{PACKAGE}/{module.name}": module.read_bytes() for module in sorted(AGENT_DIR.glob("*.py"))
    }
    scripts = "".join(f"{script} = {target}\n" for script, target in project.get("scripts", {}).items())
    files[f"{dist_info}/METADATA"] = _metadata(project).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: idlefleet\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    files[f"{dist_info}/top_level.txt"] = f"{PACKAGE}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return Wheel(filename=f"{name}-{version}-py3-none-any.whl", content=buffer.getvalue())
