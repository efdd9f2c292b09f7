from django.apps import AppConfig


class StepsConfig(AppConfig):
    name = "steps"
    verbose_name = "Steps"

    def ready(self) -> None:
        from steps.partitions import keep_group_by_whole

        keep_group_by_whole()  # the partitioned tables' primary key holds the partition key (steps.partitions)
