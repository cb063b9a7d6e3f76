"""SMTP bounce and deferral classifier (docs/classification.md).

Input: a basic reply code (optional), an enhanced status code (optional), the reply text, and
optionally the mailbox provider / MX operator (models/ingest/providers.py). Output: a
:class:`Classification` with a sisimai-vocabulary ``reason``, a coarse ``class`` chosen for the
action the sender should take, and the id of the rule that decided.

Rules are data (``models/classify/rules/*.toml`` plus user files that take precedence). The
most specific evidence decides (docs/classification.md, "Precedence"):

1. user text rules scoped to the given provider/operator, then the other user text rules;
2. provider rules: default text rules scoped to the given provider/operator, then default
   provider rules marked ``global = true`` (their text is unmistakable: "gsmtp", "[TSS04]",
   "protection.outlook.com", "mimecast" ...), whatever the provider;
3. a specific enhanced status code (an exact code-table entry for x.y.z with z != 0, RFC 3463
   and the IANA registry), unless a specific text rule *refines* it (its reason is listed in
   the entry's ``refine``) or the entry is a catch-all (``refine = "*"``, e.g. X.7.1);
4. specific text rules (the default rules without provider);
5. generic text rules (``generic = true``: "rejected", "access denied", "Recipient address
   rejected", RFC 5321's stock texts);
6. the other enhanced status codes (x.y.0, subject ``5.7``), then the basic reply code (exact
   ``550``, then ``5xx`` / ``4xx``).

Optional context then adjusts a verdict as sisimai does (never one of a user rule): the SMTP
phase (``smtp_command``, or "in reply to RCPT TO command" in the text) and the DSN Action
(``dsn_action``); see :meth:`Classifier._context`.

Within one tier the first rule in file order wins. Text matching runs on the normalised,
lower-cased reply. To reach tens of thousands of unique replies per second without one regex pass
per rule, every rule is indexed by an *anchor word* (a whole word its pattern cannot match
without); a reply only runs the rules whose anchor word it contains (plus the few rules without
an anchor), in precedence order, and only when it also holds the other words the rule needs.
Both tests are bit operations on one Python int per reply: the OR of the packed bits of its
words, memoised per word prefix (see ``_Plan``). Results are cached on the raw key and on the
normalised key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, reduce
from operator import or_
from pathlib import Path
from typing import Final

from models.classify.context import (
    DSN_ACTIONS,
    SMTP_PHASES,
    dsn_action,
    phase_from_text,
    smtp_phase,
)
from models.classify.normalize import leading_enhanced_code, normalize_reply, parse_codes
from models.classify.rulefile import (
    _ASCII_WORDS,
    _FIRST4,
    _KEY_LEN,
    DEFAULT_CLASS,
    Rule,
    RuleError,
    _CodeRule,
    _default_files,
    _text_keys,
    load_rule_file,
)
from models.schema import CLASS_CODE, REASON_CODE

__all__ = [
    "CLASS_ACTIONS",
    "DEFAULT_CLASS",
    "DSN_ACTIONS",
    "SMTP_PHASES",
    "Classification",
    "Classifier",
    "Rule",
    "RuleError",
    "dsn_action",
    "load_rule_file",
    "normalize_reply",
    "parse_codes",
    "phase_from_text",
    "smtp_phase",
]


_smtp_phase = smtp_phase  # the classify() keyword arguments shadow the public names
_dsn_action = dsn_action

#: What the sender should do, per class (docs/classification.md, "Classes"); ``repmon classify``
#: reports it as ``action``.
CLASS_ACTIONS: Final[dict[str, str]] = {
    "hard": "suppress the recipient address",
    "soft": "retry later; suppress the address after repeated soft bounces over days",
    "block": "stop or slow this stream to this receiver and fix the cause",
    "throttle": "reduce rate and connections to this receiver, back off and retry",
    "transient": "retry later; no reputation signal",
    "config": "fix DNS / MTA configuration and pause the affected stream until fixed",
    "other": "nothing automatic; look at the evidence",
}


@dataclass(frozen=True, slots=True)
class Classification:
    reason: str  # one of models.schema.REASONS
    cls: str  # one of models.schema.CLASSES (JSON key "class")
    rule: str  # id of the deciding rule
    reason_code: int  # models.schema.REASON_CODE[reason]
    class_code: int  # models.schema.CLASS_CODE[cls]

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "class": self.cls, "rule": self.rule}


_WHOLE: Final = 255
#: (precedence order, compiled alternative, bits of the keys it needs besides its index key
#: (see :class:`_Plan`), rule, literal prefix or "")
_Entry = tuple[int, re.Pattern[str], int, Rule, str]


@lru_cache(maxsize=65536)  # per alternative, shared by every plan that includes it
def _literal_prefix(branch: str) -> str:
    """The lower-cased ASCII text every match of ``\\bword ...`` starts with, or "".

    Only for an alternative that starts with ``\\b`` followed by ASCII letters, digits or
    spaces; a character followed by a quantifier and everything after the first other
    character are left out. In a lower-cased ASCII text a match (IGNORECASE) can then only
    start where this literal occurs, so the search may skip to its first occurrence, or be
    skipped when it does not occur.
    """
    if not branch.startswith("\\b"):
        return ""
    out: list[str] = []
    for i in range(2, len(branch)):
        c = branch[i]
        if not (c.isascii() and (c.isalnum() or c == " ")):
            break
        if i + 1 < len(branch) and branch[i + 1] in "?*+{":
            break
        out.append(c.lower())
    return "".join(out)


#: word prefixes remembered per plan before the memo starts afresh
_MEMO_MAX: Final = 16384


class _PrefixBits(dict[bytes, int]):
    """Memo of one plan: first four bytes of an ASCII word -> packed bits of the word's keys.

    The keys an ASCII word offers are its first four and its first three characters (see
    :func:`_text_keys`), so the bits of a word depend on its first four characters only:
    ``kv[p] | kv[p[:3]]`` for ``p = word[:4]``. A miss computes and remembers them; hits run in
    C (``dict.__getitem__``). Keyed by prefix, not by word, the memo stays small (a unique
    token per reply, "serial123", shares the prefix "seri").
    """

    __slots__ = ("kv",)

    def __init__(self, kv: dict[bytes, int]) -> None:
        super().__init__()
        self.kv = kv

    def __missing__(self, prefix: bytes) -> int:
        kv = self.kv
        v = kv.get(prefix, 0) | kv.get(prefix[: _KEY_LEN - 1], 0)
        if len(self) >= _MEMO_MAX:
            self.clear()
        self[prefix] = v
        return v


@dataclass(frozen=True, slots=True)
class _Plan:
    """The text rules that apply for one (provider, operator), in precedence order.

    ``entries`` holds every alternative in *reverse* precedence order; ``masks`` maps an index
    key to the bit set (a Python int, bit ``j`` = ``entries[j]``) of the alternatives it keys,
    and ``always`` is the bit set of the alternatives tried for every reply.

    A reply needs two things from its keys: the candidates (the OR of the masks of its keys)
    and, per candidate, whether all the keys the alternative needs are present. Both come from
    one packed int per key: the ``nkeys`` low bits say which key it is (bit ``b(key)``, given
    only to keys that some alternative needs besides its index key), the bits above hold its
    mask: ``kv[key] = masks[key] << nkeys | 1 << b(key)``. The OR over the reply's keys, started
    from ``start`` (``always << nkeys``), gives the candidates (``>> nkeys``) and, in its low
    bits, the keys present; ``entries[j][2]`` is the bit set of the keys alternative ``j`` needs
    besides its index key (present whenever ``j`` is a candidate). ``prefixes`` memoises the
    packed bits of an ASCII word by its first four characters, so an ASCII reply costs one
    slice and one C-level dict lookup per word. The candidates are walked from the highest set
    bit (``bit_length``): no per-reply list or sort, and the walk stops at the first rule that
    decides. ``bits[j]`` is ``1 << j``.
    """

    rules: tuple[Rule, ...]
    entries: tuple[_Entry, ...]
    masks: dict[str, int]
    always: int
    bits: tuple[int, ...]
    nkeys: int
    kv: dict[str, int]
    start: int
    prefixes: _PrefixBits

    def packed(self, low: str) -> int:
        """The OR of ``start`` and the packed bits of every index key of a lower-cased text."""
        if low.isascii():
            # the words of _text_keys' ASCII path, as bytes (no decode): one memo hit per word
            words = low.encode("ascii").translate(_ASCII_WORDS).split()
            return reduce(or_, map(self.prefixes.__getitem__, map(_FIRST4, words)), self.start)
        kv = self.kv
        return reduce(or_, map(kv.__getitem__, kv.keys() & _text_keys(low)), self.start)


#: (smtp code, enhanced code, text, provider, operator, SMTP phase, DSN action)
_Key = tuple[int | None, str | None, str, str | None, str | None, str | None, str | None]


class Classifier:
    """Classify SMTP replies with the default rules plus user rule files (which win)."""

    def __init__(self, rule_files: Sequence[Path] = (), *, cache_size: int = 65536) -> None:
        defaults = _default_files()
        users = [load_rule_file(p, user=True) for p in rule_files]
        seen: dict[str, str] = {}
        for rf in defaults:
            for r in rf.rules:
                if r.id in seen:
                    raise RuleError(
                        f"{rf.path}: rule {r.id!r}: duplicate id (also in {seen[r.id]})"
                    )
                seen[r.id] = rf.path
        default_ids = set(seen)
        user_seen: dict[str, str] = {}
        for rf in users:
            for r in rf.rules:
                if r.id in user_seen:
                    raise RuleError(
                        f"{rf.path}: rule {r.id!r}: duplicate id (also in {user_seen[r.id]})"
                    )
                user_seen[r.id] = rf.path
        overridden = set(user_seen) & default_ids
        self._user_rules: tuple[Rule, ...] = tuple(r for rf in users for r in rf.rules)
        self._default_rules: tuple[Rule, ...] = tuple(
            r for rf in defaults for r in rf.rules if r.id not in overridden
        )
        self.codes: dict[str, _CodeRule] = {}
        for rf in (*defaults, *users):  # later files (user files) override code entries
            for k, cr in rf.codes:
                self.codes[k] = cr
        self.cache_size = max(0, cache_size)
        self._cache: dict[_Key, Classification] = {}
        self._raw_cache: dict[_Key, Classification] = {}
        self._plans: dict[tuple[str | None, str | None], _Plan] = {}
        self._plans_by_scope: dict[frozenset[str], _Plan] = {}
        #: every provider or operator name some rule is scoped to
        self._named = frozenset(p for r in self.rules for p in r.providers)
        self._results: dict[tuple[str, str, str], Classification] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._user_rules + self._default_rules

    def classify(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        text: str,
        provider: str | None = None,
        operator: str | None = None,
        *,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> Classification:
        """Classify one reply.

        ``smtp_command`` is the SMTP phase the reply answered (CONNECT, HELO/EHLO, MAIL, RCPT,
        DATA, END-OF-DATA; :func:`smtp_phase` names the aliases; unknown values are ignored)
        and ``dsn_action`` the DSN Action (failed, delayed, expired ...): optional context, see
        docs/classification.md.
        """
        cmd = _smtp_phase(smtp_command) if smtp_command else None
        act = _dsn_action(dsn_action) if dsn_action else None
        if self.cache_size <= 0:
            return self._decide(
                smtp_code, enhanced_code, normalize_reply(text), provider, operator, cmd, act
            )
        key = (smtp_code, enhanced_code, text, provider, operator, cmd, act)
        hit = self._raw_cache.get(key)
        if hit is not None:
            return hit
        norm = normalize_reply(text)
        nkey = (smtp_code, enhanced_code, norm, provider, operator, cmd, act)
        res = self._cache.get(nkey)
        if res is None:
            res = self._decide(smtp_code, enhanced_code, norm, provider, operator, cmd, act)
            self._store(self._cache, nkey, res)
        self._store(self._raw_cache, key, res)
        return res

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
    ) -> Classification:
        """Classify a reply already passed through :func:`normalize_reply`.

        For callers that keep the normalised text anyway (the ingest pipeline stores it as
        incident evidence), so the reply is normalised once.
        """
        cmd = _smtp_phase(smtp_command) if smtp_command else None
        act = _dsn_action(dsn_action) if dsn_action else None
        if self.cache_size <= 0:
            return self._decide(smtp_code, enhanced_code, norm, provider, operator, cmd, act)
        nkey = (smtp_code, enhanced_code, norm, provider, operator, cmd, act)
        res = self._cache.get(nkey)
        if res is None:
            res = self._decide(smtp_code, enhanced_code, norm, provider, operator, cmd, act)
            self._store(self._cache, nkey, res)
        return res

    def explain(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        text: str,
        provider: str | None = None,
        operator: str | None = None,
        *,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> tuple[Classification, str]:
        """Classification plus the normalised evidence string (no cache)."""
        norm = normalize_reply(text)
        cmd = _smtp_phase(smtp_command)
        act = _dsn_action(dsn_action)
        return self._decide(smtp_code, enhanced_code, norm, provider, operator, cmd, act), norm

    def cache_info(self) -> dict[str, int]:
        return {"normalised": len(self._cache), "raw": len(self._raw_cache)}

    # -- internals ----------------------------------------------------------------------------

    def _store(self, cache: dict[_Key, Classification], key: _Key, value: Classification) -> None:
        if self.cache_size <= 0:
            return
        if len(cache) >= self.cache_size:
            # drop the oldest eighth (dicts keep insertion order): amortised O(1)
            for k in list(cache)[: max(1, self.cache_size // 8)]:
                del cache[k]
        cache[key] = value

    def _result(self, reason: str, cls: str, rule: str) -> Classification:
        k = (reason, cls, rule)
        r = self._results.get(k)
        if r is None:
            r = Classification(reason, cls, rule, REASON_CODE[reason], CLASS_CODE[cls])
            self._results[k] = r
        return r

    def _plan(self, provider: str | None, operator: str | None) -> _Plan:
        pk = (provider, operator)
        plan = self._plans.get(pk)
        if plan is not None:
            return plan
        # rules are selected by the provider names they list, so every (provider, operator)
        # pair naming the same of those names shares one plan (most MX operators name none)
        scope = {s.lower() for s in (provider, operator) if s} & self._named
        plan = self._plans_by_scope.get(frozenset(scope))
        if plan is None:
            plan = self._build_plan(scope)
            self._plans_by_scope[frozenset(scope)] = plan
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[pk] = plan
        return plan

    def _build_plan(self, scope: set[str]) -> _Plan:
        ordered: list[Rule] = []
        u = self._user_rules
        d = self._default_rules
        ordered += [r for r in u if r.providers and r.providers & scope]
        ordered += [r for r in u if not r.providers or (r.is_global and not r.providers & scope)]
        ordered += [r for r in d if r.providers and r.providers & scope]
        ordered += [r for r in d if r.providers and r.is_global and not r.providers & scope]
        ordered += [r for r in d if not r.providers and not r.generic]
        ordered += [r for r in d if not r.providers and r.generic]
        # index each alternative under the key it needs that the fewest alternatives need
        # (a rare word: "spamhaus" rather than "mess"): any key of ``need`` is sound, since an
        # alternative is tried only when all of ``need`` is in the text; a rarer one offers
        # fewer alternatives that then fail the ``need`` test
        df: dict[str, int] = {}
        for r in ordered:
            if r.anchors is not None:
                for _, _, need in r.branches:
                    for w in need:
                        df[w] = df.get(w, 0) + 1
        keyed: list[tuple[int, re.Pattern[str], frozenset[str], Rule, str, str | None]] = []
        for i, r in enumerate(ordered):
            if r.anchors is None:
                keyed.append((i << 8 | _WHOLE, r.regex, frozenset(), r, "", None))
            else:
                for b, (rx, first, need) in enumerate(r.branches):
                    lit = _literal_prefix(rx.pattern)
                    key = min(need, key=lambda w: (df[w], w)) if need else str(first)
                    keyed.append((i << 8 | b, rx, need - {key}, r, lit, key))
        keyed.sort(key=lambda t: t[0], reverse=True)
        masks: dict[str, int] = {}
        always = 0
        for j, (*_, mk) in enumerate(keyed):
            if mk is None:
                always |= 1 << j
            else:
                masks[mk] = masks.get(mk, 0) | 1 << j
        # key bits: only the keys some alternative needs besides its index key
        kbit: dict[str, int] = {}
        for _, _, rest, _, _, _ in keyed:
            for w in sorted(rest):
                kbit.setdefault(w, 1 << len(kbit))
        nkeys = len(kbit)
        kv = {w: kbit.get(w, 0) for w in (*masks, *kbit)}
        for w, m in masks.items():
            kv[w] |= m << nkeys
        entries = tuple(
            (o, rx, reduce(or_, map(kbit.__getitem__, rest), 0), r, lit)
            for o, rx, rest, r, lit, _ in keyed
        )
        bits = tuple(1 << j for j in range(len(keyed)))
        plan = _Plan(
            tuple(ordered),
            entries,
            masks,
            always,
            bits,
            nkeys,
            kv,
            always << nkeys,
            _PrefixBits({w.encode(): v for w, v in kv.items() if w.isascii()}),
        )
        return plan

    def _decide(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        norm: str,
        provider: str | None,
        operator: str | None,
        phase: str | None = None,
        action: str | None = None,
    ) -> Classification:
        smtp, enh = parse_codes(smtp_code, enhanced_code, norm)
        if enh is not None and enhanced_code is not None and norm[4 : 4 + len(enh)] != enh:
            # the reply's own leading code is what the receiver said; a different code given
            # beside it (a DSN Status written by the reporting MTA) only summarises it
            own = leading_enhanced_code(norm)
            if own is not None:
                enh = own
        if smtp is not None:
            temp = 400 <= smtp < 500
        elif enh is not None:
            temp = enh[0] == "4"
        else:
            temp = False
        low = norm.lower()
        if smtp is not None and low.find(str(smtp), 3) > 0:
            low = _strip_continuations(low, str(smtp), enh)
        if phase is None:
            phase = phase_from_text(low)
        found = self._first_match(self._plan(provider, operator), low, smtp, enh)
        codes = self.codes
        exact = codes.get(enh) if enh is not None else None
        tier = _TIER_DEFAULT
        if found is not None and (found.user or found.providers):
            res = self._result(found.reason, found.temp_cls if temp else found.cls, found.id)
            if found.user:
                return res
            tier = _TIER_PROVIDER
        elif (
            exact is not None
            and exact.specific
            and exact.refine is not None
            and (
                found is None
                or (
                    found.reason != exact.reason
                    and (found.generic or found.reason not in exact.refine)
                )
            )
        ):
            res = self._result(exact.reason, exact.cls, exact.id)
            tier = _TIER_CODE
        elif found is not None:
            res = self._result(found.reason, found.temp_cls if temp else found.cls, found.id)
            tier = _TIER_GENERIC if found.generic else _TIER_TEXT
        else:
            res = self._code_result(smtp, enh, exact, temp)
        if temp and res.reason == "hostunknown" and tier != _TIER_PROVIDER:
            # RFC 3463: X.1.2 (bad destination system) "is only useful for permanent
            # failures"; a temporary "host not found" is a DNS failure that may clear
            res = self._result("networkerror", DEFAULT_CLASS["networkerror"][1], "temporary.dns")
        if phase is None and action is None:
            return res
        return self._context(res, tier, temp, enh, phase, action)

    def _first_match(self, plan: _Plan, low: str, smtp: int | None, enh: str | None) -> Rule | None:
        """The first text rule of ``plan`` (precedence order) that matches ``low`` and accepts
        the codes, found through the word index (see :class:`_Plan`)."""
        # candidates above bit ``nkeys``, keys present below (see _Plan)
        keys = plan.packed(low)
        cand = keys >> plan.nkeys
        entries = plan.entries
        bits = plan.bits
        ascii_text = low.isascii()
        skip: Rule | None = None
        while cand:
            j = cand.bit_length() - 1
            cand ^= bits[j]
            _, rx, need, r, lit = entries[j]
            if r is skip or need & keys != need:
                continue
            if lit and ascii_text:
                # a match can only start where lit occurs: try just those places (match, like
                # search, sees the character before ``at`` for its \b) instead of searching on
                at = low.find(lit)
                while at >= 0 and rx.match(low, at) is None:
                    at = low.find(lit, at + 1)
                if at < 0:
                    continue
            elif rx.search(low) is None:
                continue
            if r.codes_ok(smtp, enh):
                return r
            skip = r
        return None

    def _code_result(
        self, smtp: int | None, enh: str | None, exact: _CodeRule | None, temp: bool
    ) -> Classification:
        """The verdict of the code tables alone (tier 6)."""
        codes = self.codes
        if enh is not None and (smtp is None or enh[2:4] != "0."):
            # an X.0.x code names only the class: a basic code says more
            cr = exact or codes.get(enh[: enh.rindex(".")])
            if cr is not None:
                return self._result(cr.reason, cr.cls, cr.id)
        if smtp is not None:
            s = str(smtp)
            cr = codes.get(s) or codes.get(s[0] + "xx")
            if cr is not None:
                return self._result(cr.reason, cr.cls, cr.id)
        if temp:
            return self._result("undefined", "transient", "default.temporary")
        return self._result("undefined", "other", "default.undefined")

    def _context(
        self,
        res: Classification,
        tier: int,
        temp: bool,
        enh: str | None,
        phase: str | None,
        action: str | None,
    ) -> Classification:
        """Adjust a verdict with the SMTP phase and the DSN Action (docs/classification.md).

        Provider rules keep their verdict (the provider documents what its text means); the
        other tiers are adjusted as sisimai does:

        * Action ``expired``: the message was given up after its queue lifetime -> expired.
        * A "user unknown" answering DATA or the end of DATA -> filtered: the recipient was
          accepted at RCPT TO, so the refusal comes from a filter reading the message; not when
          the enhanced code is X.1.1 (the receiver says the mailbox does not exist).
        * userunknown, hostunknown or hasmoved answering MAIL FROM, where the only address is
          the sender's, and a bare refusal word ("Access denied", generic.blocked) there ->
          rejected (the sender was refused).
        * Weak evidence only at CONNECT or HELO/EHLO -> blocked (the client itself is refused,
          before any sender or recipient); with Action ``delayed`` and no text rule at all ->
          expired (the message is still queued after temporary failures).
        """
        reason = res.reason
        new = ""
        if action == "expired":
            new = "expired"
        elif tier == _TIER_PROVIDER:
            pass
        elif reason == "userunknown" and phase in _AFTER_DATA:
            if enh is None or enh[2:] != "1.1":
                new = "filtered"
        elif phase == "MAIL" and (
            reason in _SENDER_AT_MAIL or (reason == "blocked" and tier == _TIER_GENERIC)
        ):
            new = "rejected"
        elif tier >= _TIER_GENERIC:
            if phase in _BEFORE_MAIL:
                new = "blocked"
            elif action == "delayed" and tier == _TIER_DEFAULT:
                new = "expired"
        if not new or new == reason:
            return res
        return self._result(new, DEFAULT_CLASS[new][1 if temp else 0], _CONTEXT_RULE[new])


#: which evidence decided (docs/classification.md, "Precedence"); larger is weaker
_TIER_PROVIDER: Final = 1
_TIER_CODE: Final = 2
_TIER_TEXT: Final = 3
_TIER_GENERIC: Final = 4
_TIER_DEFAULT: Final = 5
_AFTER_DATA: Final = frozenset({"DATA", "END-OF-DATA"})
_BEFORE_MAIL: Final = frozenset({"CONNECT", "HELO"})
_SENDER_AT_MAIL: Final = frozenset({"userunknown", "hostunknown", "hasmoved"})
_CONTEXT_RULE: Final = {
    "expired": "context.expired",
    "filtered": "context.filtered_after_data",
    "rejected": "context.sender_at_mail",
    "blocked": "context.refused_before_mail",
}
assert set(CLASS_ACTIONS) == set(CLASS_CODE)


@lru_cache(maxsize=4096)
def _continuation_re(code: str, enh: str | None) -> re.Pattern[str]:
    e = re.escape(enh) if enh else r"[245]\.\d{1,3}\.\d{1,3}"
    return re.compile(rf"(?<=\s){code}(?:-(?:{e}\s?)?|\s{e}\s)")


def _strip_continuations(low: str, code: str, enh: str | None) -> str:
    """Drop the code prefixes of continuation lines flattened into one line.

    ``550-5.7.1 [ip] Messages with multiple 550-5.7.1 addresses in From: header ...``: a
    multi-line reply (RFC 5321 section 4.2.1) joined by a log or a DSN repeats ``550-5.7.1 `` at
    every line start, which would split the phrases of the text. The leading code stays.
    """
    head = low[:3]
    return head + _continuation_re(code, enh).sub("", low[3:])
