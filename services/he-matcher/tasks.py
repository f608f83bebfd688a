"""Entry point of the he-matcher worker: ``celery -A tasks worker -Q match`` from this folder.

The worker is :mod:`veilface.workers.matcher` (``celery -A veilface.workers.matcher ...``).
"""

from veilface.workers.matcher import app

__all__ = ["app"]
