"""Entry point of the embedder worker: ``celery -A tasks worker -Q embed`` from this folder.

The worker is :mod:`veilface.workers.embedder` (``celery -A veilface.workers.embedder ...``).
"""

from veilface.workers.embedder import app

__all__ = ["app"]
