"""Where the command line keeps the server's URL and its token.

The file is `~/.config/idlefleet/config.json` (or the path in `IDLEFLEET_CONFIG`), readable by its owner only (0600).
`IDLEFLEET_URL` and `IDLEFLEET_TOKEN` override what it holds, for scripts and CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def config_path() -> Path:
    override = os.environ.get("IDLEFLEET_CONFIG")
    return Path(override).expanduser() if override else Path.home() / ".config" / "idlefleet" / "config.json"


def load() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the configuration {path}: {error}") from error
    return data if isinstance(data, dict) else {}


def save(data: dict) -> Path:
    """Write the configuration, readable and writable by its owner only (it holds a token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its old mode through os.open
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    return path


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    url: str | None
    token: str | None
    username: str | None


def current() -> Settings:
    """The server and token to use: the environment first, then the file."""
    data = load()
    return Settings(
        url=os.environ.get("IDLEFLEET_URL") or data.get("url"),
        token=os.environ.get("IDLEFLEET_TOKEN") or data.get("token"),
        username=data.get("username"),
    )
