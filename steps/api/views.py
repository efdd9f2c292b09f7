from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_organization
from steps.api.serializers import StepSerializer
from steps.selectors import step_get


class StepDetailApi(APIView):
    """One step with its usage, cost and outcome."""

    def get(self, request: Request, step_id: str) -> Response:
        step = step_get(organization=request_organization(request), step_id=step_id)
        return Response(StepSerializer(step).data)
