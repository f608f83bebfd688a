"""``python -m veilface`` runs the command line."""

from veilface.cli import run

run()
