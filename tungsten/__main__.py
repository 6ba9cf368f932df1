"""``python -m tungsten`` runs the ``tungsten`` command."""

from tungsten.cli.main import main

main()
