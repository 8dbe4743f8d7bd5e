"""A thin client of Idlefleet's REST API (`Client`, `ApiError`) and the `idlefleet` command line built on it."""

from .api import ApiError, Client

__all__ = ["ApiError", "Client"]
__version__ = "0.1.0"
