"""The Ray Serve HTTP ingress: reads a request, picks its adapter's replica, relays the answer.

It holds no model. For each request it reads the body (bounded as ``adapterhub serve`` bounds it),
derives the multiplexed model id (``affinity``) and calls the engine deployment with it, so Ray's
router prefers a replica that already holds the adapter and loads it on a less busy one when those
are full. The replica's answer streams back unchanged: status, headers, and one chunk per
server-sent event. Failures of the fleet itself get the API's error shape: a replica that died
under a request is a 503 with ``Retry-After`` (not retried here: the request may have produced
tokens already, and a client retry is the only one that can decide), a full fleet a 429. vLLM's
``/v1/load_lora_adapter`` binds a name on one process, which a fleet cannot honour: refused, with
the registry as the way to add adapters.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from adapterhub import error_codes as codes
from adapterhub.server.http.errors import ApiError

from .affinity import AffinityKeys, json_fields
from .forwarding import ForwardedRequest, ResponseHead
from .settings import ReplicaSettings

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

__all__ = ["OpenAIIngress", "RETRY_AFTER_S"]

RETRY_AFTER_S = 1
_PER_PROCESS_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def _response(error: ApiError) -> Response:
    """The API's one error shape, as a Starlette response."""
    return Response(json.dumps(error.to_dict()), status_code=error.status, media_type="application/json",
                    headers=error.headers)


def _replica_stopped(error: BaseException) -> ApiError:
    return ApiError(codes.REPLICA_UNAVAILABLE,
                    f"the replica serving this request stopped ({type(error).__name__}); retry",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def _fleet_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    return RayError, RayServeException


class OpenAIIngress:
    """The ingress deployment's class (``app.build`` wraps it in ``serve.deployment``)."""

    def __init__(self, engine: DeploymentHandle, settings: ReplicaSettings) -> None:
        from adapterhub.api import open_registry
        from adapterhub.server.http.admission import AdmissionLimits

        self._engine = engine
        self._limits = AdmissionLimits.of(settings.limits)
        self._keys = settings.serving_keys()
        self._affinity = AffinityKeys(open_registry(settings.registry, token=settings.token),
                                      aliases=settings.served_names())

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if path in _PER_PROCESS_ROUTES:
            return _response(ApiError(codes.NOT_SUPPORTED_BY_FLEET,
                                      f"{path} binds a name in one process; behind Ray, push the adapter to "
                                      "the registry and name it in 'model'"))
        api = path.startswith("/v1/")
        if api and not self._keys.accepts(request.headers.get("authorization")):
            body = b""  # no key, no work: unread, unresolved; the replica answers the 401 as one server does
        else:
            try:
                body = await self._body(request)
            except ApiError as e:
                return _response(e)
        fields = json_fields(body) if api and request.method == "POST" else {}
        model_id = self._affinity.cached(fields)
        if model_id is None:  # an index read: off the event loop
            model_id = await asyncio.to_thread(self._affinity.for_fields, fields)
        forwarded = ForwardedRequest.of(request.method, path, request.url.query, request.headers.items(), body)
        if fields.get("stream") is True:
            return await _streamed(self._engine.options(multiplexed_model_id=model_id, stream=True)
                                   .forward_stream.remote(forwarded))
        return await _whole(self._engine.options(multiplexed_model_id=model_id).forward.remote(forwarded))

    async def _body(self, request: Request) -> bytes:
        """The body, read no further than the limit (a declared length over it is refused unread)."""
        declared = request.headers.get("content-length")
        self._limits.check_body(int(declared) if declared is not None and declared.isdigit() else None)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            self._limits.check_body(size)
            chunks.append(chunk)
        return b"".join(chunks)


async def _whole(call: DeploymentResponse) -> Response:
    """A non-streamed answer: one call to a replica, relayed once complete."""
    async with _fleet_failures(call) as failed:
        head, content = await call
    if failed:
        return failed[0]
    headers = {k: v for k, v in head.headers if k.lower() != "content-length"}
    return Response(content, status_code=head.status, headers=headers)


async def _streamed(stream: DeploymentResponseGenerator) -> Response:
    """A streamed answer: the head once the replica has it, then its events as they come."""
    async with _fleet_failures(stream) as failed:
        head: ResponseHead = await stream.__anext__()
    if failed:
        return failed[0]
    return StreamingResponse(_relay(stream), status_code=head.status, headers=dict(head.headers))


@asynccontextmanager
async def _fleet_failures(call: DeploymentResponse | DeploymentResponseGenerator) -> AsyncIterator[list[Response]]:
    """Turn the fleet's own failures into API errors (appended to the yielded list); a request
    whose client left (its task cancelled) cancels the replica's work too."""
    from ray.serve.exceptions import BackPressureError

    failed: list[Response] = []
    try:
        yield failed
    except BackPressureError:
        call.cancel()
        failed.append(_response(ApiError(codes.QUEUE_FULL,
                                         "every replica's queue is full", headers={"Retry-After": str(RETRY_AFTER_S)})))
    except _fleet_errors() as e:
        call.cancel()
        failed.append(_response(_replica_stopped(e)))
    except BaseException:
        call.cancel()
        raise


async def _relay(stream: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    """A streamed answer's chunks; if its replica dies midway, the stream ends with an error event,
    as the single-process server ends a stream whose generation failed."""
    try:
        async for chunk in stream:
            yield chunk
    except _fleet_errors() as e:
        yield f"data: {json.dumps(_replica_stopped(e).to_dict())}\n\n".encode()
    finally:
        stream.cancel()
