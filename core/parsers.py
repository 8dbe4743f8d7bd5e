"""JSON bodies with a bound on their nesting.

Python's json module parses nested arrays and objects by recursion: `[` nested a few thousand deep exhausts the
interpreter's stack (a RecursionError, a 500) before any serializer sees the body. No request of this API nests deeper
than a handful of levels, so anything deeper than JSON_MAX_DEPTH is refused with a 400 before it is parsed.
"""

from __future__ import annotations

import codecs
import re

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.settings import api_settings
from rest_framework.utils import json

# A string (skipped whole, escapes included: a bracket inside one does not nest) or a bracket. Possessive, so an
# unterminated string costs one pass, not a backtracking search.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def json_too_deep(text: str | bytes, *, limit: int) -> bool:
    """Whether the JSON `text` nests arrays and objects more than `limit` levels deep.

    Linear in the text, and nearly free for the usual body: one with no more brackets than `limit` cannot nest deeper
    (two C-speed counts; a car's result, megabytes of base64, has none). Malformed text is left to the parser.
    """
    if isinstance(text, bytes):
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        text = text.decode("utf-8", errors="replace")
    elif text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def too_deep_error() -> ParseError:
    limit = settings.JSON_MAX_DEPTH
    return ParseError(f"JSON parse error - arrays and objects nested more than {limit} levels deep.")


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing a body nested deeper than JSON_MAX_DEPTH (a 400 `parse_error`) before parsing."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
        except UnicodeDecodeError as error:
            raise ParseError(f"JSON parse error - {error}") from None
        if json_too_deep(text, limit=settings.JSON_MAX_DEPTH):
            raise too_deep_error()
        try:
            return json.loads(text, parse_constant=json.strict_constant if api_settings.STRICT_JSON else None)
        except ValueError as error:
            raise ParseError(f"JSON parse error - {error}") from None
