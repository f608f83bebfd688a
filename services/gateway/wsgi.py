"""Gateway entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The gateway is the only service that loads the secret key (``secret.ctx``); it uses it
to decrypt score vectors and nothing else.
"""

from veilface.api import create_app

app = create_app()
