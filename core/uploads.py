"""Request-size caps, checked from Content-Length before a body is read, and again while its files stream in.

Django reads a request's body only when something asks for it (request.POST, .FILES or .body, DRF's request.data).
`RequestSizeMiddleware` answers 413 to a request that declares more bytes than its URL takes before anything reads
them: a client that declares 300 MB and sends 1 MB gets its answer at once, not after a timeout. `CappedUploadHandler`,
the first upload handler, stops a file as soon as it passes its own field's cap (a model upload's request may carry a
model and a tokenizer, so one file may pass its cap within the request's). Both answer as the rest of the API does,
in the JSON error shape with code `too_large`; pages answer with 413.html, which names the limit.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import JsonResponse
from django.shortcuts import render

from .exceptions import ApplicationError, error_body
from .units import human_bytes

# Room for a multipart body's part headers and boundaries, and the form's other fields, beside its files (bytes).
FORM_OVERHEAD_BYTES = 1024 * 1024

# The URLs that take files, by URL name, and the setting that caps each of their file fields (bytes). Any other
# request may carry DATA_UPLOAD_MAX_MEMORY_SIZE bytes, Django's cap on a body it reads into memory, and no file.
FILE_FIELD_CAPS: dict[str, dict[str, str]] = {
    "api-models": {"onnx_file": "MAX_MODEL_UPLOAD_BYTES", "tokenizer_file": "MAX_TOKENIZER_UPLOAD_BYTES"},
    "marketplace:model-new": {"onnx_file": "MAX_MODEL_UPLOAD_BYTES", "tokenizer_file": "MAX_TOKENIZER_UPLOAD_BYTES"},
    "api-model-datasets": {"file": "MAX_DATASET_UPLOAD_BYTES"},
    "marketplace:dataset-new": {"file": "MAX_DATASET_UPLOAD_BYTES"},
}


class UploadTooLarge(ApplicationError):
    """A request or one of its files is over its cap: 413, in the JSON error shape on the API."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        fields = {field: [message]} if field else {}
        super().__init__(f"{field}: {message}" if field else message, fields=fields, code="too_large", status=413)


def file_too_large(field: str, *, max_bytes: int, size: int | None = None) -> UploadTooLarge:
    """The error of a file over its cap; `size` when it is known (declared), else it passed the cap while read."""
    if size is not None:
        return UploadTooLarge(f"The file is {human_bytes(size)}; the limit is {human_bytes(max_bytes)}.", field=field)
    return UploadTooLarge(f"The file is larger than the {human_bytes(max_bytes)} limit.", field=field)


def _file_caps(request) -> dict[str, int]:
    match = getattr(request, "resolver_match", None)
    names = FILE_FIELD_CAPS.get(match.view_name if match else "", {})
    return {field: getattr(settings, setting) for field, setting in names.items()}


def _declared_length(request) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0  # as Django reads it: an unreadable length is no body


def _body_too_large(request) -> UploadTooLarge | None:
    """The error of a request that declares more bytes than its URL takes, or None."""
    declared = _declared_length(request)
    caps = _file_caps(request)
    if caps:
        if declared <= sum(caps.values()) + FORM_OVERHEAD_BYTES:
            return None
        message = f"The upload is {human_bytes(declared)}; the limit is {human_bytes(sum(caps.values()))}."
        return UploadTooLarge(message, field=next(iter(caps)))
    if declared <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        return None
    limit = human_bytes(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    return UploadTooLarge(f"The request body is {human_bytes(declared)}; the limit is {limit}.")


def too_large_response(request, error: ApplicationError):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(code=error.code, message=error.message, fields=error.fields), status=413)
    return render(request, "413.html", {"message": error.message}, status=413)


class RequestSizeMiddleware:
    """Listed before CsrfViewMiddleware, which reads a page's form: its process_view runs before any body is read."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if (error := _body_too_large(request)) is not None:
            return too_large_response(request, error)
        if request.method == "POST" and _file_caps(request) and not getattr(view_func, "csrf_exempt", False):
            # A page's upload form: CsrfViewMiddleware reads it next, outside the view, where a file over its cap
            # would be a 500. Read it here instead (DRF's views are csrf_exempt: the API reads it in the view).
            try:
                request.POST  # noqa: B018 - reading it is the point
            except UploadTooLarge as error:
                return too_large_response(request, error)
        return None

    def process_exception(self, request, exception):
        if isinstance(exception, UploadTooLarge):
            return too_large_response(request, exception)
        if isinstance(exception, RequestDataTooBig):  # a body without a Content-Length Django still counted
            limit = human_bytes(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
            return too_large_response(request, UploadTooLarge(f"The request body is larger than the {limit} limit."))
        return None


class CappedUploadHandler(FileUploadHandler):
    """Passes a file's chunks on to the next handler until the file passes its field's cap, then refuses the request
    (`UploadTooLarge`). A file in a field the URL does not take is skipped: nothing of it is stored."""

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        caps = _file_caps(self.request)
        if field_name not in caps:
            raise SkipFile()
        self.max_bytes, self.received = caps[field_name], 0
        if content_length is not None and content_length > self.max_bytes:
            raise file_too_large(field_name, max_bytes=self.max_bytes, size=content_length)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            raise file_too_large(self.field_name, max_bytes=self.max_bytes)
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler (memory or temporary file) makes the file
