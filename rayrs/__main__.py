"""``python -m rayrs`` runs the CLI (the same as the ``rayrs`` command)."""

from rayrs.cli import app

app()
