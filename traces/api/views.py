"""POST /v1/traces: OTLP/HTTP trace export (protobuf or JSON, optionally gzip), authenticated by API key."""

import json
import threading
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.authentication import request_organization
from config.errors import ApplicationError
from config.exceptions import database_unavailable
from config.metrics import ingest_request_rejected_record, ingest_spans_accepted_record
from traces.api.openapi import OTLP_TRACES_SCHEMA
from traces.ingest.decode import JSON, PROTOBUF, encode_response
from traces.services import IngestOverloaded, trace_batch_accept

# google.rpc.Code values for the Status body OTLP/HTTP asks for on errors.
_RPC_CODES = {400: 3, 401: 16, 411: 3, 413: 8, 415: 3, 429: 8, 503: 14}
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def _ingest_slots() -> threading.BoundedSemaphore:
    """At most STEPLENS_OTLP_MAX_CONCURRENT requests ingest at once per process; more get 503, never a queue."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(settings.STEPLENS_OTLP_MAX_CONCURRENT)
        return _slots


_READ_CHUNK = 64 * 1024
# A body over the limit is read and thrown away up to this size before the 413 goes out: a client still sending
# would see its connection reset instead of the answer, and an OTLP exporter retries a reset (forever, with the
# same batch) but drops a batch answered 413. Beyond it the connection is cut.
_DISCARD_BYTES = 64 * 1024 * 1024


class BodyError(ApplicationError):
    """The request body cannot be taken whole: over the limit (413), cut short or empty (400), or its framing
    unknown to the server (411)."""


def read_body(request: HttpRequest, *, limit: int) -> bytes:
    """The whole request body, whatever its framing, never more than `limit` bytes in memory.

    With Content-Length, that many bytes (413 at once when it announces more than `limit`; 400 when the body ends
    early). Without one (Transfer-Encoding: chunked), the WSGI input stream is read to its end, which gunicorn
    (and any server setting wsgi.input_terminated) decodes and terminates, or the ASGI request body; reading stops
    with a 413 as soon as limit + 1 bytes came. A server that cannot terminate the stream gets a 411: reading
    would block or mistake the chunk framing for the body. An empty body is a 400: a 2xx must never stand for
    spans not received.
    """
    too_large = BodyError(f"Body is over the {limit}-byte limit.", status_code=413)
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip():
        if not declared.strip().isdigit():
            raise BodyError("Content-Length is not a number.", status_code=400)
        expected = int(declared)
        if expected > limit:
            if expected <= _DISCARD_BYTES:
                _discard(request)
            raise too_large
        body = request.read(expected)
        if len(body) < expected:
            raise BodyError(f"Body ended after {len(body)} of {expected} bytes.", status_code=400)
    elif request.META.get("wsgi.input_terminated") or "wsgi.input" not in request.META:
        # gunicorn decodes a chunked body and ends the stream there; under ASGI the request is the whole body.
        stream, pieces, size = request.META.get("wsgi.input") or request, [], 0
        while piece := stream.read(min(_READ_CHUNK, limit + 1 - size)):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                _discard(stream)
                raise too_large
        body = b"".join(pieces)
    elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise BodyError("This server cannot read a chunked body: send Content-Length.", status_code=411)
    else:
        body = b""
    if not body:
        raise BodyError("Body is empty: there is nothing to ingest.", status_code=400)
    return body


def _discard(stream: Any) -> None:
    """Read and drop what is left of a body, up to _DISCARD_BYTES."""
    left = _DISCARD_BYTES
    while left > 0 and (piece := stream.read(min(_READ_CHUNK, left))):
        left -= len(piece)


# The reason label of steplens_ingest_requests_rejected (config.metrics) for each refusal status.
_REJECT_REASONS = {400: "bad_request", 411: "length_required", 413: "payload_too_large", 415: "unsupported_media_type"}


def _status(
    status: int, message: str, *, content_type: str = JSON, retry_after: int | None = None, reason: str | None = None
) -> HttpResponse:
    """An error in the OTLP/HTTP way: a google.rpc.Status, encoded like the request (JSON when unknown)."""
    ingest_request_rejected_record(reason=reason or _REJECT_REASONS.get(status, str(status)))
    code = _RPC_CODES.get(status, 2)
    if content_type == PROTOBUF:
        from google.rpc.status_pb2 import Status

        body, media = Status(code=code, message=message).SerializeToString(), PROTOBUF
    else:
        body, media = json.dumps({"code": code, "message": message}).encode(), JSON
    response = HttpResponse(body, status=status, content_type=media)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


class OtlpTracesApi(APIView):
    """Accept an OTLP ExportTraceServiceRequest and answer with an ExportTraceServiceResponse.

    200 means the whole body was received (whatever its framing) and is committed to the database as one
    IngestBatch (the durable ingest queue), to be mapped onto steps by a worker; partial_success carries the spans
    rejected at accept time (bad ids, times, token counts) and the attribute values that will be cut to
    STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES; what mapping finds is recorded on the batch. 400 malformed, empty or too
    deeply nested body, 401 missing or invalid key, 411 a chunked body the server cannot decode, 413 body,
    inflated body or span count over its limit, 415 content type or encoding not supported, 503 with Retry-After
    when the server is saturated, the backlog of unmapped batches is over its limit, or the database is
    unavailable. Nothing of a rejected request is written.
    """

    @extend_schema(**OTLP_TRACES_SCHEMA)
    def post(self, request: Request) -> HttpResponse:
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type not in {PROTOBUF, JSON}:
            return _status(415, f"Unsupported content type {content_type or '(none)'!r}: use {PROTOBUF} or {JSON}.")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in {"identity", "gzip", ""}:
            return _status(
                415, f"Unsupported Content-Encoding {encoding!r}: use gzip or none.", content_type=content_type
            )

        limit = settings.STEPLENS_OTLP_MAX_BODY_BYTES
        try:
            body = read_body(request._request, limit=limit)  # the raw stream: DRF must not parse (or buffer) it
        except BodyError as exc:
            return _status(exc.status_code, exc.message, content_type=content_type)

        slots = _ingest_slots()
        if not slots.acquire(blocking=False):
            return _status(
                503, "Ingest is saturated; retry later.", content_type=content_type, retry_after=1, reason="saturated"
            )
        try:
            accepted = trace_batch_accept(
                organization=request_organization(request),
                body=body,
                content_type=content_type,
                content_encoding="gzip" if encoding == "gzip" else "identity",
            )
        except IngestOverloaded as exc:
            return _status(
                503, exc.message, content_type=content_type, retry_after=exc.retry_after, reason="backlog_full"
            )
        except ApplicationError as exc:
            return _status(exc.status_code, exc.message, content_type=content_type)
        except DatabaseError as exc:
            if not database_unavailable(exc):
                raise
            # The database is down, out of connections or dropped ours: the client keeps the batch and retries.
            # (Failures before this view, in authentication, get the same 503 from the API's exception handler.)
            return _status(
                503,
                "Storage unavailable; retry later.",
                content_type=content_type,
                retry_after=settings.STEPLENS_DB_RETRY_AFTER_SECONDS,
                reason="database_unavailable",
            )
        finally:
            slots.release()
        ingest_spans_accepted_record(accepted=accepted.span_count - accepted.rejected, rejected=accepted.rejected)
        # Mapped already (embedded mode): report what mapping found; else what the accept-time checks found.
        outcome = accepted.result or accepted
        return HttpResponse(
            encode_response(rejected=outcome.rejected, message=outcome.message, content_type=content_type),
            status=200,
            content_type=content_type,
        )
