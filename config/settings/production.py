"""Production settings: PostgreSQL and a real broker, with no dangerous defaults."""

from django.core.exceptions import ImproperlyConfigured

from config.db_router import REPLICA, ROUTER, replica_settings
from config.settings.base import *  # noqa: F403
from config.settings.base import env

SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production.")
if not env("DATABASE_URL", default=""):
    raise ImproperlyConfigured("DATABASE_URL must be set in production (postgres://user:pass@host:5432/name).")

DEBUG = False
DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS", default=False)
# Seconds to wait for a connection (libpq's connect_timeout): an unreachable database host fails /readyz and the
# requests quickly instead of after the operating system's TCP timeout.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5)
)
if env("DATABASE_REPLICA_URL", default=""):  # as in base.py, with the primary's production connection settings
    DATABASES[REPLICA] = replica_settings(env.db("DATABASE_REPLICA_URL"), primary=DATABASES["default"])
    DATABASE_ROUTERS = [ROUTER]
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Rate-limit counters shared by every web process: Redis when there is one.
CACHES = {"default": env.cache("CACHE_URL", default=REDIS_URL or "locmemcache://")}  # noqa: F405
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over HTTPS (usually a TLS proxy sending X-Forwarded-Proto: https): plain HTTP is redirected and the
# session and CSRF cookies are never sent in clear. Off only for a plain-HTTP trial on a private network.
https_only = env.bool("DJANGO_HTTPS", default=True)
SECURE_SSL_REDIRECT = https_only
SESSION_COOKIE_SECURE = https_only
CSRF_COOKIE_SECURE = https_only
# Neither cookie is readable by page scripts (the admin posts the CSRF token from its forms) nor sent on
# cross-site requests other than top-level navigations.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Load balancers and Kubernetes probe over plain HTTP inside the network: the probes and the scrape answer there
# instead of redirecting (README, "Operating Steplens").
SECURE_REDIRECT_EXEMPT = [r"^(?:healthz|readyz|metrics)$"]
if not https_only:
    # DJANGO_HTTPS=false asks for plain HTTP: `check --deploy` would only repeat that choice (no redirect, no secure
    # cookies, and HSTS, which only an HTTPS answer can send).
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008", "security.W012", "security.W016"]
# HSTS pins browsers to HTTPS for the host (and its subdomains, or the browsers' preload list) for this long:
# opt in once every service there is HTTPS, since a browser that saw it cannot be told otherwise.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# WhiteNoise serves what `collectstatic` gathered, under hashed names (cached forever by browsers and
# proxies) and pre-compressed; a template naming a file missing from the manifest fails loudly.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
