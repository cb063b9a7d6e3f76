"""fleet: the client library the sending fleet imports to follow repmon's decisions.

``client``: :class:`ThrottleClient` follows the compacted ``repmon.throttle`` topic and answers
"how fast may I send this message" (the most restrictive decision over the message's scopes);
:class:`RateLimiter` keeps a token bucket per throttled scope at its normal rate x the factor
(docs/throttle.md, "Signals").
"""

from streams.fleet.client import DEFAULT_TOPIC, RateLimiter, ThrottleClient, TokenBucket

__all__ = ["DEFAULT_TOPIC", "RateLimiter", "ThrottleClient", "TokenBucket"]
