"""``python -m polekit`` runs the ``polekit`` command."""

from polekit.cli import main

main()
