from django.urls import path

from runner.api import chat, views

urlpatterns = [
    path("agents", views.AgentListApi.as_view(), name="agent-list"),
    path("agents/<str:agent_id>", views.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<str:agent_id>/messages", views.AgentMessagesApi.as_view(), name="agent-messages"),
    path("agents/<str:agent_id>/messages/stream", views.AgentMessagesStreamApi.as_view(), name="agent-messages-stream"),
    path("agents/<str:agent_id>/messages/async", views.AgentMessagesAsyncApi.as_view(), name="agent-messages-async"),
    path("runs", views.RunListApi.as_view(), name="run-list"),
    path("runs/<str:run_id>", views.RunDetailApi.as_view(), name="run-detail"),
    path("runs/<str:run_id>/stream", views.RunStreamApi.as_view(), name="run-stream"),
    path("runs/<str:run_id>/cancel", views.RunCancelApi.as_view(), name="run-cancel"),
    path("runs/<str:run_id>/approvals", views.RunApprovalApi.as_view(), name="run-approvals"),
    path("chat/completions", chat.ChatCompletionsApi.as_view(), name="chat-completions"),
]
