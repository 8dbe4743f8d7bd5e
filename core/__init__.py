"""The shared kernel every app may use: the one application error type and the API's error shape, rate limits,
validated input, request-size caps, the Redis client and cache, the embedded Redis of the demo and tests, the largest
amount of money a bid may hold, and the admin's base classes for big and read-only tables.

It imports no app: config/ holds only settings, URLs, the Celery app and the WSGI/ASGI entry points."""
