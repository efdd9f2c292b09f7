"""Agents, messages (sync, SSE, async), runs, cancellation and approvals. Thin: services do the work."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_from_request
from accounts.authentication import request_organization
from accounts.services import audit_record
from agents import selectors
from agents.models import Run
from agents.services import agent_create, agent_delete, agent_update
from runner import loop, services
from runner.api.serializers import (
    AgentSerializer,
    ApprovalSerializer,
    RunListParamsSerializer,
    RunResponseSerializer,
    RunSerializer,
    SendMessagesSerializer,
)
from runner.api.sse import EventStreamMixin, parse_starting_after, relay, sse_response
from runner.streams import MAX_SEQ_ID
from steps.rendering import render_messages
from steps.selectors import run_messages


def _validated(serializer_class: type, data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class AgentListApi(APIView):
    @extend_schema(responses=AgentSerializer(many=True))
    def get(self, request: Request) -> Response:
        agents = selectors.agent_list(organization=request_organization(request))
        return Response(AgentSerializer(agents, many=True).data)

    @extend_schema(request=AgentSerializer, responses={201: AgentSerializer}, extensions={"x-error-statuses": [409]})
    def post(self, request: Request) -> Response:
        data = _validated(AgentSerializer, request.data)
        agent = agent_create(organization=request_organization(request), **data)
        return Response(AgentSerializer(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailApi(APIView):
    @extend_schema(responses=AgentSerializer)
    def get(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(organization=request_organization(request), agent_id=agent_id)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=AgentSerializer, responses=AgentSerializer, extensions={"x-error-statuses": [409]})
    def patch(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(organization=request_organization(request), agent_id=agent_id)
        data = _validated(AgentSerializer, request.data, partial=True)
        agent = agent_update(agent=agent, **data)
        return Response(AgentSerializer(agent).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(organization=request_organization(request), agent_id=agent_id)
        agent_delete(agent=agent)
        audit_record(
            actor=actor_from_request(request),
            action="agent.delete",
            organization=agent.organization_id,
            target=agent,
            before={"name": agent.name},
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


def _start_run(request: Request, agent_id: str, *, background: bool) -> Run:
    organization = request_organization(request)
    agent = selectors.agent_get(organization=organization, agent_id=agent_id)
    data = _validated(SendMessagesSerializer, request.data)
    return services.run_start(
        organization=organization,
        agent=agent,
        messages=[dict(m) for m in data["messages"]],
        request_id=request._request.request_id,
        background=background,
        user_id=request.headers.get("X-User-ID") or None,
        conversation_id=request.headers.get("X-Conversation-ID") or None,
    )


def run_response(run: Run, *, after_sequence: int = 0) -> dict[str, Any]:
    """The body of a finished (or paused) run: its new messages, stop reason and usage."""
    messages = run_messages(run_id=run.pk).filter(sequence_id__gt=after_sequence)
    return {
        "run_id": run.pk,
        "request_id": run.request_id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "error": run.error,
        "messages": render_messages(list(messages)),
        "usage": loop.run_usage(run=run),
    }


class AgentMessagesApi(APIView):
    """Send messages and wait for the run to stop."""

    @extend_schema(request=SendMessagesSerializer, responses={200: RunResponseSerializer})
    def post(self, request: Request, agent_id: str) -> Response:
        run = _start_run(request, agent_id, background=False)
        loop.run_dispatch(run=run, wait=True)
        run = services.run_wait(run=run, timeout=settings.STEPLENS_SYNC_WAIT_SECONDS)
        return Response(run_response(run))


class AgentMessagesStreamApi(EventStreamMixin, APIView):
    """Send messages and receive the run's events as Server-Sent Events."""

    @extend_schema(request=SendMessagesSerializer, responses={(200, "text/event-stream"): str})
    def post(self, request: Request, agent_id: str):
        run = _start_run(request, agent_id, background=False)
        loop.run_dispatch(run=run, wait=False)
        return sse_response(relay(run.pk, organization=request_organization(request)), request_id=run.request_id)


class AgentMessagesAsyncApi(APIView):
    """Send messages; the run goes on in the background. Answers 202 with the run."""

    @extend_schema(request=SendMessagesSerializer, responses={202: RunSerializer})
    def post(self, request: Request, agent_id: str) -> Response:
        run = _start_run(request, agent_id, background=True)
        loop.run_dispatch(run=run, wait=False)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class RunListApi(APIView):
    @extend_schema(parameters=[RunListParamsSerializer], responses=RunSerializer(many=True))
    def get(self, request: Request) -> Response:
        params = _validated(RunListParamsSerializer, request.query_params)
        runs = selectors.run_list(
            organization=request_organization(request),
            agent_id=params.get("agent_id") or None,
            status=params.get("status") or None,
        )[: params["limit"]]
        return Response(RunSerializer(runs, many=True).data)


class RunDetailApi(APIView):
    @extend_schema(responses=RunSerializer)
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get(organization=request_organization(request), run_id=run_id)
        return Response(RunSerializer(run).data)


class RunStreamApi(EventStreamMixin, APIView):
    """Resume a run's event stream after `starting_after` (a seq_id)."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "starting_after",
                {"type": "integer", "minimum": 0, "maximum": MAX_SEQ_ID},
                description="Resume after this seq_id (default 0: from the start).",
                extensions={"x-empty-is-error": True},
            )
        ],
        responses={(200, "text/event-stream"): str},
    )
    def get(self, request: Request, run_id: str):
        organization = request_organization(request)
        run = selectors.run_get(organization=organization, run_id=run_id)
        after = parse_starting_after(request.query_params.get("starting_after", "0"))
        return sse_response(relay(run.pk, organization=organization, after=after), request_id=run.request_id)


class RunCancelApi(APIView):
    @extend_schema(request=None, responses=RunSerializer)
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get(organization=request_organization(request), run_id=run_id)
        run = loop.run_cancel(run=run)
        return Response(RunSerializer(run).data)


class RunApprovalApi(APIView):
    """Approve or deny a tool call the run is waiting on; the run resumes when nothing else is awaited."""

    @extend_schema(request=ApprovalSerializer, responses=RunSerializer, extensions={"x-error-statuses": [409]})
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get(organization=request_organization(request), run_id=run_id)
        data = _validated(ApprovalSerializer, request.data)
        still_awaiting = services.run_decide_approval(
            run=run, tool_call_id=data["tool_call_id"], approve=data["approve"], reason=data["reason"]
        )
        if not still_awaiting:
            loop.run_dispatch(run=run, wait=not run.background and settings.CELERY_TASK_ALWAYS_EAGER)
        run.refresh_from_db()
        return Response(RunSerializer(run).data)
