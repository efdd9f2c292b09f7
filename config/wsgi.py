import os

from django.core.wsgi import get_wsgi_application

from config.telemetry import telemetry_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
telemetry_setup()  # before the handler is built: Django instrumentation adds a middleware
application = get_wsgi_application()
