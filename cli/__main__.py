"""``python -m adapterhub.cli`` runs the ``adapterhub`` command (handy where the console script is not on PATH)."""

from .main import cli

cli(prog_name="adapterhub")
