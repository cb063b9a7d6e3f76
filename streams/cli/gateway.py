"""``repmon gateway``: the HTTP receiver of webhooks (docs/gateway.md).

    repmon gateway                                    # 127.0.0.1:6067
    REPMON_GATEWAY_TOKEN=... repmon gateway --host 0.0.0.0 --config parsers.toml

``POST /ingest/ses`` (Amazon SES through SNS, or raw), ``/ingest/sendgrid`` (SendGrid Event
Webhook, signed or with the token), ``/ingest/kumomta`` (KumoMTA log hook batches),
``/ingest/canonical`` (canonical JSON lines or arrays); ``/livez``, ``/readyz``, ``/metrics``.
Every event goes to the events topic keyed by its recipient key, every parser rejection to the
dead-letter topic, and the answer is 2xx only once the broker acknowledged all of them (503
otherwise: the sender retries). The server is ``streams/adapters/gateway_server.py``;
configuration is ``REPMON_GATEWAY_*`` and the Kafka variables the worker reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("gateway")
    def gateway(
        host: Annotated[
            str | None,
            typer.Option("--host", help="address to listen on (default REPMON_GATEWAY_HOST)"),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option("--port", help="port (default REPMON_GATEWAY_PORT, 6067)"),
        ] = None,
        bootstrap: Annotated[
            str | None,
            typer.Option("--bootstrap", help="Kafka bootstrap servers (REPMON_KAFKA_BOOTSTRAP)"),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="TOML file whose ses, sendgrid, kumomta and canonical tables configure the parsers",
            ),
        ] = None,
        max_body_bytes: Annotated[
            int | None,
            typer.Option("--max-body-bytes", help="largest body accepted (413 above; 4 MiB)"),
        ] = None,
        ack_timeout: Annotated[
            float | None,
            typer.Option("--ack-timeout", help="seconds to wait for the broker's acks (503 after)"),
        ] = None,
        allow_open: Annotated[
            bool,
            typer.Option(
                "--allow-open",
                help="listen on a non-loopback address without a token (not recommended)",
            ),
        ] = False,
    ) -> None:
        """Receive SES, SendGrid, KumoMTA and canonical webhooks; answer 2xx once Kafka acked."""
        import orjson
        from aiohttp import web
        from pydantic import ValidationError

        from models.ingest.formats import FORMATS, Parser
        from streams.adapters.gateway_server import ROUTES, GatewaySettings, is_loopback, make_app
        from streams.cli.ingest import parser_config
        from streams.worker.settings import Settings

        overrides: dict[str, object] = {}
        for name, value in (
            ("host", host),
            ("port", port),
            ("max_body_bytes", max_body_bytes),
            ("ack_timeout_s", ack_timeout),
        ):
            if value is not None:
                overrides[name] = value
        if config is not None:
            overrides["parser_config"] = str(config)
        try:
            cfg = GatewaySettings(**overrides)  # type: ignore[arg-type]
            settings = Settings(**({"kafka_bootstrap": bootstrap} if bootstrap else {}))  # type: ignore[arg-type]
        except ValidationError as exc:
            raise typer.BadParameter(str(exc)) from exc
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        for noisy in ("kafka", "aiokafka"):  # their per-connection INFO lines
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
        # a broker outage makes the Kafka clients repeat one error 10 times a second
        from streams.worker.owners import EveryThirtySeconds, install_log_filter

        install_log_filter(EveryThirtySeconds())
        token = cfg.token or settings.api_token
        if not token and not is_loopback(cfg.host) and not allow_open:
            raise typer.BadParameter(
                f"listening on {cfg.host} without a token: set REPMON_GATEWAY_TOKEN "
                "(or pass --allow-open)"
            )
        cfg_path = Path(cfg.parser_config) if cfg.parser_config else None
        if cfg_path is not None and not cfg_path.is_file():
            raise typer.BadParameter(f"no such file: {cfg_path}")
        parsers: dict[str, Parser] = {}
        for fmt in ROUTES.values():
            kw = parser_config(cfg_path, fmt)
            kw.setdefault("loads", orjson.loads)
            # a body is one record for SendGrid and SES: the body limit is the record limit
            kw.setdefault("max_record_bytes", cfg.max_body_bytes)
            try:
                parsers[fmt] = FORMATS[fmt].parser(**kw)
            except (TypeError, ValueError) as exc:
                raise typer.BadParameter(f"{fmt} parser configuration: {exc}") from exc
        try:
            app_ = make_app(cfg, settings, parsers)
        except ValueError as exc:  # a bad SendGrid key
            raise typer.BadParameter(f"REPMON_GATEWAY_SENDGRID_PUBLIC_KEY: {exc}") from exc
        log = logging.getLogger("repmon.gateway")
        log.info(
            "repmon gateway on http://%s:%d (%s), Kafka %s%s",
            cfg.host,
            cfg.port,
            ", ".join(ROUTES),
            settings.kafka_bootstrap,
            "" if token else " - no token: open to anyone who can reach it",
        )
        web.run_app(
            app_,
            host=cfg.host,
            port=cfg.port,
            access_log=None,
            print=None,
            shutdown_timeout=cfg.ack_timeout_s + 5.0,
        )
