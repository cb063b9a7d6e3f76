"""Two naive detectors the evaluation compares the Monitor with (docs/evaluation.md).

``StaticThreshold``  the classic dashboard alert: per provider, over a sliding 15 min window,
                     bounce rate (bounced + rejected over attempts) > 5 % or complaint rate
                     (complaints per delivered) > 0.3 %. Small volume guards (200 attempts,
                     1,000 deliveries in the window) keep it from firing on single messages.
                     An alarm is open while the condition holds; every re-opening counts.
``CountTriggers``    KumoMTA Traffic Shaping Automation style: regexes on the SMTP reply text,
                     counted per (site, sending IP) in a sliding hour; ``threshold`` (default 10)
                     matches open an alarm that lasts ``duration_s`` (KumoMTA's defaults: 90 min
                     for the default rules, 2 h for Yahoo TSS04) and can trigger again afterwards.
                     Regexes: KumoMTA's shipped ``shaping.toml`` automation rules (Yahoo TS04/TSS04,
                     "temporarily deferred"/"permanently deferred" from Yahoo, Google's
                     "temporarily rate limited due to IP reputation", Microsoft's "messages from
                     <ip> weren't sent" block list reply and "Server busy ... from") plus, in the
                     same spirit, Gmail's unauthenticated-mail rule from the commented example.
                     The IP address may be in brackets (optional ``[`` ``]``): Microsoft writes
                     ``messages from [192.0.2.1] weren't sent``, which the shipped regex misses.

Both emit ``BaselineAlarm`` records; they do not know incident types, so the evaluation matches
them type-agnostically (any alarm on a ground-truth scope counts), which favours them.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.ingest.pipeline import parse_timestamp
from models.ingest.providers import ProviderResolver
from models.state.deltas import Deltas
from models.state.rolling import R, RollingConfig, RollingStore


@dataclass(frozen=True, slots=True)
class BaselineAlarm:
    detector: str
    rule: str
    scopes: tuple[str, ...]  #: scopes the alarm is about (any of them may match a truth)
    opened_at: float


class StaticThreshold:
    """Per-provider 15 min bounce-rate / complaint-rate thresholds on Deltas."""

    def __init__(
        self,
        bounce_rate: float = 0.05,
        complaint_rate: float = 0.003,
        window_s: int = 900,
        min_attempts: int = 200,
        min_delivered: int = 1000,
    ) -> None:
        self.bounce_rate = bounce_rate
        self.complaint_rate = complaint_rate
        self.k = window_s // 60
        self.min_attempts = min_attempts
        self.min_delivered = min_delivered
        self.store = RollingStore(
            RollingConfig(fine_s=60, n_fine=self.k + 1, coarse_s=3600, n_coarse=2, lateness_s=600.0)
        )
        self._open: set[tuple[str, str]] = set()
        self.alarms: list[BaselineAlarm] = []

    def add(self, deltas: Deltas) -> None:
        keep = [i for i, s in enumerate(deltas.scopes) if s.startswith("provider:")]
        if not keep:
            self.store.advance_to(deltas.watermark)
            return
        mask = np.isin(deltas.scope_idx, keep)
        sub = Deltas(
            scopes=deltas.scopes,
            scope_idx=deltas.scope_idx[mask],
            bucket_start=deltas.bucket_start[mask],
            counts=deltas.counts[mask],
            watermark=deltas.watermark,
        )
        self.store.add(sub)

    def advance(self, watermark: float) -> list[BaselineAlarm]:
        st = self.store
        st.advance_to(watermark)
        rows = st.active_rows()
        out: list[BaselineAlarm] = []
        if rows.size == 0:
            return out
        # the newest bucket is partial: use the k complete buckets before it plus it
        s = st.fine_sum(self.k, rows)
        att = s[:, R["attempts"]]
        dlv = s[:, R["delivered"]]
        with np.errstate(divide="ignore", invalid="ignore"):
            bounce = np.where(att > 0, s[:, R["failed"]] / np.maximum(att, 1), 0.0)
            compl = np.where(dlv > 0, s[:, R["complained"]] / np.maximum(dlv, 1), 0.0)
        conds = {
            "bounce_rate": (att >= self.min_attempts) & (bounce > self.bounce_rate),
            "complaint_rate": (dlv >= self.min_delivered) & (compl > self.complaint_rate),
        }
        for rule, cond in conds.items():
            for p, hit in enumerate(cond.tolist()):
                name = st.names[int(rows[p])]
                if name is None:
                    continue
                key = (rule, name)
                if hit and key not in self._open:
                    self._open.add(key)
                    a = BaselineAlarm("static", rule, (name,), st.watermark)
                    self.alarms.append(a)
                    out.append(a)
                elif not hit:
                    self._open.discard(key)
        return out


#: (rule name, regex, alarm duration in seconds), KumoMTA shaping.toml style.
KUMO_RULES: Final[tuple[tuple[str, str, float], ...]] = (
    ("yahoo_tss04", r"\[TS?S04\]", 7200.0),
    ("yahoo_temp_deferred", r"Messages from \[?\d+\.\d+\.\d+\.\d+\]? temporarily deferred", 5400.0),
    (
        "yahoo_perm_deferred",
        r"All messages from \[?\d+\.\d+\.\d+\.\d+\]? will be permanently deferred",
        5400.0,
    ),
    ("google_ip_reputation", r"has been temporarily rate limited due to IP reputation", 5400.0),
    (
        "microsoft_blocklist",
        r"Unfortunately, messages from \[?\d+\.\d+\.\d+\.\d+\]? weren.t sent",
        5400.0,
    ),
    ("microsoft_server_busy", r"Server busy\. Please try again later from", 5400.0),
    ("gmail_unauthenticated", r"does not have authentication information", 10800.0),
)


class CountTriggers:
    """KumoMTA-style "N matching replies per hour per site" triggers, on canonical events."""

    def __init__(
        self,
        threshold: int = 10,
        window_s: float = 3600.0,
        rules: tuple[tuple[str, str, float], ...] = KUMO_RULES,
        resolver: ProviderResolver | None = None,
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.rules = [(name, re.compile(rx), dur) for name, rx, dur in rules]
        self.resolver = resolver or ProviderResolver()
        self._hits: dict[tuple[str, str, str], deque[float]] = {}
        self._until: dict[tuple[str, str, str], float] = {}
        self._site_cache: dict[tuple[str, str], str] = {}
        self.alarms: list[BaselineAlarm] = []

    def _site(self, ev: Mapping[str, Any]) -> str:
        dom = ev.get("recipient_domain")
        if not dom:
            dom = str(ev.get("recipient", "")).rpartition("@")[2]
        key = (str(dom).lower(), str(ev.get("mx_host") or "").lower())
        site = self._site_cache.get(key)
        if site is None:
            site = self.resolver.resolve(key[0], key[1])[0]
            if len(self._site_cache) > 200_000:
                self._site_cache.clear()
            self._site_cache[key] = site
        return site

    def feed(self, ev: Mapping[str, Any]) -> BaselineAlarm | None:
        if ev.get("event") not in ("deferred", "bounced", "rejected"):
            return None
        text = ev.get("response")
        if not isinstance(text, str) or not text:
            return None
        for name, rx, dur in self.rules:
            if rx.search(text) is None:
                continue
            t = parse_timestamp(ev["timestamp"])  # the event contract: epoch or RFC 3339
            site = self._site(ev)
            ip = str(ev.get("sending_ip") or "")
            key = (name, site, ip)
            q = self._hits.get(key)
            if q is None:
                q = self._hits[key] = deque()
            q.append(t)
            while q and q[0] < t - self.window_s:
                q.popleft()
            if len(q) >= self.threshold and t >= self._until.get(key, 0.0):
                self._until[key] = t + dur
                q.clear()
                scopes = (f"provider:{site}",) + ((f"ip:{ip}",) if ip else ())
                a = BaselineAlarm("kumo", name, scopes, t)
                self.alarms.append(a)
                return a
            return None
        return None
