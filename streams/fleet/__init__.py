"""fleet: the client library the sending fleet imports to follow repmon's decisions.

``client``: :class:`ThrottleClient` follows the compacted ``repmon.throttle`` topic and answers
"how fast may I send this message" (the most restrictive decision over the message's scopes);
:class:`RateLimiter` keeps a token bucket per throttled scope at its normal rate x the factor
(docs/throttle.md, "Signals").

``suppressions``: :class:`SuppressionClient` follows the compacted ``repmon.suppressions`` topic
and answers "may I send to this address" (hashed locally; docs/suppression.md, "Fleet client").

``follower``: the Kafka side both share (a daemon thread reading a compacted topic from its
beginning, catch-up, health, reconnection).
"""

from streams.fleet.client import DEFAULT_TOPIC, RateLimiter, ThrottleClient, TokenBucket
from streams.fleet.follower import CompactedTopicFollower
from streams.fleet.suppressions import DEFAULT_TOPIC as SUPPRESSIONS_TOPIC
from streams.fleet.suppressions import (
    SuppressionClient,
    SuppressionEntry,
    SuppressionTable,
)

__all__ = [
    "DEFAULT_TOPIC",
    "SUPPRESSIONS_TOPIC",
    "CompactedTopicFollower",
    "RateLimiter",
    "SuppressionClient",
    "SuppressionEntry",
    "SuppressionTable",
    "ThrottleClient",
    "TokenBucket",
]
