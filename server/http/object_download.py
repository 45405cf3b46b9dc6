"""Objects as HTTP answers, whole or one byte range, on every route that serves them (the registry
API's ``/api/objects``, the Hub protocol's ``/resolve``).

The bytes come from ``BlobStore.read_verified``: never sent unverified, and a range of an object
the store knows intact costs what it reads, so anonymous readers cannot make the hub hash a large
object per one-byte range. ``If-None-Match`` on the object's digest is a 304, as ``send_file``
answered before.
"""

from __future__ import annotations

from typing import Mapping

from flask import Response, request

from adapterhub import error_codes as codes
from adapterhub.registry import LocalRegistry

from .errors import ApiError

__all__ = ["object_response"]


def object_response(registry: LocalRegistry, digest: str, headers: Mapping[str, str] = {}) -> Response:
    """The object ``digest`` (``ObjectMissing`` when absent), honouring ``Range``; ``headers`` are added."""
    size = registry.object_path(digest).stat().st_size
    base = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes", **headers}
    if request.if_none_match.contains(digest):
        return Response(status=304, headers=base)
    start, stop, status = 0, size, 200
    if request.range is not None:
        span = request.range.range_for_length(size)
        if span is None:
            raise ApiError(codes.RANGE_NOT_SATISFIABLE,
                           f"range not satisfiable for {size} bytes", headers={"Content-Range": f"bytes */{size}"})
        (start, stop), status = span, 206
        base["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    base["Content-Length"] = str(stop - start)
    # For HEAD, werkzeug sends the headers and never starts the generator.
    body = registry.store.read_verified(digest, start, stop)
    return Response(body, status=status, headers=base, mimetype="application/octet-stream", direct_passthrough=True)
