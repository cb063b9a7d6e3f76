"""adapters: the I/O side of getting a fleet's events in. The parsers themselves are pure
(models/ingest/formats); here is the HTTP webhook gateway (``repmon gateway``, docs/gateway.md):
its server, authentication (bearer token, SendGrid's signed webhooks) and dead-letter redaction."""
