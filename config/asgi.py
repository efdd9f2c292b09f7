import os

from django.core.asgi import get_asgi_application

from config.telemetry import telemetry_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
telemetry_setup()  # before the handler is built: Django instrumentation adds a middleware
application = get_asgi_application()
