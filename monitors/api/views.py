"""Monitors and alerts over REST: CRUD, alert history, deliveries, the test notification and secret rotation.

Thin: a serializer checks the shape, a service or selector does the rest, every read is scoped to the key's
organization (another organization's monitor is a 404).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import config.openapi  # noqa: F401  (registers the API key scheme with drf-spectacular)
from accounts.authentication import request_organization
from config.errors import ApplicationError
from monitors import evaluation, payloads, selectors, services
from monitors.api import serializers as s
from monitors.models import AlertEvent, Delivery, Monitor


def _check_params(request: Request, *, allowed: set[str]) -> None:
    """Unknown query parameters are a 400: a typo must not silently widen a list."""
    unknown = [name for name in request.query_params if name not in allowed]
    if unknown:
        raise ApplicationError("Invalid query parameters.", extra={name: ["Unknown parameter."] for name in unknown})


def _validated(serializer_class: type[serializers.Serializer], data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def monitor_data(monitor: Monitor) -> dict[str, Any]:
    data = {
        "id": monitor.pk,
        "name": monitor.name,
        "project_id": monitor.project_id,
        "filters": monitor.filters,
        "metric": monitor.metric,
        "operator": monitor.operator,
        "threshold": monitor.threshold,
        "recovery_threshold": monitor.recovery_threshold,
        "effective_recovery_threshold": evaluation.recovery_of(monitor),
        "window_seconds": monitor.window_seconds,
        "min_steps": monitor.min_steps,
        "group_by": monitor.group_by or None,
        "targets": monitor.targets,
        "enabled": monitor.enabled,
        "state": monitor.state,
        "value": monitor.value,
        "steps": monitor.steps,
        "evaluated_at": monitor.evaluated_at,
        "state_changed_at": monitor.state_changed_at,
        "last_error": monitor.last_error,
        "created_at": monitor.created_at,
        "updated_at": monitor.updated_at,
    }
    if monitor.group_by:
        data["alerting_groups"] = sorted(alert.group for alert in monitor.group_alerts.all())
    return data


def alert_data(event: AlertEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "monitor_id": event.monitor_id,
        "monitor_name": event.monitor.name,
        **payloads.event_fields(event),
        "group_by": event.group_by or None,
        "group": event.group,
        "created_at": event.created_at,
    }


def delivery_data(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.pk,
        "event_id": delivery.event_id,
        "kind": delivery.kind,
        "destination": delivery.destination,
        "status": delivery.status,
        "attempts": [
            {
                "number": a.number,
                "ok": a.ok,
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
                "created_at": a.created_at,
            }
            for a in sorted(delivery.attempt_log.all(), key=lambda a: a.number)
        ],
        "created_at": delivery.created_at,
    }


def _out(serializer_class: type[serializers.Serializer], data: Any) -> Any:
    return serializer_class(data).data


class MonitorListApi(APIView):
    """The organization's monitors; POST creates one and answers its signing secret, once."""

    @extend_schema(operation_id="monitors_list", responses=s.MonitorListSerializer)
    def get(self, request: Request) -> Response:
        _check_params(request, allowed=set())
        monitors = selectors.monitor_list(organization=request_organization(request)).prefetch_related("group_alerts")
        return Response({"data": [_out(s.MonitorSerializer, monitor_data(m)) for m in monitors]})

    @extend_schema(
        operation_id="monitors_create",
        request=s.MonitorInSerializer,
        responses={201: s.MonitorCreatedSerializer},
        extensions={"x-request-body-required": True, "x-error-statuses": [404]},
    )
    def post(self, request: Request) -> Response:
        _check_params(request, allowed=set())
        data = _validated(s.MonitorInSerializer, request.data)
        monitor, secret = services.monitor_create(organization=request_organization(request), data=data)
        body = _out(s.MonitorCreatedSerializer, {**monitor_data(monitor), "secret": secret})
        return Response(body, status=status.HTTP_201_CREATED)


def _monitor(request: Request, monitor_id: str) -> Monitor:
    return selectors.monitor_get(organization=request_organization(request), monitor_id=monitor_id)


class MonitorDetailApi(APIView):
    """One monitor: read, change (any subset of the fields; a changed definition starts over from no_data), delete."""

    @extend_schema(operation_id="monitors_retrieve", responses=s.MonitorSerializer)
    def get(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        return Response(_out(s.MonitorSerializer, monitor_data(_monitor(request, monitor_id))))

    @extend_schema(operation_id="monitors_update", request=s.MonitorInSerializer, responses=s.MonitorSerializer,
                   description="404 also for a project_id that is not the organization's.")  # fmt: skip
    def patch(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        monitor = _monitor(request, monitor_id)
        data = _validated(s.MonitorInSerializer, request.data, partial=True)
        monitor = services.monitor_update(monitor=monitor, data=data)
        return Response(_out(s.MonitorSerializer, monitor_data(monitor)))

    @extend_schema(operation_id="monitors_destroy", responses={204: None})
    def delete(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        services.monitor_delete(monitor=_monitor(request, monitor_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _alerts(request: Request, params_serializer: type[serializers.Serializer], **scope: Any) -> Response:
    params = _validated(params_serializer, request.query_params)
    events = selectors.alert_list(
        organization=request_organization(request), states=[params["state"]] if params.get("state") else None,
        start=params.get("start"), end=params.get("end"), **scope,
    )[: params["limit"]]  # fmt: skip
    return Response({"data": [_out(s.AlertSerializer, alert_data(e)) for e in events]})


class MonitorAlertsApi(APIView):
    """The monitor's alert events (changes of state), newest first."""

    @extend_schema(operation_id="monitors_alerts_list", parameters=[s.AlertParamsSerializer],
                   responses=s.AlertListSerializer)  # fmt: skip
    def get(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed={"state", "start", "end", "limit"})
        return _alerts(request, s.AlertParamsSerializer, monitor=_monitor(request, monitor_id))


class AlertListApi(APIView):
    """Alert events of every monitor of the organization, newest first, by state and time."""

    @extend_schema(
        operation_id="alerts_list", parameters=[s.AlertListParamsSerializer], responses=s.AlertListSerializer
    )
    def get(self, request: Request) -> Response:
        _check_params(request, allowed={"state", "start", "end", "limit", "monitor_id"})
        monitor_id = request.query_params.get("monitor_id")
        return _alerts(request, s.AlertListParamsSerializer, monitor_id=monitor_id or None)


class MonitorDeliveriesApi(APIView):
    """The monitor's latest notifications (the 50 newest), each with its attempts and their status codes."""

    @extend_schema(operation_id="monitors_deliveries_list", responses=s.DeliveryListSerializer)
    def get(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        monitor = _monitor(request, monitor_id)
        deliveries = selectors.delivery_list(organization=request_organization(request), monitor=monitor)
        return Response({"data": [_out(s.DeliverySerializer, delivery_data(d)) for d in deliveries]})


class MonitorTestApi(APIView):
    """Send a sample notification to every target of the monitor (delivered, retried and logged like an alert's);
    409 when it has none."""

    @extend_schema(operation_id="monitors_test", request=None, responses={202: s.DeliveryListSerializer},
                   extensions={"x-error-statuses": [409]})  # fmt: skip
    def post(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        monitor = _monitor(request, monitor_id)
        sent = services.monitor_test_send(monitor=monitor)
        deliveries = selectors.delivery_list(
            organization=request_organization(request), monitor=monitor, ids=[d.pk for d in sent]
        )
        data = [_out(s.DeliverySerializer, delivery_data(d)) for d in deliveries]
        return Response({"data": data}, status=status.HTTP_202_ACCEPTED)


class MonitorRotateSecretApi(APIView):
    """A new webhook signing secret, answered once; the old one stops signing at once."""

    @extend_schema(operation_id="monitors_rotate_secret", request=None, responses=s.SecretSerializer)
    def post(self, request: Request, monitor_id: str) -> Response:
        _check_params(request, allowed=set())
        secret = services.monitor_rotate_secret(monitor=_monitor(request, monitor_id))
        return Response({"secret": secret})
