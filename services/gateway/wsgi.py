"""Gateway entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The gateway is the only service that loads the secret key (``secret.ctx``); it uses it
to decrypt score vectors and nothing else. A gateway that cannot start (no key set, no
schema) says why in one line and exits with status 3, which stops gunicorn.
"""

import logging
import sys

from veilface import errors
from veilface.api import create_app

try:
    app = create_app()
except errors.VeilfaceError as exc:
    logging.getLogger("veilface.gateway").critical("refusing to start: %s", exc.message)
    sys.exit(3)
