"""``repmon worker``: run the Faust worker (configuration: REPMON_* environment variables)."""

from __future__ import annotations

import logging
import sys

import typer

from streams.worker.settings import Settings


def run_worker(settings: Settings) -> None:
    import faust

    from streams.worker.app import create_app
    from streams.worker.topics import ensure_topics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    app, _state = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
    )
    # faust.Worker parses no arguments of ours: hand it a clean argv.
    sys.argv = [sys.argv[0]]
    worker.execute_from_commandline()


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        bootstrap: str = typer.Option(
            None, "--bootstrap", help="Kafka bootstrap servers (default: REPMON_KAFKA_BOOTSTRAP)"
        ),
        web_port: int = typer.Option(None, "--web-port", help="HTTP port (default: 6066)"),
        partitions: int = typer.Option(
            None, "--partitions", help="partitions of the topics repmon creates (default 6)"
        ),
    ) -> None:
        """Run the Faust worker: ingest, classify, roll up, detect; serve /metrics and /status."""
        overrides: dict[str, object] = {}
        if bootstrap:
            overrides["kafka_bootstrap"] = bootstrap
        if web_port:
            overrides["web_port"] = web_port
        if partitions:
            overrides["topic_partitions"] = partitions
        settings = Settings(**overrides)  # type: ignore[arg-type]
        logging.basicConfig(level=settings.log_level.upper())
        run_worker(settings)
