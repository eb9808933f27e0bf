"""``python -m hal`` runs the same CLI as the ``hal`` command."""

from hal.cli import main

main()
