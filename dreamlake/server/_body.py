"""Reading request bodies within limits, and decoding them.

* The body is read as a stream and refused (413) once it passes its limit —
  before it is all in memory; a ``Content-Length`` over the limit is refused
  before reading anything. The whole body must arrive within the body timeout
  (408), which stops slow senders holding a worker.
* zstd is decompressed with a streaming reader in bounded steps: a frame that
  declares a size over the limit is refused at once, and one that does not is
  refused as soon as its output passes the limit — the output of a bomb is
  never allocated.
* JSON that ``msgspec`` refuses (it rejects ``NaN``/``Infinity`` tokens, which
  Python clients send) is tried again with the standard library before it is
  called malformed.
"""

from __future__ import annotations

import io
import json
from typing import Any

import anyio
import msgspec
import zstandard
from starlette.requests import Request

from ._errors import BadRequest, RequestTimeout, TooLarge
from .wire import IngestBatch

__all__ = ["read_body", "decompress_bounded", "decode_json", "decode_batch", "encode_json"]

_STEP = 1 << 20
_batch_decoder = msgspec.msgpack.Decoder(IngestBatch)
_json_encode = msgspec.json.Encoder().encode


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise TooLarge(f"request body of {declared} bytes is over the limit of {limit}")
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"request body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


def decompress_bounded(body: bytes, limit: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        raise BadRequest("body is not a zstd frame") from None
    if declared > limit:  # -1 = size not in the header: bounded below
        raise TooLarge(f"batch decompresses to {declared} bytes, over the limit of {limit}")
    out = io.BytesIO()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(_STEP)
                if not chunk:
                    break
                if out.tell() + len(chunk) > limit:
                    raise TooLarge(f"batch decompresses to more than the limit of {limit} bytes")
                out.write(chunk)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"corrupt zstd body: {exc}") from None
    return out.getvalue()


def decode_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


def decode_batch(raw: bytes) -> IngestBatch:
    try:
        return _batch_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"malformed batch: {exc}") from None
    except RecursionError:
        raise BadRequest("batch is nested too deeply") from None


def encode_json(value: Any) -> bytes:
    """Replies: msgspec, unless a non-finite float is in it (msgspec writes it
    as null); then the standard library writes ``NaN``/``Infinity`` as Python's
    json (and upstream's client) reads them."""
    body = _json_encode(value)
    if b"null" in body:
        body = json.dumps(msgspec.to_builtins(value), separators=(",", ":"), allow_nan=True).encode()
    return body
