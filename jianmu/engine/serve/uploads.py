"""Reading an identify request's multipart body into memory, within limits and in time.

The body is parsed as it arrives (python-multipart's streaming parser): a photo over
``serve.max_photo_bytes``, more than ``serve.max_photos`` photos or a body over
``serve.max_request_bytes`` is refused at the byte that crosses the limit (413), a body that
stalls for ``serve.idle_timeout`` seconds or takes longer than ``serve.request_timeout`` is cut off
(408). Nothing is written to disk: the parts are bytes in memory, and the client's file names are
labels only, never paths on this machine.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from jianmu.config import ServeConfig
from jianmu.errors import did_you_mean

PHOTOS = "photos"
FIELDS = ("declared", "specimen")
"""The text fields of an identify request besides the photos."""
MAX_FIELD_BYTES = 1000
MAX_NAME_LENGTH = 120
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class UploadError(Exception):
    """A request refused: the HTTP ``status``, a ``reason`` for the metrics, and what to say."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass
class Upload:
    """The photos of a request (``(name, bytes)`` in the order sent) and its text fields."""

    photos: list[tuple[str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


async def read_upload(
    content_type: str,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    limits: ServeConfig,
) -> Upload:
    """The photos and fields of a ``multipart/form-data`` body arriving as ``chunks``.

    Raises:
        UploadError: 415 not multipart; 400 malformed, unknown or repeated field; 413 over a
            limit; 408 too slow. A client that goes away raises what ``chunks`` raises.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UploadError(
            415, "not_multipart", f"send multipart/form-data with the photos as '{PHOTOS}' parts"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "malformed", "malformed multipart body: no boundary")
    length = int(content_length) if content_length and content_length.isdigit() else 0
    if length > limits.max_request_bytes:
        raise UploadError(413, "too_large", _over("the request", limits.max_request_bytes))
    reader = _PartReader(limits)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
    except (MultipartParseError, ValueError) as error:
        raise UploadError(400, "malformed", f"malformed multipart body ({error})") from None
    received = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.request_timeout
    iterator = chunks.__aiter__()
    while True:
        wait = min(limits.idle_timeout, deadline - loop.time())
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(iterator.__anext__(), wait)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise UploadError(408, "timeout", _too_slow(limits)) from None
        received += len(chunk)
        if received > limits.max_request_bytes:
            raise UploadError(413, "too_large", _over("the request", limits.max_request_bytes))
        try:
            parser.write(chunk)
        except MultipartParseError as error:
            raise UploadError(400, "malformed", f"malformed multipart body ({error})") from None
    if not reader.ended:
        raise UploadError(400, "malformed", "malformed multipart body: no closing boundary")
    return reader.upload


class _PartReader:
    """python-multipart's callbacks: each part's headers, then its bytes, within the limits."""

    def __init__(self, limits: ServeConfig) -> None:
        self.limits = limits
        self.upload = Upload()
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()
        self._name, self._filename = "", None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition"))
        if kind != b"form-data" or b"name" not in options:
            raise UploadError(400, "malformed", "malformed multipart body: a part without a name")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self._name == PHOTOS:
            if len(self.upload.photos) >= self.limits.max_photos:
                limit = self.limits.max_photos
                raise UploadError(413, "too_large", f"more than {limit} photos in one request")
        elif self._name in FIELDS:
            if self._name in self.upload.fields:
                raise UploadError(400, "bad_request", f"the field '{self._name}' is given twice")
        else:
            known = [PHOTOS, *FIELDS]
            raise UploadError(
                400,
                "bad_request",
                f"unknown field {self._name[:40]!r}{did_you_mean(self._name, known)}; the fields "
                f"are {', '.join(known)}",
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.extend(data[start:end])
        if self._name == PHOTOS and len(self._data) > self.limits.max_photo_bytes:
            name = _photo_name(self._filename, len(self.upload.photos))
            raise UploadError(
                413, "too_large", _over(f"photo {name!r}", self.limits.max_photo_bytes)
            )
        if self._name != PHOTOS and len(self._data) > MAX_FIELD_BYTES:
            raise UploadError(413, "too_large", _over(f"field {self._name!r}", MAX_FIELD_BYTES))

    def _part_end(self) -> None:
        if self._name == PHOTOS:
            name = _photo_name(self._filename, len(self.upload.photos))
            self.upload.photos.append((name, bytes(self._data)))
        else:
            text = self._data.decode("utf-8", "replace").strip()
            self.upload.fields[self._name] = _UNPRINTABLE.sub(" ", text)
        self._data = bytearray()

    def _end(self) -> None:
        self.ended = True


def _photo_name(filename: str | None, index: int) -> str:
    """The label of a photo: the client's file name without folders or control characters
    (``photo-N`` without one)."""
    name = _UNPRINTABLE.sub("", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:MAX_NAME_LENGTH] if name else f"photo-{index + 1}"


def _over(what: str, limit: int) -> str:
    return f"{what} is over the limit of {limit:,} bytes"


def _too_slow(limits: ServeConfig) -> str:
    return (
        f"the request body did not arrive in time (a pause over {limits.idle_timeout:g} s, or "
        f"over {limits.request_timeout:g} s in all)"
    )
