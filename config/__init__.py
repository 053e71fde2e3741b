"""The Django project (the design card's `platform/`).

It is named `config` because a top-level package called `platform` would shadow the
standard library module that redis, celery and uuid import.
"""

from config.celery import app as celery_app

__all__ = ["celery_app"]
