"""Sign-ins, failed sign-ins and sign-outs go to the audit log (Django's auth signals; connected in apps.py)."""

from typing import Any

from django.contrib.auth import get_user_model

from accounts.audit import Actor, request_ip
from accounts.models import Membership
from accounts.services import audit_record


def _organizations(user: Any) -> list[str | None]:
    """A person's events are written once per organization they belong to, so each organization's log shows
    them; a person of no organization (a superuser) gets one row without an organization."""
    ids = list(Membership.objects.filter(user=user).values_list("organization_id", flat=True))
    return ids or [None]


def on_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    actor = Actor(user=user, ip=request_ip(request))
    for organization_id in _organizations(user):
        audit_record(actor=actor, action="auth.sign_in", organization=organization_id, target=user)


def on_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    actor = Actor(user=user, ip=request_ip(request))
    for organization_id in _organizations(user):
        audit_record(actor=actor, action="auth.sign_out", organization=organization_id, target=user)


def on_login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    # Django has already replaced the password in `credentials` with stars; only the username is kept.
    username = str(credentials.get("username") or "")[:150]
    user = get_user_model().objects.filter(username=username).first() if username else None
    actor = Actor(ip=request_ip(request), label=username or "(no username)")
    for organization_id in _organizations(user) if user is not None else [None]:
        audit_record(
            actor=actor, action="auth.sign_in_failed", organization=organization_id, after={"username": username}
        )
