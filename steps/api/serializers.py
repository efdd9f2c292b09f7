from rest_framework import serializers

from steps.models import Step, StepMetrics


class StepMetricsSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepMetrics
        exclude = ["step"]


class StepSerializer(serializers.ModelSerializer):
    organization_id = serializers.CharField(read_only=True)
    project_id = serializers.CharField(read_only=True, allow_null=True)
    agent_id = serializers.CharField(read_only=True, allow_null=True)
    run_id = serializers.CharField(read_only=True, allow_null=True)
    progression = serializers.CharField(source="get_progression_display", read_only=True)
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False, allow_null=True)

    class Meta:
        model = Step
        exclude = ["organization", "project", "agent", "run"]
