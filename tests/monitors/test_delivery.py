"""Delivery: signed webhooks to a real HTTP receiver, retries with their status codes logged, final failures, the
address check at send time, email through a real SMTP server, and the secret's storage and rotation."""

import pytest

from monitors.models import Delivery, DeliveryAttempt, Monitor
from monitors.notifications import SIGNATURE_HEADER, secret_decrypt, signature, signature_valid
from monitors.services import monitor_create
from monitors.tasks import backoff_seconds

BODY = {"name": "cost", "metric": "cost_usd", "operator": ">", "threshold": 50, "window_seconds": 3600}


def _create(api_client, targets) -> dict:
    response = api_client.post("/v1/monitors", {**BODY, "targets": targets}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db
def test_the_test_button_sends_a_signed_sample(api_client, receiver, django_capture_on_commit_callbacks):
    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(f"/v1/monitors/{monitor['id']}/test")
    assert response.status_code == 202
    (sent,) = receiver.requests
    assert signature_valid(secret=monitor["secret"], body=sent.body, header=sent.headers[SIGNATURE_HEADER])
    assert sent.json()["type"] == "test" and sent.json()["text"].startswith("[TEST] cost")
    assert sent.headers["X-Steplens-Event"] == "test" and sent.headers["Content-Type"] == "application/json"
    deliveries = api_client.get(f"/v1/monitors/{monitor['id']}/deliveries").json()["data"]
    assert [(d["status"], [a["status_code"] for a in d["attempts"]]) for d in deliveries] == [("delivered", [200])]


@pytest.mark.django_db
def test_failed_attempts_are_retried_and_each_is_logged_with_its_status_code(
    api_client, receiver, settings, django_capture_on_commit_callbacks
):
    settings.STEPLENS_NOTIFY_RETRY_BASE_SECONDS = 0
    receiver.statuses = [500, 503]
    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert list(DeliveryAttempt.objects.order_by("number").values_list("status_code", "ok")) == [
        (500, False), (503, False), (200, True)
    ]  # fmt: skip
    assert len(receiver.requests) == 3
    assert len({r.headers["X-Steplens-Delivery"] for r in receiver.requests}) == 1


@pytest.mark.django_db
def test_a_receiver_refusing_the_request_is_not_retried_and_attempts_stop_at_the_limit(
    api_client, receiver, settings, django_capture_on_commit_callbacks
):
    settings.STEPLENS_NOTIFY_RETRY_BASE_SECONDS = 0
    settings.STEPLENS_NOTIFY_MAX_ATTEMPTS = 3
    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])
    receiver.statuses = [410]
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    receiver.statuses = [500] * 5
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    first, second = Delivery.objects.order_by("id")
    assert (first.status, first.attempts, first.last_status_code) == ("failed", 1, 410)
    assert (second.status, second.attempts, second.last_status_code) == ("failed", 3, 500)
    assert "HTTP 500" in second.last_error


def test_backoff_doubles_up_to_the_cap(settings):
    settings.STEPLENS_NOTIFY_RETRY_BASE_SECONDS = 30
    settings.STEPLENS_NOTIFY_RETRY_MAX_SECONDS = 900
    assert [backoff_seconds(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


@pytest.mark.django_db
def test_a_private_address_is_refused_at_send_time_too(
    api_client, receiver, settings, django_capture_on_commit_callbacks
):
    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])  # allowed while the fixture allows
    settings.STEPLENS_NOTIFY_ALLOW_PRIVATE = False
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "private, loopback or link-local" in delivery.last_error
    assert receiver.requests == []


@pytest.mark.django_db
def test_email_goes_through_a_real_smtp_server(api_client, smtp_server, settings, django_capture_on_commit_callbacks):
    settings.STEPLENS_NOTIFY_FROM_EMAIL = "alerts@steplens.example"
    monitor = _create(api_client, [{"kind": "email", "email": "oncall@example.com"}])
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    (message,) = smtp_server.messages
    assert message["To"] == "oncall@example.com" and message["From"] == "alerts@steplens.example"
    assert message["Subject"] == "[Steplens] test: cost"
    assert "[TEST] cost" in message.get_payload()
    assert Delivery.objects.get().status == "delivered"


@pytest.mark.django_db
def test_an_unreachable_smtp_server_is_a_logged_failed_attempt(
    api_client, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    settings.STEPLENS_NOTIFY_RETRY_BASE_SECONDS, settings.STEPLENS_NOTIFY_MAX_ATTEMPTS = 0, 2
    monitor = _create(api_client, [{"kind": "email", "email": "oncall@example.com"}])
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert "ConnectionRefusedError" in delivery.last_error


@pytest.mark.django_db
def test_the_secret_is_stored_encrypted_and_rotation_changes_the_signature(
    api_client, receiver, django_capture_on_commit_callbacks
):
    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])
    stored = Monitor.objects.get().secret_encrypted
    assert monitor["secret"] not in stored and secret_decrypt(stored) == monitor["secret"]
    rotated = api_client.post(f"/v1/monitors/{monitor['id']}/rotate-secret").json()["secret"]
    assert rotated != monitor["secret"]
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post(f"/v1/monitors/{monitor['id']}/test")
    (sent,) = receiver.requests
    assert signature_valid(secret=rotated, body=sent.body, header=sent.headers[SIGNATURE_HEADER])
    assert not signature_valid(secret=monitor["secret"], body=sent.body, header=sent.headers[SIGNATURE_HEADER])


def test_an_old_signature_is_refused():
    stale = signature(secret="s", body=b"{}", timestamp=1_000_000_000)
    assert not signature_valid(secret="s", body=b"{}", header=stale)


@pytest.mark.django_db
def test_the_secret_of_a_changed_django_secret_key_cannot_be_read(settings, organization):
    monitor, _ = monitor_create(organization=organization, data=BODY)
    settings.SECRET_KEY = "another-key"
    assert secret_decrypt(monitor.secret_encrypted) is None


@pytest.mark.django_db
def test_a_delivery_whose_task_was_lost_is_sent_by_a_later_cycle(
    api_client, receiver, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from monitors.services import deliveries_requeue

    monitor = _create(api_client, [{"kind": "webhook", "url": receiver.url}])
    api_client.post(f"/v1/monitors/{monitor['id']}/test")  # its task is never run: lost with the broker
    Delivery.objects.update(updated_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_requeue(older_than=timedelta(minutes=31)) == 1
    assert Delivery.objects.get().status == "delivered" and len(receiver.requests) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_requeue(older_than=timedelta(minutes=31)) == 0
