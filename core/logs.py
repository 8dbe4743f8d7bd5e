"""Logging helpers the settings' LOGGING names."""

import logging


class ClientErrorsWithoutTraceback(logging.Filter):
    """A refused request (403, 404: a 4xx) is the client's doing, not a fault of the code: Django logs it with the
    traceback of the exception that refused it (PermissionDenied, Http404). Keep its one line, drop the traceback;
    a 5xx keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if 400 <= getattr(record, "status_code", 500) < 500:
            record.exc_info, record.exc_text = None, None
        return True
