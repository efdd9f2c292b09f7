"""POST /v1/traces: OTLP/HTTP trace export (protobuf or JSON, optionally gzip), authenticated by API key."""

import json
import threading

from django.conf import settings
from django.db import OperationalError
from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.authentication import request_organization
from config.errors import ApplicationError
from traces.ingest.decode import JSON, PROTOBUF, encode_response
from traces.services import IngestOverloaded, trace_batch_accept

# google.rpc.Code values for the Status body OTLP/HTTP asks for on errors.
_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 503: 14}
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def _ingest_slots() -> threading.BoundedSemaphore:
    """At most STEPLENS_OTLP_MAX_CONCURRENT requests ingest at once per process; more get 503, never a queue."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(settings.STEPLENS_OTLP_MAX_CONCURRENT)
        return _slots


def _status(status: int, message: str, *, content_type: str = JSON, retry_after: int | None = None) -> HttpResponse:
    """An error in the OTLP/HTTP way: a google.rpc.Status, encoded like the request (JSON when unknown)."""
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

    200 means the request is committed to the database as one IngestBatch (the durable ingest queue) and will
    be mapped onto steps by a worker; partial_success carries the spans rejected at accept time (bad ids, times,
    token counts); rejections found while mapping are recorded on the batch. 400 malformed body, 401 missing or
    invalid key, 413 body (or inflated body) over the limit, 415 content type or encoding not supported, 503 with
    Retry-After when the server is saturated, the backlog of unmapped batches is over its limit, or the database
    is unavailable. Nothing of a rejected request is written.
    """

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
        declared = request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _status(413, f"Body is over the {limit}-byte limit.", content_type=content_type)
        body = request._request.read(limit + 1)  # the raw stream: DRF must not parse (or buffer) it
        if len(body) > limit:
            return _status(413, f"Body is over the {limit}-byte limit.", content_type=content_type)

        slots = _ingest_slots()
        if not slots.acquire(blocking=False):
            return _status(503, "Ingest is saturated; retry later.", content_type=content_type, retry_after=1)
        try:
            accepted = trace_batch_accept(
                organization=request_organization(request),
                body=body,
                content_type=content_type,
                content_encoding="gzip" if encoding == "gzip" else "identity",
            )
        except IngestOverloaded as exc:
            return _status(503, exc.message, content_type=content_type, retry_after=exc.retry_after)
        except ApplicationError as exc:
            return _status(exc.status_code, exc.message, content_type=content_type)
        except OperationalError:
            # The database is down or out of connections: the client keeps the batch and retries.
            return _status(503, "Storage unavailable; retry later.", content_type=content_type, retry_after=5)
        finally:
            slots.release()
        # Mapped already (embedded mode): report what mapping found; else what the accept-time checks found.
        outcome = accepted.result or accepted
        return HttpResponse(
            encode_response(rejected=outcome.rejected, message=outcome.message, content_type=content_type),
            status=200,
            content_type=content_type,
        )
