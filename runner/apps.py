from django.apps import AppConfig


class RunnerConfig(AppConfig):
    name = "runner"
    verbose_name = "Agent runtime"

    def ready(self) -> None:
        # agents (below) stores Agent rows but cannot know which model handles and tools exist: the runtime tells it,
        # so agent_create, agent_update and the admin form refuse what no worker could run.
        from agents.services import agent_check_register
        from runner.services import agent_runtime_check

        agent_check_register(agent_runtime_check)
