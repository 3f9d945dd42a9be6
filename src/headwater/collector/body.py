"""Reading a request body: ``Content-Encoding: gzip`` or none, bounded before and after
decompression.

At most :data:`~.wire.MAX_REQUEST_BYTES` after decompression, else :class:`Oversize`;
decompression is incremental and capped (never inflated past the limit), and a gzip body
too large to inflate to the limit is refused without reading on.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from headwater.collector.wire import MAX_REQUEST_BYTES, WireError
from headwater.events import DECODE_FAILURE

OVERSIZE_PAYLOAD_BYTES = 1024  # a 413's bad row keeps only this much of the body
# A gzip body larger than this cannot inflate to <= MAX_REQUEST_BYTES (deflate's worst
# case expansion is ~0.03% + a few bytes per block), so it is refused without reading on.
MAX_COMPRESSED_BYTES = MAX_REQUEST_BYTES + MAX_REQUEST_BYTES // 64 + 1024


class Oversize(Exception):
    """The body exceeds the limit: ``prefix`` holds its first bytes (for the bad row),
    ``what`` says which limit."""

    def __init__(self, prefix: bytes, what: str):
        super().__init__(what)
        self.prefix, self.what = prefix, what


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, gunzipped if ``Content-Encoding: gzip``, at most ``limit`` bytes.

    Raises :class:`WireError` (400 ``decode_failure`` for a corrupt gzip stream, 415 for
    another encoding) or :class:`Oversize` when the (decompressed) body exceeds ``limit``;
    reading stops there, so neither the wire bytes nor the inflated bytes are unbounded."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        declared = request.headers.get("content-length")
        # isascii(): isdigit() admits "²" (the header is latin-1), which int() refuses.
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) <= limit:
            return await request.body()
        chunks, total = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise Oversize(b"".join(chunks)[:OVERSIZE_PAYLOAD_BYTES], f"Request body exceeds {limit} bytes")
        return b"".join(chunks)
    if encoding not in ("gzip", "x-gzip"):
        raise WireError(DECODE_FAILURE, f"Unsupported Content-Encoding {encoding[:40]!r}: send gzip or no encoding", 415)

    # Incremental, bounded inflate: each decompress() call may emit at most the bytes
    # still allowed (+1 to detect overflow); leftover input waits in unconsumed_tail.
    # Concatenated gzip members (RFC 1952 §2.2) are handled via unused_data.
    out: list[bytes] = []
    produced = wire = 0
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        async for chunk in request.stream():
            wire += len(chunk)
            if wire > MAX_COMPRESSED_BYTES:
                raise Oversize(b"".join(out)[:OVERSIZE_PAYLOAD_BYTES], f"Compressed request body exceeds {MAX_COMPRESSED_BYTES} bytes")
            data = chunk
            while data:
                piece = d.decompress(data, limit + 1 - produced)
                out.append(piece)
                produced += len(piece)
                if produced > limit:
                    raise Oversize(b"".join(out)[:OVERSIZE_PAYLOAD_BYTES], f"Decompressed request body exceeds {limit} bytes")
                if d.eof:
                    data = d.unused_data
                    if data:
                        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:
                    data = d.unconsumed_tail
        if not d.eof and (wire or produced):
            raise WireError(DECODE_FAILURE, "Invalid gzip body: stream is truncated (Content-Encoding: gzip)")
    except zlib.error as e:
        raise WireError(DECODE_FAILURE, f"Invalid gzip body: {e} (Content-Encoding: gzip)") from None
    return b"".join(out)
