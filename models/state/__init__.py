"""state: per-tick count deltas, the rolling per-scope ring buffers, the known-good Bloom filter.

May import: ``models.classify`` (not needed today) and ``models.schema``.
"""
