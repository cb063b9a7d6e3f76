"""Interning of scopes and scope combinations for the ingest Pipeline.

An event's scope fields (recipient domain, MX host, IP, pool, sender, tenant, campaign) form a
*combination*. Each distinct combination is checked once (:func:`validate.check_combo`) and
mapped to an id whose row in :meth:`ScopeTable.combo_array` holds the ids of its eight scopes
(``domain:``, ``provider:``, ``mx:``, ``ip:``, ...; -1 where the field is absent or blank), so that an
event costs one dict lookup and no string operation.

Memory is bounded by ``max_scopes`` (the worker passes ``REPMON_MAX_SCOPES``, the cap of the
rolling state): when the names or the combinations outnumber it, :meth:`ScopeTable.bound` (run
between ticks) forgets them, and the combinations still in use are checked again as they come
(docs/performance.md, "Memory in the live worker"). A distinct combination of a new domain costs
about 560 bytes here (its key and the strings it holds, its row of ids, its domain's name and
lookups), so a flood of one-off domains cannot grow the tables past ``max_scopes`` of them
(plus the new ones of one tick). The ids of ``provider:`` and ``mx:`` scopes (a small vocabulary:
the providers and MX operators of the provider table) never change, so caches keyed by them (the
reply verdicts of :mod:`models.ingest.replies`) stay valid across a reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, overload

import numpy as np
from numpy.typing import NDArray

from models.ingest.providers import ProviderResolver
from models.ingest.validate import DomainCache, Rejection, check_combo
from models.schema import SCOPE_KINDS

N_DIMS = len(SCOPE_KINDS)
#: names and combinations a ScopeTable holds at most when none is given: the default cap of
#: the rolling state (models.state.rolling.RollingConfig.max_scopes, REPMON_MAX_SCOPES)
DEFAULT_MAX_SCOPES: Final[int] = 500_000
#: what a "|" inside a scope value (a campaign "Sale | Dec") is written as in the scope's name:
#: "|" separates the two halves of a combined scope (docs/events.md, "Scopes")
SCOPE_BAR: Final[str] = "\u00a6"
#: dimensions whose scope ids survive a reset (provider:, mx:): a bounded vocabulary
_STABLE_DIMS: Final[tuple[int, ...]] = (1, 2)
#: column of a combination row holding the index of its (provider, operator) pair
_PAIR: Final[int] = N_DIMS
#: (provider, operator) pairs at most (the provider table has a few dozen providers and
#: operators, so a few hundred pairs)
_PAIR_SPACE: Final[int] = 1 << 16


class _Combos:
    """The rows of the combinations: scope ids per dimension, then the (provider, operator)
    index. Rows added since the last :meth:`array` wait in a list (an append is cheap); the
    array gets them at the next call, once per tick (its capacity doubles: amortised O(1))."""

    __slots__ = ("arr", "n", "pending")

    def __init__(self) -> None:
        self.arr: NDArray[np.int64] = np.zeros((0, N_DIMS + 1), dtype=np.int64)
        self.n = 0  # rows of arr in use
        self.pending: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return self.n + len(self.pending)

    def append(self, row: tuple[int, ...]) -> int:
        self.pending.append(row)
        return self.n + len(self.pending) - 1

    def row(self, c: int) -> tuple[int, ...]:
        if c < 0:
            c += len(self)
        if c >= self.n:
            return self.pending[c - self.n]
        return tuple(self.arr[c].tolist())

    def array(self) -> NDArray[np.int64]:
        have, add = self.n, len(self.pending)
        if add:
            need = have + add
            if need > self.arr.shape[0]:
                grown = np.empty((max(need, 2 * self.arr.shape[0], 1024), N_DIMS + 1), np.int64)
                grown[:have] = self.arr[:have]
                self.arr = grown
            self.arr[have:need] = self.pending
            self.pending = []
            self.n = need
        return self.arr[: self.n]

    def clear(self) -> None:
        self.arr = np.zeros((0, N_DIMS + 1), dtype=np.int64)
        self.n = 0
        self.pending = []


class ComboScopes(Sequence[tuple[int, ...]]):
    """combination id -> the ids of its scopes per dimension (a view of the table's rows)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: _Combos) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, c: int) -> tuple[int, ...]: ...

    @overload
    def __getitem__(self, c: slice) -> Sequence[tuple[int, ...]]: ...

    def __getitem__(self, c: int | slice) -> tuple[int, ...] | Sequence[tuple[int, ...]]:
        if isinstance(c, slice):
            return [self._rows.row(i)[:N_DIMS] for i in range(*c.indices(len(self._rows)))]
        return self._rows.row(c)[:N_DIMS]


class ComboProviders(Sequence[tuple[str, str]]):
    """combination id -> its (provider, operator)."""

    __slots__ = ("_pairs", "_rows")

    def __init__(self, rows: _Combos, pairs: list[tuple[str, str]]) -> None:
        self._rows = rows
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, c: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, c: slice) -> Sequence[tuple[str, str]]: ...

    def __getitem__(self, c: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        if isinstance(c, slice):
            return [self[i] for i in range(*c.indices(len(self._rows)))]
        return self._pairs[self._rows.row(c)[_PAIR]]


class ScopeTable:
    """Scope names and combinations, interned; bounded by :meth:`bound` between ticks.

    ``max_scopes``: names, and combinations, held at most (see the module docstring).
    """

    def __init__(self, resolver: ProviderResolver, max_scopes: int | None = None) -> None:
        self.resolver = resolver
        self.max_scopes = max(1, DEFAULT_MAX_SCOPES if max_scopes is None else int(max_scopes))
        self.domain = DomainCache(self.max_scopes)
        #: scope id -> scope name ("" for an id forgotten by a reset)
        self.names: list[str] = []
        #: raw combination -> combination id, or why it is rejected
        self.combos: dict[tuple[Any, ...], int | Rejection] = {}
        #: per combination: its scope ids per dimension, then its (provider, operator) index
        self._combo_rows = _Combos()
        #: the distinct (provider, operator) pairs (a small vocabulary, never forgotten)
        self._pairs: list[tuple[str, str]] = []
        self._pair_ids: dict[tuple[str, str], int] = {}
        #: combination id -> its scope ids per dimension
        self.combo_scopes = ComboScopes(self._combo_rows)
        #: combination id -> (provider, operator)
        self.combo_provider = ComboProviders(self._combo_rows, self._pairs)
        #: per scope dimension: value (stripped) -> scope id
        self._dim_ids: list[dict[str, int]] = [{} for _ in SCOPE_KINDS]
        #: the provider: and mx: scope ids of each pair
        self._pair_sids: list[tuple[int, int]] = []
        #: mx_host -> recipient_domain -> domain scope id * _PAIR_SPACE + pair index (one int
        #: per domain: the cheapest entry a new domain can have)
        self._heads: dict[str | None, dict[str | None, int]] = {}
        #: (ip, pool, sender, tenant, campaign) -> their scope ids
        self._tails: dict[tuple[str | None, ...], tuple[int, ...]] = {}
        #: one instance of each raw value of the fields after the recipient domain, so the keys
        #: of the combinations share them instead of holding each event's copy
        self._strings: dict[str | None, str | None] = {None: None}
        #: times the tables were forgotten to stay under max_scopes
        self.resets = 0
        #: names forgotten by the last reset below a kept id (their slots hold "")
        self._forgotten = 0

    def __len__(self) -> int:
        """Entries held (the larger of names and combinations): what ``max_scopes`` bounds."""
        return max(len(self.names) - self._forgotten, len(self.combos))

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
            by_domain = self._heads.get(mx_host)
            if by_domain is None:
                by_domain = self._heads[mx_host] = {}
            head = by_domain.get(rdomain)
            if head is None:
                mx = (mx_host or "").strip().lower().rstrip(".")
                pair = self.resolver.resolve(dom, mx)
                sids = self._scope_sids((dom, *pair), 0)
                p = self._pair_ids.get(pair)
                if p is None:
                    if len(self._pairs) >= _PAIR_SPACE:
                        raise ValueError(f"more than {_PAIR_SPACE} (provider, operator) pairs")
                    p = self._pair_ids[pair] = len(self._pairs)
                    self._pairs.append(pair)
                    self._pair_sids.append((sids[1], sids[2]))
                head = by_domain[rdomain] = sids[0] * _PAIR_SPACE + p
            sid, p = divmod(head, _PAIR_SPACE)
            tail_key = (ip, pool, sender, tenant, campaign)
            tail = self._tails.get(tail_key)
            if tail is None:
                tail = self._scope_sids((ip, pool, sdom, tenant, campaign), 3)
                self._tails[tail_key] = tail
            res = self._combo_rows.append((sid, *self._pair_sids[p], *tail, p))
            # the key keeps its own recipient domain, and shared instances of the other values
            rest = key[1:]
            key = (key[0], *map(self._strings.setdefault, rest, rest))
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
            v = v.strip()
            sid = ids.get(v)
            if sid is None:
                sid = ids[v] = len(self.names)
                # "|" joins the combined scopes (ip:X|provider:P): not inside a value
                self.names.append(f"{SCOPE_KINDS[dim]}:{v.replace('|', SCOPE_BAR)}")
            out.append(sid)
        return tuple(out)

    def combo_array(self) -> NDArray[np.int64]:
        """The combo -> scope ids table as an array, with the combos added since the last call
        (a view: its rows stay as they are until a reset)."""
        return self._combo_rows.array()[:, :N_DIMS]

    def bound(self) -> None:
        """Forget the names and combinations when they outnumber ``max_scopes``; safe only
        between ticks (no combination id pending). The ``provider:`` and ``mx:`` names keep
        their ids."""
        if len(self) > self.max_scopes:
            self.reset()

    def reset(self) -> None:
        """Forget every name and combination except the ids of the stable dimensions."""
        keep = {sid for dim in _STABLE_DIMS for sid in self._dim_ids[dim].values()}
        top = max(keep) + 1 if keep else 0
        self.names[:] = [n if i in keep else "" for i, n in enumerate(self.names[:top])]
        self._forgotten = top - len(keep)
        for dim, ids in enumerate(self._dim_ids):
            if dim not in _STABLE_DIMS:
                ids.clear()
        self.combos.clear()
        self._combo_rows.clear()
        self._heads.clear()
        self._tails.clear()
        self._strings.clear()
        self._strings[None] = None
        self.domain.clear()
        self.resets += 1
