"""Per-scope counts and rates for ``/status``, the live summary and Prometheus.

``scope_table`` reads the rolling store: the top scopes per kind by 1 h volume with their
15 min, 1 h and 24 h counts and the documented rates (docs/metrics.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.schema import ALL_SCOPE_KINDS
from models.state.rolling import COARSE_COLUMNS, ROLL_COLUMNS, R, RollingStore

_KIND_CODE = {k: i for i, k in enumerate(ALL_SCOPE_KINDS)}


def _rates(c: NDArray[np.int64]) -> dict[str, float | None]:
    """Documented rates of one ROLL_COLUMNS count vector."""
    att = int(c[R["attempts"]])
    dlv = int(c[R["delivered"]])

    def per(x: str, d: int) -> float | None:
        return round(int(c[R[x]]) / d, 6) if d > 0 else None

    out: dict[str, float | None] = {
        "delivery": per("delivered", att),
        "deferral": per("deferred", att),
        "bounce": per("failed", att),
        "hard_bounce": per("hard", att),
        "block": per("block", att),
        "throttle": per("throttle", att),
        "transient": per("transient", att),
        "soft": per("soft", att),
        "config": per("config", att),
        "complaint": per("complained", dlv),
        "auth_failure": per("auth_failure", att),
        "user_unknown": per("user_unknown", att),
        "user_unknown_known_good": per("user_unknown_known_good", att),
    }
    return out


def scope_table(st: RollingStore, top: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Top scopes per kind by 1 h volume with 15 min / 1 h / 24 h counts and rates."""
    fine_s = st.config.fine_s
    k15 = max(1, math.ceil(900 / fine_s))
    k60 = max(1, math.ceil(3600 / fine_s))
    k24 = max(1, math.ceil(86400 / st.config.coarse_s))
    rows = st.active_rows()
    out: dict[str, list[dict[str, Any]]] = {}
    if rows.size == 0:
        for kind in ALL_SCOPE_KINDS:
            out[kind] = []
        return out
    s15 = st.fine_sum(k15, rows)
    s60 = st.fine_sum(k60, rows)
    c24 = st.coarse_sum(k24, rows)
    kinds = st.kind[rows]
    for kind in ALL_SCOPE_KINDS:
        pos = np.flatnonzero(kinds == _KIND_CODE[kind])
        vol = s60[pos, R["attempts"]]
        order = pos[np.argsort(-vol, kind="stable")][:top]
        items = []
        for p in order.tolist():
            name = st.names[int(rows[p])]
            c24p = c24[p]
            items.append(
                {
                    "scope": name,
                    "m15": {
                        "counts": {c: int(s15[p, i]) for i, c in enumerate(ROLL_COLUMNS)},
                        "rates": _rates(s15[p]),
                    },
                    "h1": {
                        "counts": {c: int(s60[p, i]) for i, c in enumerate(ROLL_COLUMNS)},
                        "rates": _rates(s60[p]),
                    },
                    "h24": {c: int(c24p[i]) for i, c in enumerate(COARSE_COLUMNS)},
                }
            )
        out[kind] = items
    return out
