"""factory_boy factories for every model."""

import factory
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Agent, Run
from steps.models import Message, ProviderTrace, Step, StepMetrics


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"org-{n}")


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"project-{n}")


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"agent-{n}")
    model_handle = "openai/gpt-4o-mini"
    system = "You are a helpful assistant."


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Run

    organization = factory.SelfAttribute("agent.organization")
    agent = factory.SubFactory(AgentFactory)
    request_id = factory.Sequence(lambda n: f"req-{n}")


class StepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Step

    organization = factory.SelfAttribute("agent.organization")
    agent = factory.SubFactory(AgentFactory)
    run = None
    provider_name = "openai"
    model = "gpt-4o-mini"
    model_handle = "openai/gpt-4o-mini"
    created_at = factory.LazyFunction(timezone.now)


class StepMetricsFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StepMetrics

    step = factory.SubFactory(StepFactory)
    step_created_at = factory.SelfAttribute("step.created_at")
    ttft_ns = 250_000_000
    llm_request_ns = 900_000_000
    step_ns = 1_000_000_000


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    organization = factory.SelfAttribute("step.organization")
    step = factory.SubFactory(StepFactory)
    step_created_at = factory.LazyAttribute(lambda o: o.step.created_at if o.step is not None else timezone.now())
    role = "assistant"
    content = factory.LazyFunction(lambda: [{"type": "text", "text": "hello"}])
    sequence_id = factory.Sequence(lambda n: n + 1)


class ProviderTraceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProviderTrace

    organization = factory.SelfAttribute("step.organization")
    step = factory.SubFactory(StepFactory)
    step_created_at = factory.SelfAttribute("step.created_at")
    provider = "openai"
    model = "gpt-4o-mini"
    request_json = factory.LazyFunction(lambda: {"model": "gpt-4o-mini", "messages": []})
    response_json = factory.LazyFunction(lambda: {"id": "chatcmpl-1"})
    latency_ms = 900
