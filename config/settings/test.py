"""Test settings: the database comes from DATABASE_URL (PostgreSQL in CI), SQLite otherwise."""

from config.settings.base import *  # noqa: F403
from config.settings.base import env

SECRET_KEY = "steplens-test-key"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests run tasks eagerly unless a test starts a real worker against CELERY_BROKER_URL.
CELERY_TASK_ALWAYS_EAGER = True
TEST_CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="")
CELERY_BROKER_URL = "memory://"
STEPLENS_LLM_RETRY_BASE_SECONDS = 0.01
STEPLENS_LLM_RETRY_MAX_SECONDS = 0.05
STEPLENS_CANCEL_POLL_SECONDS = 0.05
REDIS_URL = ""
# WhiteNoise serves the apps' static files from their folders, as in development: tests run no collectstatic.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
