"""Django permissions from organization roles, so a member (no staff flag, no assigned permissions) can use
the console. A permission is granted when the person's role in ANY of their organizations allows it: the
console then checks each object's organization (console.scoping), so this only decides what is shown at all."""

from typing import Any

from django.contrib.auth.backends import BaseBackend

from accounts.roles import MEMBER_APPS, permission_capability, role_allows
from accounts.selectors import user_roles

_CACHE = "_steplens_roles"


def cached_user_roles(user: Any) -> dict[str, str]:
    """{organization id: role} of `user`, read once per user object (that is, once per request)."""
    roles = getattr(user, _CACHE, None)
    if roles is None:
        roles = user_roles(user=user)
        setattr(user, _CACHE, roles)
    return roles


class MembershipBackend(BaseBackend):
    """Authenticates nobody (ModelBackend does); answers permission checks from roles."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        if not getattr(user_obj, "is_active", False):
            return False
        capability = permission_capability(perm)
        if capability is None:
            return False
        return any(role_allows(role, capability) for role in cached_user_roles(user_obj).values())

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        # The admin then asks each model admin; a member sees an app only if some organization role exists.
        return app_label in MEMBER_APPS and bool(getattr(user_obj, "is_active", False) and cached_user_roles(user_obj))
