"""ingest: canonical events -> validated, classified numpy columns -> per-tick ``Deltas``.

``pipeline`` (the Pipeline: decoding, feeding, flushing), ``validate`` (the rules of
docs/events.md, written once for the per-event and the batched path), ``scopes`` (interned
scopes and scope combinations), ``replies`` (classification caches, reply texts) and
``aggregate`` (pending columns -> Deltas). The provider and MX-operator table
(``data/providers.toml``) lives here too.
May import: ``models.state`` (Deltas, the known-good Bloom filter), ``models.classify``,
``models.schema``.
"""
