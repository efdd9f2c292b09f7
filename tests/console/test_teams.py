"""Teams in the console: members see only their organizations (another organization's object is a 404 on every
console URL, enumerated from the admin site), roles decide what is shown and allowed (403 otherwise), owners and
admins manage keys, projects, members and invitations, and all of it is in the audit log."""

from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote as admin_quote
from django.core import mail
from django.test import Client
from django.urls import URLPattern, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Role
from accounts.roles import MEMBER_APPS
from accounts.services import api_key_create
from steps.models import Step
from steps.reports import usage_report
from tests.console.teams import PASSWORD, build_teams

pytestmark = pytest.mark.django_db

# The console's own pages (not a model admin's): those that show one organization take `?organization=`.
ORGANIZATION_PAGES = ("dashboard", "errors", "steps_step_changelist", "agents_run_changelist")  # besides site_pages()
SUPERUSER_PAGES = ("system",)
# Pages that show no organization's data (Django's own and the teams plumbing, tested below).
PLAIN_PAGES = (
    "index", "login", "logout", "password_change", "password_change_done", "autocomplete", "jsi18n", "view_on_site",
    "app_list", "switch_organization", "invitation_accept",
)  # fmt: skip

ROLES = ("owner", "admin", "member", "viewer", "other", "anonymous")


@pytest.fixture
def teams():
    return build_teams()


def client_for(teams, role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(teams.users[role])
    return client


def _object_urls(model_admin) -> list[tuple[str, str]]:
    """(route, name) of every URL pattern of a model admin that takes an object id, named or not."""
    found = []
    for pattern in model_admin.get_urls():
        route = str(pattern.pattern)
        if "<path:object_id>" in route:
            found.append((route, pattern.name or ""))
    return found


def _object_url(model_admin, route: str, obj) -> str:
    opts = model_admin.model._meta
    base = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return base + route.replace("<path:object_id>", quote(admin_quote(str(obj.pk))))


@pytest.mark.parametrize("role", ["owner", "admin", "member", "viewer"])
def test_every_console_url_with_another_organizations_object_answers_404(teams, role):
    """Every object URL of every registered model admin (enumerated, so new pages are covered), GET and POST,
    for each role of organization A, with organization B's object."""
    missing = []
    checked = 0
    client = client_for(teams, role)
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in MEMBER_APPS:
            continue
        obj = teams.b.objects.get(model)
        if obj is None:
            missing.append(model._meta.label)
            continue
        for route, _name in _object_urls(model_admin):
            url = _object_url(model_admin, route, obj)
            get = client.get(url, follow=True)
            # The admin's bare `<id>/` URL redirects to `<id>/change/` for any id: followed, it is a 404 too.
            post = client.post(url, {"feedback": "positive", "post": "yes", "role": "owner"}, follow=True)
            assert post.status_code == 404, (role, url, post.status_code)
            assert get.status_code in (404, 405), (role, url, get.status_code)
            checked += 1
    assert not missing, f"add an object of organization B for {sorted(set(missing))} to tests/console/teams.py"
    assert checked > 20


def test_every_console_url_sends_an_anonymous_visitor_to_the_login(teams):
    client = Client()
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        urls = [reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")]
        obj = teams.a.objects.get(model)
        if obj is not None:
            urls += [_object_url(model_admin, route, obj) for route, _ in _object_urls(model_admin)]
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_every_list_and_site_page_shows_nothing_of_another_organization(teams):
    """Changelists (also searched for B's names), add pages, the dashboard and errors page: never B's data; B as
    the page's organization is a 404."""
    client = client_for(teams, "viewer")
    b_name = teams.b.organization.name
    # What would betray B: its id and the names of its objects (the search term itself is echoed back).
    b_markers = [teams.b.organization.pk, f"{b_name}-", *(str(o.pk) for o in teams.b.objects.values() if
                                                           isinstance(o.pk, str))]  # fmt: skip
    for model in admin.site._registry:
        opts = model._meta
        for url in (
            reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist") + f"?q={b_name}",
            reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
        ):
            response = client.get(url, follow=True)
            assert response.status_code in (200, 403), (url, response.status_code)
            html = response.content.decode()
            assert not [m for m in b_markers if m in html], url
    for name in ORGANIZATION_PAGES:
        response = client.get(reverse(f"admin:{name}"), follow=True)
        html = response.content.decode()
        assert response.status_code == 200 and not [m for m in b_markers if m in html], name
        assert client.get(reverse(f"admin:{name}"), {"organization": teams.b.organization.pk}).status_code == 404
    for name in SUPERUSER_PAGES:
        assert client.get(reverse(f"admin:{name}")).status_code == 403, name
    assert (
        client.post(reverse("admin:switch_organization"), {"organization": teams.b.organization.pk}).status_code == 404
    )
    # Actions on B's rows from A's changelist: the selected ids are not found.
    response = client_for(teams, "owner").post(
        reverse("admin:steps_step_changelist"),
        {"action": "mark_positive", admin.helpers.ACTION_CHECKBOX_NAME: [teams.b[Step].pk]},
    )
    assert response.status_code == 404
    assert Step.objects.get(pk=teams.b[Step].pk).feedback is None


def test_autocomplete_answers_nothing_of_another_organization(teams):
    client = client_for(teams, "owner")
    response = client.get(
        "/admin/autocomplete/",
        {"app_label": "accounts", "model_name": "apikey", "field_name": "project", "term": "bravo"},
    )
    assert response.status_code in (403, 404) or "bravo" not in response.content.decode()


def _step_url(teams) -> str:
    return reverse("admin:steps_step_change", args=[teams.a[Step].pk])


# (what, method, url(teams), data, {role: expected status}); 302 for anonymous is the login redirect.
MATRIX = [
    ("index", "get", lambda t: reverse("admin:index"), None,
     {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "other": 200, "anonymous": 302}),
    ("step page", "get", _step_url, None,
     {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "other": 404, "anonymous": 302}),
    ("run page", "get", lambda t: reverse("admin:agents_run_change", args=[t.a.objects[type(t.a[Step].run)].pk]), None,
     {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "other": 404, "anonymous": 302}),
    ("dashboard of A", "get", lambda t: reverse("admin:dashboard") + f"?organization={t.a.organization.pk}", None,
     {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "other": 404, "anonymous": 302}),
    ("feedback on a step", "post", lambda t: reverse("admin:steps_step_feedback", args=[t.a[Step].pk]),
     {"feedback": "negative", "add_tags": "checked"},
     {"owner": 302, "admin": 302, "member": 302, "viewer": 403, "other": 404, "anonymous": 302}),
    ("feedback action", "post",
     lambda t: reverse("admin:steps_step_changelist") + f"?organization={t.a.organization.pk}",
     lambda t: {"action": "mark_positive", admin.helpers.ACTION_CHECKBOX_NAME: [t.a[Step].pk]},
     {"owner": 302, "admin": 302, "member": 302, "viewer": 403, "other": 404, "anonymous": 302}),
    ("API keys list", "get", lambda t: reverse("admin:accounts_apikey_changelist"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("new API key form", "get", lambda t: reverse("admin:accounts_apikey_add"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("an API key of A", "get", lambda t: reverse("admin:accounts_apikey_change", args=[t.a[ApiKey].pk]), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 404, "anonymous": 302}),
    ("members", "get", lambda t: reverse("admin:accounts_membership_changelist"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("audit log", "get", lambda t: reverse("admin:accounts_auditevent_changelist"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("an audit event of A", "get", lambda t: reverse("admin:accounts_auditevent_change", args=[t.a[AuditEvent].pk]),
     None, {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 404, "anonymous": 302}),
    ("projects", "get", lambda t: reverse("admin:accounts_project_changelist"), None,
     {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "other": 200, "anonymous": 302}),
    ("new project form", "get", lambda t: reverse("admin:accounts_project_add"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("rename a project of A", "post", lambda t: reverse("admin:accounts_project_change", args=[t.a.objects[
        type(t.a[Step].project)].pk]), {"name": "renamed"},
     {"owner": 302, "admin": 302, "member": 403, "viewer": 403, "other": 404, "anonymous": 302}),
    ("invite", "get", lambda t: reverse("admin:accounts_invitation_add"), None,
     {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "other": 200, "anonymous": 302}),
    ("users (staff only)", "get", lambda t: reverse("admin:auth_user_changelist"), None,
     {"owner": 403, "admin": 403, "member": 403, "viewer": 403, "other": 403, "anonymous": 302}),
]  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_each_console_page_and_action_answers_what_the_role_allows(teams, role):
    client = client_for(teams, role)
    got = {}
    for what, method, url, data, _ in MATRIX:
        payload = data(teams) if callable(data) else data
        response = getattr(client, method)(url(teams), payload or {})
        got[what] = response.status_code
        if role == "anonymous" and response.status_code == 302:
            assert "/admin/login/" in response["Location"], what
    assert got == {what: expected[role] for what, _, _, _, expected in MATRIX}


def test_a_viewer_is_not_shown_what_they_cannot_do(teams):
    viewer = client_for(teams, "viewer")
    page = viewer.get(_step_url(teams)).content.decode()
    assert 'name="feedback"' not in page
    listing = viewer.get(reverse("admin:steps_step_changelist"), follow=True).content.decode()
    assert "mark_positive" not in listing
    index = viewer.get(reverse("admin:index")).content.decode()
    assert "API keys" not in index and "Audit events" not in index
    owner_index = client_for(teams, "owner").get(reverse("admin:index")).content.decode()
    assert "API keys" in owner_index and "Audit events" in owner_index


def test_a_member_signs_in_at_the_admin_login_and_sees_their_organizations_totals(teams):
    client = Client()
    response = client.post(
        reverse("admin:login"), {"username": "viewer", "password": PASSWORD, "next": "/admin/"}, follow=True
    )
    assert response.status_code == 200 and response.context["user"].username == "viewer"
    listing = client.get(reverse("admin:steps_step_changelist"), follow=True)
    html = listing.content.decode()
    assert teams.a[Step].pk in html and teams.b[Step].pk not in html
    dashboard = client.get(reverse("admin:dashboard"), {"period": "7d"})
    overall = dashboard.context["overall"]
    # The API's totals for A (a key of A, the same window) are the dashboard's.
    _, raw_key = api_key_create(organization=teams.a.organization, scope="read")
    api_client = APIClient()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    api = api_client.get("/v1/usage", dashboard.context["period"].params()).json()["data"][0]
    assert overall["steps"] == api["steps"] == 1
    assert overall["total_tokens"] == api["total_tokens"] == 120
    assert (
        overall == usage_report(organization=teams.a.organization, filters=dashboard.context["period"].params()).rows[0]
    )
    errors_page = client.get(reverse("admin:errors"), {"period": "7d"}).context["page"]
    api_errors = api_client.get("/v1/errors", dashboard.context["period"].params()).json()
    assert errors_page.total_steps == 1 and errors_page.total_errors == sum(r["errors"] for r in api_errors["data"])
    # The switcher shows A only, and B cannot be chosen.
    assert "alpha" in dashboard.content.decode() and "bravo" not in dashboard.content.decode()
    assert AuditEvent.objects.filter(action="auth.sign_in", actor="viewer", organization=teams.a.organization).exists()


def test_a_person_of_no_organization_cannot_sign_in_to_the_console(teams):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(username="nobody", password=PASSWORD)
    client = Client()
    response = client.post(reverse("admin:login"), {"username": "nobody", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 200 and "_auth_user_id" not in client.session


def test_failed_sign_ins_and_sign_outs_are_audited(teams):
    client = Client()
    client.post(reverse("admin:login"), {"username": "viewer", "password": "wrong", "next": "/admin/"})
    failed = AuditEvent.objects.get(action="auth.sign_in_failed")
    assert failed.organization == teams.a.organization and failed.ip == "127.0.0.1"
    assert "wrong" not in str(failed.after) and failed.after == {"username": "viewer"}
    client.post(reverse("admin:login"), {"username": "viewer", "password": PASSWORD, "next": "/admin/"})
    client.post(reverse("admin:logout"))
    assert AuditEvent.objects.filter(action="auth.sign_out", actor="viewer").exists()
    assert "_auth_user_id" not in client.session


def test_superusers_keep_the_view_across_organizations(teams):
    client = client_for(teams, "superuser")
    for data in (teams.a, teams.b):
        assert client.get(reverse("admin:steps_step_change", args=[data[Step].pk])).status_code == 200
    html = client.get(reverse("admin:steps_step_changelist")).content.decode()
    assert teams.a[Step].pk in html and teams.b[Step].pk in html


def test_owner_creates_a_key_shown_once_then_revokes_it_and_it_answers_401(teams):
    client = client_for(teams, "owner")
    response = client.post(
        reverse("admin:accounts_apikey_add"),
        {"organization": teams.a.organization.pk, "name": "ci", "scope": "read", "project": ""},
    )
    assert response.status_code == 200
    raw_key = response.context["raw_key"]
    assert raw_key.startswith("sl-") and raw_key in response.content.decode()
    api_key = ApiKey.objects.get(name="ci")
    assert api_key.scope == "read" and api_key.created_by == teams.users["owner"]
    # Not shown again: the key's page has the prefix only.
    assert raw_key not in client.get(reverse("admin:accounts_apikey_change", args=[api_key.pk])).content.decode()

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get("/v1/steps").status_code == 200
    listing = client.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    assert "Last used" in listing or "last used" in listing.lower()

    response = client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke", admin.helpers.ACTION_CHECKBOX_NAME: [api_key.pk]},
    )
    assert response.status_code == 302
    assert api.get("/v1/steps").status_code == 401
    actions = list(AuditEvent.objects.filter(organization=teams.a.organization).values_list("action", flat=True))
    assert "api_key.create" in actions and "api_key.revoke" in actions
    revoke = AuditEvent.objects.get(action="api_key.revoke", target_id=str(api_key.pk))
    assert revoke.actor == "owner" and revoke.before["revoked_at"] is None and revoke.after["revoked_at"]


def test_a_key_cannot_be_created_for_another_organization_or_project(teams):
    client = client_for(teams, "owner")
    response = client.post(
        reverse("admin:accounts_apikey_add"),
        {"organization": teams.b.organization.pk, "name": "evil", "scope": "full"},
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    b_project = teams.b.objects[type(teams.b[Step].project)]
    response = client.post(
        reverse("admin:accounts_apikey_add"),
        {"organization": teams.a.organization.pk, "name": "evil", "scope": "full", "project": b_project.pk},
    )
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.filter(name="evil").exists()


def test_projects_are_created_and_renamed_with_an_audit_trail(teams):
    client = client_for(teams, "admin")
    response = client.post(
        reverse("admin:accounts_project_add"), {"organization": teams.a.organization.pk, "name": "web"}
    )
    assert response.status_code == 302
    project = teams.a.organization.projects.get(name="web")
    client.post(reverse("admin:accounts_project_change", args=[project.pk]), {"name": "web-prod"})
    project.refresh_from_db()
    assert project.name == "web-prod"
    rename = AuditEvent.objects.get(action="project.rename", target_id=project.pk)
    assert rename.before == {"name": "web"} and rename.after == {"name": "web-prod"} and rename.actor == "admin"


def test_roles_change_and_the_last_owner_stays(teams):
    owner = client_for(teams, "owner")
    viewer_membership = Membership.objects.get(user=teams.users["viewer"], organization=teams.a.organization)
    response = owner.post(reverse("admin:accounts_membership_change", args=[viewer_membership.pk]), {"role": "member"})
    assert response.status_code == 302
    viewer_membership.refresh_from_db()
    assert viewer_membership.role == "member"
    event = AuditEvent.objects.get(action="member.role")
    assert event.before["role"] == "viewer" and event.after["role"] == "member"

    own = Membership.objects.get(user=teams.users["owner"], organization=teams.a.organization)
    owner.post(reverse("admin:accounts_membership_change", args=[own.pk]), {"role": "viewer"})
    owner.post(reverse("admin:accounts_membership_delete", args=[own.pk]), {"post": "yes"})
    own.refresh_from_db()
    assert own.role == Role.OWNER

    # An admin cannot make anyone an owner, nor remove the owner.
    admin_client = client_for(teams, "admin")
    response = admin_client.post(
        reverse("admin:accounts_membership_change", args=[viewer_membership.pk]), {"role": "owner"}
    )
    assert response.status_code == 403
    response = admin_client.post(reverse("admin:accounts_membership_delete", args=[own.pk]), {"post": "yes"})
    assert response.status_code == 403 and Membership.objects.filter(pk=own.pk).exists()

    # With a second owner, the first may be removed.
    second = Membership.objects.get(user=teams.users["admin"], organization=teams.a.organization)
    owner.post(reverse("admin:accounts_membership_change", args=[second.pk]), {"role": "owner"})
    owner.post(reverse("admin:accounts_membership_delete", args=[own.pk]), {"post": "yes"})
    assert not Membership.objects.filter(pk=own.pk).exists()
    assert AuditEvent.objects.filter(action="member.remove", target_id=str(own.pk)).exists()


def test_an_invitation_link_is_shown_once_mailed_and_works_once(teams, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner = client_for(teams, "owner")
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.post(
            reverse("admin:accounts_invitation_add"),
            {"organization": teams.a.organization.pk, "email": "new@example.com", "role": "member"},
        )
    assert response.status_code == 200
    link = response.context["link"]
    assert "/admin/invitation/inv-" in link and link in response.content.decode()
    assert len(mail.outbox) == 1 and link in mail.outbox[0].body and mail.outbox[0].to == ["new@example.com"]
    invitation = Invitation.objects.get(email="new@example.com")
    assert invitation.hashed_token not in link

    path = link.split("testserver", 1)[1]
    newcomer = Client()
    assert newcomer.get(path).status_code == 200
    response = newcomer.post(path, {"username": "newcomer", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302
    membership = Membership.objects.get(user__username="newcomer")
    assert membership.organization == teams.a.organization and membership.role == "member"
    assert newcomer.get(reverse("admin:steps_step_changelist"), follow=True).status_code == 200
    # One use only.
    assert Client().get(path).status_code == 404
    assert AuditEvent.objects.filter(action="invitation.accept").count() == 1


def test_an_expired_invitation_does_not_work(teams):
    owner = client_for(teams, "owner")
    response = owner.post(
        reverse("admin:accounts_invitation_add"), {"organization": teams.a.organization.pk, "role": "viewer"}
    )
    path = response.context["link"].split("testserver", 1)[1]
    Invitation.objects.filter(email="").update(expires_at=timezone.now() - timedelta(minutes=1))
    assert Client().get(path).status_code == 404


def test_an_admin_cannot_invite_owners_and_a_viewer_cannot_invite(teams):
    response = client_for(teams, "admin").post(
        reverse("admin:accounts_invitation_add"), {"organization": teams.a.organization.pk, "role": "owner"}
    )
    assert response.status_code == 403
    response = client_for(teams, "viewer").post(
        reverse("admin:accounts_invitation_add"), {"organization": teams.a.organization.pk, "role": "viewer"}
    )
    assert response.status_code == 403


def test_the_switcher_changes_the_current_organization_among_ones_own(teams):
    from accounts.services import membership_set

    person = teams.users["viewer"]
    membership_set(organization=teams.b.organization, user=person, role=Role.VIEWER)
    client = client_for(teams, "viewer")
    response = client.post(
        reverse("admin:switch_organization"),
        {"organization": teams.b.organization.pk, "next": f"/admin/dashboard/?organization={teams.a.organization.pk}"},
    )
    assert response.status_code == 302 and response["Location"] == "/admin/dashboard/"
    assert client.get(reverse("admin:dashboard")).context["organization"] == teams.b.organization
    listing = client.get(reverse("admin:steps_step_changelist"), follow=True).content.decode()
    assert teams.b[Step].pk in listing and teams.a[Step].pk not in listing


def site_pages() -> dict[str, list[str]]:
    """The console's own pages (not a model admin's), by name, with the names of their URL arguments."""
    pages = {}
    for entry in admin.site.get_urls():
        if isinstance(entry, URLPattern) and entry.name and not entry.name.startswith("app_list"):
            pattern = entry.pattern
            arguments = list(getattr(pattern, "converters", {}) or {}) or list(pattern.regex.groupindex)
            pages[entry.name] = arguments
    return pages


def test_every_console_page_of_its_own_is_scoped(teams):
    """Every site-level page, found from the admin site (so a new one is covered): one that shows an object
    (an `<model>_id` argument) is a 404 with organization B's object, GET and POST; one that shows an
    organization is a 404 for `?organization=B` and shows none of B; superuser pages are a 403 for members."""
    client = client_for(teams, "owner")
    by_model_name = {model._meta.model_name: obj for model, obj in teams.b.objects.items()}
    b_markers = [teams.b.organization.pk, "bravo-"]
    checked = []
    for name, arguments in site_pages().items():
        if name in PLAIN_PAGES:
            continue
        if name in SUPERUSER_PAGES:
            assert client.get(reverse(f"admin:{name}")).status_code == 403, name
            continue
        if arguments:
            argument = arguments[0]
            assert argument.endswith("_id") and argument[: -len("_id")] in by_model_name, (
                f"{name}: add an object of organization B for <{argument}> to tests/console/teams.py"
            )
            url = reverse(f"admin:{name}", kwargs={argument: by_model_name[argument[: -len("_id")]].pk})
            assert client.get(url).status_code in (404, 405), url  # 405: a POST-only page, before any lookup
            assert client.post(url, {}).status_code == 404, url
        else:
            url = reverse(f"admin:{name}")
            response = client.get(url, follow=True)
            assert response.status_code in (200, 405), (url, response.status_code)
            assert not [m for m in b_markers if m in response.content.decode()], url
            assert client.get(url, {"organization": teams.b.organization.pk}).status_code == 404, url
        checked.append(name)
    assert {"dashboard", "errors"} <= set(checked)


def test_console_deletions_and_changes_are_audited(teams):
    from agents.models import Agent

    agent = teams.a[Agent]
    client = client_for(teams, "admin")
    response = client.post(reverse("admin:agents_agent_delete", args=[agent.pk]), {"post": "yes"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="agent.delete", target_id=agent.pk)
    assert event.actor == "admin" and event.organization == teams.a.organization and event.ip == "127.0.0.1"
    # A viewer cannot delete at all.
    other = teams.a[type(teams.a[Step].run)]
    assert client_for(teams, "viewer").post(reverse("admin:agents_run_delete", args=[other.pk])).status_code == 403


def test_a_refused_attempt_is_in_the_audit_log(teams):
    viewer = client_for(teams, "viewer")
    response = viewer.post(reverse("admin:steps_step_feedback", args=[teams.a[Step].pk]), {"feedback": "positive"})
    assert response.status_code == 403
    assert viewer.get(reverse("admin:accounts_apikey_add")).status_code == 403
    denied = list(AuditEvent.objects.filter(action="console.denied", organization=teams.a.organization).order_by("id"))
    assert [e.after["path"] for e in denied] == [
        reverse("admin:steps_step_feedback", args=[teams.a[Step].pk]),
        reverse("admin:accounts_apikey_add"),
    ]
    assert all(e.actor == "viewer" and e.after["role"] == "viewer" for e in denied)


def test_the_role_menu_offers_only_grantable_roles(teams):
    admin_form = client_for(teams, "admin").get(reverse("admin:accounts_invitation_add")).content.decode()
    owner_form = client_for(teams, "owner").get(reverse("admin:accounts_invitation_add")).content.decode()
    assert 'value="owner"' not in admin_form and 'value="admin"' in admin_form
    assert 'value="owner"' in owner_form


def test_owners_and_admins_set_their_organizations_retention_and_not_its_name(teams):
    organization = teams.a.organization
    url = reverse("admin:accounts_organization_change", args=[organization.pk])
    response = client_for(teams, "admin").post(url, {"name": "renamed", "retention_days": "30"})
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.retention_days == 30 and organization.name == "alpha"
    event = AuditEvent.objects.get(action="retention.set", organization=organization)
    assert event.actor == "admin" and event.after == {"retention_days": 30}
    assert client_for(teams, "member").post(url, {"retention_days": "1"}).status_code == 403
    assert client_for(teams, "other").post(url, {"retention_days": "1"}).status_code == 404
    organization.refresh_from_db()
    assert organization.retention_days == 30
