"""act: what the fleet is told to do about an incident (throttle and suppression policies).

Empty for now. May import: ``models.detect`` and everything below it.
"""
