"""The ``repmon`` console script (typer).

Each verb lives in its own module that exposes ``register(app)``; this file only assembles them.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="repmon",
    help="Streaming reputation monitor for email senders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Modules that add verbs to the app, in help order.
VERB_MODULES = (
    "streams.cli.run",  # repmon run: local broker + worker + simulator + live summary
    "streams.cli.worker",  # repmon worker
    "streams.cli.simulate",  # repmon simulate
    "streams.cli.classify",  # repmon classify
    "streams.cli.replay",  # repmon replay
    "streams.cli.ingest",  # repmon ingest
    "streams.cli.gateway",  # repmon gateway
    "streams.cli.dlq",  # repmon dlq
    "streams.cli.suppressions",  # repmon suppressions export
)

for _name in VERB_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
