"""What each role may do, in one place: the console's pages, actions and self-service pages ask here.

Capabilities, from least to most: `view` (read everything of the organization), `annotate` (feedback and tags
on steps), `manage` (members, API keys, projects, retention, agents, the audit log). Superusers may do
everything in every organization; nobody else gets any capability in an organization they do not belong to.
"""

from enum import StrEnum

from accounts.models import Role


class Capability(StrEnum):
    VIEW = "view"
    ANNOTATE = "annotate"
    MANAGE = "manage"


ROLE_CAPABILITIES: dict[str, frozenset[Capability]] = {
    Role.OWNER: frozenset(Capability),
    Role.ADMIN: frozenset(Capability),
    Role.MEMBER: frozenset({Capability.VIEW, Capability.ANNOTATE}),
    Role.VIEWER: frozenset({Capability.VIEW}),
}

# Which roles a role may hand out (an admin cannot make owners; only owners can).
GRANTABLE_ROLES: dict[str, tuple[str, ...]] = {
    Role.OWNER: tuple(Role.values),
    Role.ADMIN: (Role.ADMIN, Role.MEMBER, Role.VIEWER),
}


def role_allows(role: str | None, capability: Capability | str) -> bool:
    """Whether `role` (None: no membership) has `capability`."""
    return role is not None and Capability(capability) in ROLE_CAPABILITIES.get(role, frozenset())


def role_can_grant(role: str | None, granted: str) -> bool:
    """Whether someone with `role` may give (or change from/to) the role `granted`."""
    return granted in GRANTABLE_ROLES.get(role or "", ())


# Apps whose model permissions members get from their roles (accounts.backends.MembershipBackend). An app whose
# models carry an organization adds its label here; the console scopes every such model admin to the person's
# organizations. Models of other apps (auth users and groups, the admin log) stay for staff and superusers.
MEMBER_APPS = frozenset({"accounts", "agents", "steps", "traces", "runner", "ops", "monitors"})
# Models only `manage` may even see: who the members are, keys, invitations and the audit log.
MANAGE_VIEW_MODELS = frozenset({"accounts.apikey", "accounts.invitation", "accounts.auditevent", "accounts.membership"})
# Writes that `annotate` allows (feedback and tags on steps).
ANNOTATE_WRITES = frozenset({"steps.change_step"})


def permission_capability(perm: str) -> Capability | None:
    """The capability a Django permission ("app.action_model") needs from a role; None: no role grants it."""
    app_label, _, codename = perm.partition(".")
    action, _, model = codename.partition("_")
    if app_label not in MEMBER_APPS or action not in ("view", "add", "change", "delete"):
        return None
    if f"{app_label}.{model}" == "accounts.organization":
        # Owners and admins set their organization's retention; superusers make, rename and delete organizations.
        return {"view": Capability.VIEW, "change": Capability.MANAGE}.get(action)
    if action == "view":
        return Capability.MANAGE if f"{app_label}.{model}" in MANAGE_VIEW_MODELS else Capability.VIEW
    if perm in ANNOTATE_WRITES:
        return Capability.ANNOTATE
    return Capability.MANAGE
