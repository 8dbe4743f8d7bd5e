"""The WSGI application (gunicorn: config/gunicorn.conf.py; runserver: WSGI_APPLICATION).

Requests from cars' agents (/api/v1/agent/: heartbeats above all, nearly all of a fleet's requests) go through
Django with only the middleware they need (AGENT_MIDDLEWARE: security headers and redirects, allowed hosts): they
carry no cookie, session, CSRF token or user, and answer JSON, so the rest of MIDDLEWARE would cost each of them
about 45 µs for nothing (bench/heartbeats.py). Every other request gets the whole MIDDLEWARE.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

site = get_wsgi_application()


def _agent_handler():
    # A handler reads settings.MIDDLEWARE once, when it is made: made here with the agent's list, before any request.
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    middleware, settings.MIDDLEWARE = settings.MIDDLEWARE, settings.AGENT_MIDDLEWARE
    try:
        return WSGIHandler()
    finally:
        settings.MIDDLEWARE = middleware


agent = _agent_handler()
AGENT_PREFIX = "/api/v1/agent/"


def application(environ, start_response):
    handler = agent if environ.get("PATH_INFO", "").startswith(AGENT_PREFIX) else site
    return handler(environ, start_response)
