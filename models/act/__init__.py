"""act: what the fleet is told to do about an incident (throttle and suppression policies).

Throttle (docs/throttle.md): ``throttle`` (the per-scope controller), ``throttle_config`` (its
validated TOML parameters, defaults in ``data/throttle.toml``), ``throttle_record`` (the
``repmon.throttle`` record and the per-message most-restrictive lookup).

May import: ``models.detect`` and everything below it.
"""
