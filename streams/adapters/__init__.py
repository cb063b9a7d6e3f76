"""adapters: the I/O side of getting a fleet's events in. The parsers themselves are pure
(models/ingest/formats); here is the HTTP webhook gateway (``repmon gateway``, docs/gateway.md):
its server and authentication (bearer token, SendGrid's signed webhooks); its dead letters are built
by ``streams.worker.wire.redacted_dlq_record``."""
