"""The console's system page (superusers) and the warning banner on every console page."""

from datetime import timedelta

import pytest
from django.utils import timezone

from ops.models import PeriodicTaskRun
from traces.models import IngestBatch

pytestmark = pytest.mark.django_db


def _stale_backlog(organization, *, minutes: int, batches: int = 2) -> None:
    for _ in range(batches):
        batch = IngestBatch.objects.create(
            organization=organization, content_type="application/json", body=b"{}", body_bytes=2048, span_count=1
        )
        IngestBatch.objects.filter(pk=batch.pk).update(received_at=timezone.now() - timedelta(minutes=minutes))


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_system_page_is_for_superusers_only(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", "s@example.com", "pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/system/").status_code == 403


def test_system_page_shows_backlog_lag_periodic_tasks_database_and_recent_errors(
    superuser_client, organization, settings
):
    import logging

    _stale_backlog(organization, minutes=20)
    PeriodicTaskRun.objects.create(
        task="traces.sweep_ingest_batches", last_finished_at=timezone.now() - timedelta(hours=1), last_outcome="success"
    )
    logging.getLogger("traces.services").error("Ingest batch 7 failed: boom")
    response = superuser_client.get("/admin/system/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-kpi="backlog_batches"' in page and "2 batches" in page
    assert 'data-task="traces.sweep_ingest_batches" data-late="1"' in page
    assert 'data-task="steps.fail_stale_steps" data-late="0"' in page  # never ran: shown, not late
    assert "Ingest batch 7 failed: boom" in page
    assert 'id="database"' in page
    # The banner: lag over STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS and the late sweep.
    assert 'id="system-banner"' in page and "Ingest is 20." in page and "Is celery beat running?" in page


def test_banner_shows_on_every_console_page_once_over_a_threshold(superuser_client, organization, settings):
    from django.core.cache import cache

    assert 'id="system-banner"' not in superuser_client.get("/admin/").content.decode()
    _stale_backlog(organization, minutes=10)
    assert 'id="system-banner"' not in superuser_client.get("/admin/").content.decode()  # cached for a while
    cache.clear()
    for path in ("/admin/", "/admin/steps/step/", "/admin/errors/"):
        page = superuser_client.get(path).content.decode()
        assert 'id="system-banner"' in page and "minutes behind" in page, path
    settings.STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS = 3600
    cache.clear()
    assert 'id="system-banner"' not in superuser_client.get("/admin/").content.decode()
