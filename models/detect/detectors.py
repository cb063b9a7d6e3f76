"""Incident detectors: one vectorised test per incident type over all scopes of allowed kinds.

Each detector watches one *signal* (a ROLL_COLUMNS count, e.g. ``block``) over a *denominator*
(``attempts`` or ``delivered``) in the newest fine buckets of every scope, and compares the rate
with the scope's own baseline (an EWMA of the buckets older than the fine ring, shrunk toward its
parent's: the provider of a domain, else all traffic; see ``models/detect/monitor.py``).

A window *opens* an incident when all of these hold (docs/incidents.md lists the defaults):

* volume guards: ``volume >= min_den`` and ``count >= min_num``;
* effect size: ``rate >= min_ratio * baseline`` and ``rate - baseline >= min_abs`` (and, for
  complaints, ``rate >= abs_rate``: the provider limit);
* statistics: a one-sided z-score ``z >= z_open`` of the count against the baseline with an
  overdispersed (beta-binomial / negative-binomial-like) variance ``n p (1 - p) + (cv n p)^2``:
  binomial noise for small counts, plus a relative rate wobble ``cv`` so huge scopes do not alarm
  on tiny but "significant" drifts;
* known-good share guards for the bounce detectors (``user_unknown_known_good / user_unknown``).

An open incident stays *hot* while a relaxed test holds (``z >= z_close``, half the effect size,
a quarter of the volume) and closes after ``close_quiet_s`` of event time without being hot:
that is the hysteresis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.state.rolling import R

F64 = NDArray[np.float64]
B = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Parameters of one incident type (defaults documented in docs/incidents.md)."""

    type: str
    kinds: tuple[str, ...]  #: scope kinds watched, most specific/preferred first
    num: str  #: ROLL_COLUMNS signal
    den: str = "attempts"  #: ROLL_COLUMNS denominator
    windows: tuple[int, ...] = (1, 2)  #: windows tested, in fine buckets (the newest is partial)
    prior: float = 0.01  #: global prior rate (used until baselines exist)
    min_den: int = 50
    min_num: int = 10
    min_ratio: float = 3.0
    min_abs: float = 0.05
    abs_rate: float = 0.0  #: absolute floor on the rate (provider limit), 0 = none
    z_open: float = 5.0
    z_close: float = 2.0
    cv: float = 0.3  #: relative variation of the true rate between windows (overdispersion)
    #: >0: the signal lags its denominator by up to this many hours (complaints arrive tens of
    #: minutes to hours after the delivery), so the denominator of a window is its *exposure*:
    #: the largest denominator count of a window of the same span ending within that lag (the
    #: fine ring at bucket resolution, then whole coarse hours pro rata). Whatever the delay
    #: distribution, the complaints counted now come from a mixture of such windows, so under
    #: the baseline rate they expect at most ``rate x exposure``: a blast's complaint wave,
    #: arriving when the campaign has stopped sending, is compared with the blast
    den_coarse_h: int = 0
    #: (kind, min_den, min_abs, abs_rate) per scope kind, e.g. stricter for single domains that
    #: greylist; abs_rate < 0 keeps the spec's
    kind_overrides: tuple[tuple[str, int, float, float], ...] = ()
    #: provider scopes: scale the baseline by how much *all other providers* currently exceed
    #: theirs (1..5x), so a traffic-mix effect seen everywhere (complaints after a marketing
    #: blast) is not a spike at one provider
    peer_adjust: bool = False
    #: floor of the baseline rate (rare signals: a quiet night must not make 5 complaints a spike)
    min_baseline: float = 0.0
    #: a lagging signal (complaints become known tens of minutes to hours after the delivery):
    #: a scope's own history under-counts it until its reports have arrived, so the own history
    #: may raise the scope's baseline above its parent's but never lower it below
    parent_floor: bool = False
    #: relative spread of the true rate between the scopes that share a parent (complaints:
    #: transactional and marketing mail differ several-fold). A scope whose baseline comes
    #: mostly from its parent (a young scope: weight ``w = prior_strength / (own volume +
    #: prior_strength)``) knows its own rate only to within it: ``cv^2 + w spread^2`` replaces
    #: ``cv^2`` in the z-score. It matters for large expected counts only (the Poisson tail binds
    #: for small ones), i.e. a big campaign whose ordinary rate is a multiple of its provider's
    spread: float = 0.0
    close_quiet_s: float = 900.0
    critical_rate: float = 0.5  #: rate at or above which the severity is "critical"
    known_good_min: float = 0.0  #: require user_unknown_known_good / user_unknown >= this
    known_good_max: float = 1.0  #: require user_unknown_known_good / user_unknown <= this
    #: incident types that explain this one: no incident opens on a scope (or a related scope)
    #: of an open incident of one of these types (rate limits during an outage)
    explained_by: tuple[str, ...] = ()
    #: the cause is on the sending side and shows at every provider (a sender's broken DNS
    #: authentication): an open incident of this type explains dependent candidates at other
    #: providers too (``Monitor._explained``), where a provider-side cause (an outage) does not
    sender_side: bool = False

    @property
    def num_idx(self) -> int:
        return R[self.num]

    @property
    def den_idx(self) -> int:
        return R[self.den]


DEFAULT_DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        "provider_outage",
        kinds=("provider", "mx", "domain"),
        num="transient",
        prior=0.02,
        min_den=60,
        min_num=25,
        min_ratio=3.0,
        min_abs=0.15,
        critical_rate=0.5,
        kind_overrides=(("domain", 150, 0.35, -1.0),),
    ),
    DetectorSpec(
        "rate_limited",
        kinds=("provider", "mx", "ip", "pool", "domain", "ip|provider", "pool|provider"),
        num="throttle",
        prior=0.005,
        min_den=60,
        min_num=15,
        min_ratio=3.0,
        min_abs=0.05,
        critical_rate=0.3,
        explained_by=("provider_outage",),
    ),
    DetectorSpec(
        "auth_failure",
        kinds=("sender", "sender|provider"),
        num="auth_failure",
        prior=0.001,
        min_den=50,
        min_num=10,
        min_ratio=5.0,
        min_abs=0.05,
        critical_rate=0.3,
        sender_side=True,
    ),
    DetectorSpec(
        "block",
        kinds=("ip", "pool", "sender", "ip|provider", "pool|provider", "sender|provider"),
        num="block",
        prior=0.005,
        min_den=20,
        min_num=8,
        min_ratio=3.0,
        min_abs=0.05,
        critical_rate=0.3,
        explained_by=("provider_outage", "auth_failure"),
    ),
    DetectorSpec(
        "false_hard_bounces",
        kinds=("mx", "domain"),
        num="user_unknown_known_good",
        windows=(1, 2, 3),
        prior=0.001,
        min_den=30,
        min_num=8,
        min_ratio=5.0,
        min_abs=0.02,
        critical_rate=0.1,
        known_good_min=0.5,
        close_quiet_s=1800.0,
    ),
    DetectorSpec(
        "hard_bounce_spike",
        kinds=("campaign", "tenant"),
        num="user_unknown",
        windows=(1, 2, 3),
        prior=0.01,
        min_den=100,
        min_num=20,
        min_ratio=3.0,
        min_abs=0.05,
        critical_rate=0.2,
        known_good_max=0.3,
        explained_by=("false_hard_bounces",),
    ),
    DetectorSpec(
        "complaint_spike",
        kinds=("campaign", "tenant", "provider", "campaign|provider", "tenant|provider"),
        num="complained",
        den="delivered",
        den_coarse_h=3,
        parent_floor=True,
        spread=1.0,
        peer_adjust=True,
        min_baseline=0.0002,
        windows=(3, 6, 12),
        prior=0.0005,
        min_den=500,
        min_num=5,
        min_ratio=3.0,
        min_abs=0.001,
        abs_rate=0.001,
        z_open=4.0,
        critical_rate=0.003,
        close_quiet_s=1800.0,
    ),
)


def zscore(x: F64, n: F64, p0: F64, cv: float | F64) -> F64:
    """One-sided z of ``x`` successes in ``n`` trials against rate ``p0`` (overdispersed).

    The smaller of two scores: the normal approximation with the overdispersed variance (it
    binds for large counts) and the Poisson upper tail ``P(X >= x | mu)`` as a z by the
    Wilson-Hilferty cube-root approximation (it binds for small counts, where the normal
    approximation is far too optimistic: 5 complaints against 0.64 expected is z = 4.7 by the
    normal but a tail of 4e-4, z = 3.2, by Poisson). The Poisson tail is at least as wide as
    the binomial one, so the test stays conservative at high rates too.
    """
    p = np.clip(p0, 1e-6, 1 - 1e-6)
    mu = n * p
    var = mu * (1 - p) + (cv * mu) ** 2
    z_norm: F64 = (x - mu - 0.5) / np.sqrt(np.maximum(var, 0.25))
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.maximum(x, 1.0)
        z_pois = 3.0 * np.sqrt(xs) * (1.0 - 1.0 / (9.0 * xs) - np.cbrt(mu / xs))
    # the tail only matters above the mean (where both are > 0); below it z_norm is kept, so z
    # stays increasing in x
    out: F64 = np.where(x > mu + 0.5, np.minimum(z_norm, z_pois), z_norm)
    return out


@dataclass(slots=True)
class WindowTest:
    """Per-row outcome of one detector on one window."""

    x: F64
    n: F64
    p0: F64
    rate: F64
    z: F64
    opens: B
    hot: B


def run_window(
    spec: DetectorSpec,
    x: F64,
    n: F64,
    p0: F64,
    uu: F64 | None = None,
    kg: F64 | None = None,
    min_den: F64 | float | None = None,
    min_abs: F64 | float | None = None,
    abs_rate: F64 | float | None = None,
    cv: F64 | None = None,
) -> WindowTest:
    """Apply the open and hot tests of ``spec`` to counts ``x`` over volumes ``n`` per row.

    ``min_den``/``min_abs``/``abs_rate`` override the spec's guards (per row, for
    ``kind_overrides``); ``cv`` the spec's overdispersion (per row, for ``spread``).
    """
    md = spec.min_den if min_den is None else min_den
    ma = spec.min_abs if min_abs is None else min_abs
    ar = spec.abs_rate if abs_rate is None else abs_rate
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, x / np.maximum(n, 1e-9), 0.0)
        z = zscore(x, n, p0, spec.cv if cv is None else cv)
        excess = rate - p0
        opens = (
            (n >= md)
            & (x >= spec.min_num)
            & (z >= spec.z_open)
            & (rate >= spec.min_ratio * p0)
            & (excess >= ma)
            & (rate >= ar)
        )
        hot = (
            (n >= np.maximum(1.0, np.asarray(md) / 4))
            & (z >= spec.z_close)
            & (excess >= np.asarray(ma) / 2)
            & (rate >= np.asarray(ar) / 2)
        )
        if (
            uu is not None
            and kg is not None
            and (spec.known_good_min > 0 or spec.known_good_max < 1)
        ):
            share = np.where(uu > 0, kg / np.maximum(uu, 1), 0.0)
            guard = (share >= spec.known_good_min) & (share <= spec.known_good_max)
            opens &= guard
            hot &= guard | (uu == 0)
    return WindowTest(x=x, n=n, p0=p0, rate=rate, z=z, opens=opens, hot=hot)


def shrunk_rate(num: F64, den: F64, toward: F64 | float, strength: float) -> F64:
    """Beta-binomial posterior mean: ``(num + s * toward) / (den + s)``."""
    out: F64 = (num + strength * np.asarray(toward, dtype=np.float64)) / (den + strength)
    return out
