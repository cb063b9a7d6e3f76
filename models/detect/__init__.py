"""detect: statistical detectors over the rolling state, incidents, and the baselines they are
evaluated against.

May import: ``models.ingest`` (the provider table, for parent scopes), ``models.state``,
``models.classify``, ``models.schema``.
"""
