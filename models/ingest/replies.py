"""Classification of SMTP replies for the ingest Pipeline, through caches, and the interned
normalised reply texts that a tick's ``Deltas`` report as the top replies per scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

REPLIES_PER_SCOPE = 3


class ClassificationLike(Protocol):
    @property
    def reason_code(self) -> int: ...

    @property
    def class_code(self) -> int: ...


class ClassifierLike(Protocol):
    """What the Pipeline needs of a classifier (models.classify.classifier.Classifier).

    ``smtp_command`` and ``dsn_action`` are passed (canonical: ``SMTP_PHASES``,
    ``DSN_ACTIONS``) only for an event that gives them; a reply without context is classified
    with the five positional arguments alone.
    """

    def classify_normalized(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        norm: str,
        provider: str | None = None,
        operator: str | None = None,
        *,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> ClassificationLike: ...


#: (code, enhanced code, text, provider scope id, MX scope id), plus (SMTP phase, DSN Action)
#: when the event gives either
_Key = (
    tuple[int | None, str | None, str, int, int]
    | tuple[int | None, str | None, str, int, int, str | None, str | None]
)


class ReplyTable:
    """Verdicts per (code, enhanced code, text, provider, operator[, phase, action]), and reply
    ids."""

    def __init__(self, classifier: ClassifierLike, normalize: Callable[[str], str]) -> None:
        self.classifier = classifier
        self._normalize = normalize
        #: see _Key -> (reason, class, reply); a key with context is two items longer, so it
        #: never equals one without, and replies without context pay nothing for it
        self._cache: dict[_Key, tuple[int, int, int]] = {}
        self._ids: dict[str, int] = {}
        #: reply id -> normalised text (at most 300 characters)
        self.texts: list[str] = []

    def classify(
        self,
        code: int | None,
        enh: str | None,
        text: str,
        scope_ids: tuple[int, ...],
        provider: tuple[str, str],
        command: str | None = None,
        action: str | None = None,
    ) -> tuple[int, int, int]:
        """(reason code, class code, reply id) of a reply; ``scope_ids`` and ``provider`` are
        those of the event's scope combination, ``command`` and ``action`` its canonical SMTP
        phase and DSN Action (None: not given). The same text may classify differently in
        another phase; it keeps one reply id."""
        ckey: _Key
        if command is None and action is None:
            ckey = (code, enh, text, scope_ids[1], scope_ids[2])
        else:
            ckey = (code, enh, text, scope_ids[1], scope_ids[2], command, action)
        hit = self._cache.get(ckey)
        if hit is not None:
            return hit
        full = self._normalize(text)
        if len(ckey) == 5:
            verdict = self.classifier.classify_normalized(code, enh, full, provider[0], provider[1])
        else:
            verdict = self.classifier.classify_normalized(
                code,
                enh,
                full,
                provider[0],
                provider[1],
                smtp_command=command,
                dsn_action=action,
            )
        norm = full[:300]
        rid = self._ids.get(norm)
        if rid is None:
            rid = len(self.texts)
            self._ids[norm] = rid
            self.texts.append(norm)
        out = (verdict.reason_code, verdict.class_code, rid)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[ckey] = out
        return out

    def bound(self) -> None:
        """Forget everything when the texts grow too large; safe only between ticks."""
        if len(self.texts) > 50_000:
            self._ids.clear()
            self.texts.clear()
            self._cache.clear()

    def top(
        self,
        combo_scopes: NDArray[np.int64],
        combo: NDArray[np.int64],
        reply: NDArray[np.int64],
        local_sids: NDArray[np.int64],
    ) -> list[tuple[int, str, int]]:
        """The REPLIES_PER_SCOPE most frequent replies per scope of a tick's events, as
        (position of the scope in ``local_sids``, text, count). ``combo_scopes[combo[i]]``
        are the scope ids of event ``i`` (-1: none), any number of columns."""
        has = reply >= 0
        if not has.any():
            return []
        sc = combo_scopes[combo[has]]
        rp = reply[has]
        sid = sc.T.ravel()
        rr = np.tile(rp, sc.shape[1])
        keep = sid >= 0
        sid, rr = sid[keep], rr[keep]
        nr = len(self.texts)
        pair, cnt = np.unique(sid * nr + rr, return_counts=True)
        psid = pair // nr
        prep = pair % nr
        order = np.lexsort((-cnt, psid))
        out: list[tuple[int, str, int]] = []
        pos = np.searchsorted(local_sids, psid)
        last = -1
        taken = 0
        for i in order:
            s = int(psid[i])
            if s != last:
                last, taken = s, 0
            if taken >= REPLIES_PER_SCOPE:
                continue
            taken += 1
            out.append((int(pos[i]), self.texts[int(prep[i])], int(cnt[i])))
        return out
