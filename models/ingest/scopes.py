"""Interning of scopes and scope combinations for the ingest Pipeline.

An event's scope fields (recipient domain, MX host, IP, pool, sender, tenant, campaign) form a
*combination*. Each distinct combination is checked once (:func:`validate.check_combo`) and
mapped to an id whose row in :meth:`ScopeTable.combo_array` holds the ids of its eight scopes
(``domain:``, ``provider:``, ``mx:``, ``ip:``, ...; -1 where the field is absent or blank), so that an
event costs one dict lookup and no string operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.ingest.providers import ProviderResolver
from models.ingest.validate import DomainCache, Rejection, check_combo
from models.schema import SCOPE_KINDS

N_DIMS = len(SCOPE_KINDS)


class ScopeTable:
    """Scope names and combinations, interned; bounded by :meth:`bound` between ticks."""

    def __init__(self, resolver: ProviderResolver) -> None:
        self.resolver = resolver
        self.domain = DomainCache()
        self.ids: dict[str, int] = {}
        #: scope id -> scope name
        self.names: list[str] = []
        #: raw combination -> combination id, or why it is rejected
        self.combos: dict[tuple[Any, ...], int | Rejection] = {}
        #: combination id -> its scope ids per dimension
        self.combo_scopes: list[tuple[int, ...]] = []
        #: combination id -> (provider, operator)
        self.combo_provider: list[tuple[str, str]] = []
        #: per scope dimension: raw value -> scope id (skips formatting the scope name)
        self._dim_ids: list[dict[str, int]] = [{} for _ in SCOPE_KINDS]
        #: (recipient_domain, mx_host) -> (scope ids of domain/provider/mx, provider, operator)
        self._heads: dict[tuple[str | None, str | None], tuple[tuple[int, ...], str, str]] = {}
        #: (ip, pool, sender, tenant, campaign) -> their scope ids
        self._tails: dict[tuple[str | None, ...], tuple[int, ...]] = {}
        self._combo_arr: NDArray[np.int64] = np.zeros((0, N_DIMS), dtype=np.int64)
        self._combo_len = 0  # rows of _combo_arr in use

    def resolve(self, key: tuple[Any, ...]) -> int | Rejection:
        """Check a new combination and give it an id (or cache its rejection); ``key`` as
        gathered, its cache entry too."""
        checked = check_combo(key, self.domain)
        res: int | Rejection
        if isinstance(checked, Rejection):
            res = checked
        else:
            # blank values are None from here on: no scope, no empty scope name
            clean, dom, sdom = checked
            rdomain, mx_host, ip, pool, sender, tenant, campaign = clean
            # scope ids of the (domain, MX) part and of the sending part, each cached: a new
            # combination of known parts costs two lookups. Ids are given in dimension order,
            # only to valid combinations, as one pass over the eight dimensions would.
            head = self._heads.get((rdomain, mx_host))
            if head is None:
                mx = (mx_host or "").strip().lower().rstrip(".")
                provider, operator = self.resolver.resolve(dom, mx)
                head = (self._scope_sids((dom, provider, operator), 0), provider, operator)
                self._heads[(rdomain, mx_host)] = head
            tail_key = (ip, pool, sender, tenant, campaign)
            tail = self._tails.get(tail_key)
            if tail is None:
                tail = self._scope_sids((ip, pool, sdom, tenant, campaign), 3)
                self._tails[tail_key] = tail
            res = len(self.combo_scopes)
            self.combo_scopes.append(head[0] + tail)
            self.combo_provider.append((head[1], head[2]))
        self.combos[key] = res
        return res

    def _scope_sids(self, values: tuple[str | None, ...], first_dim: int) -> tuple[int, ...]:
        """Scope ids of consecutive dimensions from ``first_dim`` (-1 for an empty value)."""
        out = []
        for dim, v in enumerate(values, first_dim):
            if not v:
                out.append(-1)
                continue
            ids = self._dim_ids[dim]
            sid = ids.get(v)
            if sid is None:
                name = f"{SCOPE_KINDS[dim]}:{v.strip()}"
                sid = self.ids.get(name)
                if sid is None:
                    sid = len(self.names)
                    self.ids[name] = sid
                    self.names.append(name)
                ids[v] = sid
            out.append(sid)
        return tuple(out)

    def combo_array(self) -> NDArray[np.int64]:
        """The combo -> scope ids table as an array, extended with the combos added since."""
        have, need = self._combo_len, len(self.combo_scopes)
        if have < need:
            buf = self._combo_arr
            if need > buf.shape[0]:  # grow geometrically: appending stays amortised O(1)
                buf = np.empty((max(need, 2 * buf.shape[0], 1024), N_DIMS), dtype=np.int64)
                buf[:have] = self._combo_arr[:have]
                self._combo_arr = buf
            buf[have:need] = np.asarray(self.combo_scopes[have:], dtype=np.int64)
            self._combo_len = need
        return self._combo_arr[:need]

    def bound(self) -> None:
        """Forget everything when the tables grow too large; safe only between ticks."""
        if len(self.names) > 1_000_000 or len(self.combo_scopes) > 500_000:
            self.ids.clear()
            self.names.clear()
            self.combos.clear()
            self.combo_scopes.clear()
            self.combo_provider.clear()
            for ids in self._dim_ids:
                ids.clear()
            self._heads.clear()
            self._tails.clear()
            self._combo_arr = np.zeros((0, N_DIMS), dtype=np.int64)
            self._combo_len = 0
