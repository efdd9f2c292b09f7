"""What an alert sends and how: the payload (with a `text` line for Slack and Mattermost), the webhook signature,
the address check of notification URLs, and one attempt at a webhook or an email.

**Signature.** Every webhook POST carries `X-Steplens-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is
HMAC-SHA256 keyed with the monitor's secret over `<t>.<raw body>`. A receiver recomputes it, compares in constant
time and refuses a `t` older than a few minutes (a replayed request). The secret is shown once, when the monitor
is created; Steplens must read it back to sign, so it is stored encrypted (Fernet) under a key derived from
DJANGO_SECRET_KEY, never in clear: a database dump alone does not reveal it, and changing DJANGO_SECRET_KEY makes
the stored secrets unreadable (rotate them with `POST /v1/monitors/{id}/rotate-secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.mail import EmailMessage

from config.netguard import NonPublicAddress, refuse_non_public

SIGNATURE_HEADER = "X-Steplens-Signature"
# Bytes of a receiver's answer kept for the attempt log (the rest is read and dropped, never held).
_ANSWER_BYTES = 2048


# --- secrets and signatures ---------------------------------------------------------------------


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"steplens.monitors.webhook-secret:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def secret_new() -> str:
    """A new webhook signing secret (shown once to the user)."""
    return "whsec_" + secrets.token_urlsafe(32)


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str | None:
    """The secret, or None when it cannot be read (DJANGO_SECRET_KEY changed since it was stored)."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        return None


def signature(*, secret: str, body: bytes, timestamp: int) -> str:
    """The X-Steplens-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signature_valid(*, secret: str, body: bytes, header: str, tolerance_seconds: int = 300) -> bool:
    """Whether `header` signs `body` with `secret` and is at most `tolerance_seconds` old (what a receiver does)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = signature(secret=secret, body=body, timestamp=timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- addresses ----------------------------------------------------------------------------------


class AddressRefused(Exception):
    """A notification URL that must not be called; the message says why."""


def _refuse_non_public(host: str, port: int, *, resolve: bool) -> None:
    """Raise AddressRefused when `host` is, or resolves to, a private, loopback or link-local address
    (config.netguard). A monitor's URL is chosen by any API key holder; STEPLENS_NOTIFY_ALLOW_PRIVATE=true lifts
    the rule (a lab, or a receiver on the LAN)."""
    if settings.STEPLENS_NOTIFY_ALLOW_PRIVATE:
        return
    try:
        refuse_non_public(host, port, resolve=resolve)
    except NonPublicAddress as exc:
        raise AddressRefused(str(exc)) from exc


def url_check(url: str, *, resolve: bool) -> None:
    """Raise AddressRefused unless `url` is an http(s) URL of a public host. With `resolve`, a host name is looked
    up and every address it has must be public (done before each delivery); without, only literal addresses and
    loopback names are refused (at creation: a name that does not resolve yet is not an error then)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise AddressRefused("Must be an http or https URL with a host.")
    if parts.username or parts.password:
        raise AddressRefused("Must not carry credentials; the signature authenticates Steplens.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise AddressRefused("Invalid port.") from exc
    _refuse_non_public(parts.hostname, port, resolve=resolve)


# --- sending ------------------------------------------------------------------------------------


@dataclass(slots=True)
class AttemptResult:
    """The outcome of one attempt: ok, the HTTP status (webhooks), an error sentence, seconds taken."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    seconds: float = 0.0
    retry: bool = True


def payload_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def webhook_send(*, url: str, payload: dict[str, Any], secret: str, delivery_id: int) -> AttemptResult:
    """POST the payload, signed. 2xx is delivered; 4xx other than 408/429 is final (retrying will not help)."""
    started = time.monotonic()
    try:
        url_check(url, resolve=True)
    except AddressRefused as exc:
        return AttemptResult(ok=False, error=f"Refused: {exc}", retry=False)
    body = payload_bytes(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Steplens-Webhook/1",
        SIGNATURE_HEADER: signature(secret=secret, body=body, timestamp=int(time.time())),
        "X-Steplens-Delivery": str(delivery_id),
        "X-Steplens-Event": str(payload.get("type", "alert")),
    }
    try:
        client = httpx2.Client(timeout=settings.STEPLENS_NOTIFY_TIMEOUT_SECONDS, follow_redirects=False)
        with client, client.stream("POST", url, content=body, headers=headers) as response:
            answer = b""
            for chunk in response.iter_bytes():
                if len(answer) < _ANSWER_BYTES:
                    answer += chunk[: _ANSWER_BYTES - len(answer)]
            status = response.status_code
    except httpx2.HTTPError as exc:
        return AttemptResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:500], seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    if 200 <= status < 300:
        return AttemptResult(ok=True, status_code=status, seconds=seconds)
    final = 400 <= status < 500 and status not in (408, 429)
    text = answer.decode("utf-8", "replace")[:500]
    return AttemptResult(ok=False, status_code=status, error=f"HTTP {status}: {text}", seconds=seconds, retry=not final)


def email_send(*, address: str, payload: dict[str, Any]) -> AttemptResult:
    """Send the payload's text by Django's email backend (EMAIL_* settings), with the JSON attached as text."""
    started = time.monotonic()
    subject = payload.get("subject") or payload.get("text", "Steplens alert")[:120]
    body = payload.get("text", "") + "\n\n" + json.dumps(payload, indent=2, sort_keys=True)
    message = EmailMessage(
        subject=subject.replace("\n", " "), body=body, from_email=settings.STEPLENS_NOTIFY_FROM_EMAIL, to=[address]
    )
    try:
        message.send(fail_silently=False)
    except Exception as exc:  # smtplib, socket and backend errors alike are a failed attempt
        return AttemptResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:500], seconds=time.monotonic() - started)
    return AttemptResult(ok=True, seconds=time.monotonic() - started)
