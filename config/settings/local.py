"""Laptop and demo settings: SQLite, eager Celery, debug on."""

from config.settings.base import *  # noqa: F403
from config.settings.base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env("DJANGO_SECRET_KEY", default="steplens-local-development-key-not-for-production")
