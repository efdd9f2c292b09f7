"""Who did something, for the audit log: a signed-in person, an API key, or a command (neither), and from where."""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from accounts.models import ApiKey


@dataclass(frozen=True)
class Actor:
    """The author of an audited change. `label` is what the log keeps if the user or key is deleted later."""

    user: AbstractBaseUser | None = None
    api_key: ApiKey | None = None
    ip: str | None = None
    label: str = ""

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.user is not None:
            return self.user.get_username()
        if self.api_key is not None:
            return f"key {self.api_key.prefix}…"
        return "system"


SYSTEM = Actor(label="system")


def request_ip(request: Any) -> str | None:
    """The client address as the web server saw it (REMOTE_ADDR; a proxy's X-Forwarded-For is not trusted)."""
    meta = getattr(request, "META", None) or {}
    return meta.get("REMOTE_ADDR") or None


def actor_from_request(request: Any) -> Actor:
    """The actor of a console request (a signed-in user) or of an API request (its key)."""
    user = getattr(request, "user", None)
    api_key = getattr(user, "api_key", None)
    if isinstance(api_key, ApiKey):
        return Actor(api_key=api_key, ip=request_ip(request))
    if user is not None and getattr(user, "is_authenticated", False):
        return Actor(user=user, ip=request_ip(request))
    return Actor(ip=request_ip(request))
