"""``python -m streams.cli``: the same as the ``repmon`` console script."""

from streams.cli.main import main

main()
