"""ingest: canonical events -> validated, classified numpy columns -> per-tick ``Deltas``.

The provider and MX-operator table (``data/providers.toml``) lives here too.
May import: ``models.state`` (Deltas, the known-good Bloom filter), ``models.classify``,
``models.schema``.
"""
