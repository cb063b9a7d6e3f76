"""SMTP bounce and deferral classifier (docs/classification.md).

Input: a basic reply code (optional), an enhanced status code (optional), the reply text, and
optionally the mailbox provider / MX operator (models/ingest/providers.py). Output: a
:class:`Classification` with a sisimai-vocabulary ``reason``, a coarse ``class`` chosen for the
action the sender should take, and the id of the rule that decided.

Rules are data (``models/classify/rules/*.toml`` plus user files that take precedence). Precedence:

1. user text rules scoped to the given provider/operator, then the other user text rules;
2. default text rules scoped to the given provider/operator;
3. default provider rules marked ``global = true`` (their text is unmistakable: "gsmtp",
   "[TSS04]", "protection.outlook.com", "mimecast" ...), whatever the provider;
4. default generic text rules;
5. RFC 3463 enhanced status code (exact ``5.7.26``, then the subject ``5.7``);
6. basic reply code (exact ``550``, then ``5xx`` / ``4xx``).

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
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from importlib import resources
from operator import itemgetter, or_
from pathlib import Path
from typing import Any, Final

from models.schema import CLASS_CODE, CLASSES, REASON_CODE, REASONS

__all__ = [
    "DEFAULT_CLASS",
    "Classification",
    "Classifier",
    "Rule",
    "RuleError",
    "load_rule_file",
    "normalize_reply",
    "parse_codes",
]


class RuleError(ValueError):
    """A rule file is invalid; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Classification:
    reason: str  # one of models.schema.REASONS
    cls: str  # one of models.schema.CLASSES (JSON key "class")
    rule: str  # id of the deciding rule
    reason_code: int  # models.schema.REASON_CODE[reason]
    class_code: int  # models.schema.CLASS_CODE[cls]

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "class": self.cls, "rule": self.rule}


#: Default (permanent, temporary) class of each reason, used when a rule gives no class.
DEFAULT_CLASS: Final[dict[str, tuple[str, str]]] = {
    "userunknown": ("hard", "soft"),
    "hostunknown": ("hard", "soft"),
    "hasmoved": ("hard", "soft"),
    "notaccept": ("hard", "transient"),
    "mailboxfull": ("soft", "soft"),
    "suspend": ("soft", "soft"),
    "exceedlimit": ("soft", "soft"),
    "mesgtoobig": ("soft", "soft"),
    "blocked": ("block", "block"),
    "badreputation": ("block", "throttle"),
    "spamdetected": ("block", "block"),
    "policyviolation": ("block", "block"),
    "contenterror": ("block", "block"),
    "virusdetected": ("block", "block"),
    "filtered": ("block", "block"),
    "rejected": ("block", "block"),
    "speeding": ("throttle", "throttle"),
    "toomanyconn": ("throttle", "throttle"),
    "expired": ("transient", "transient"),
    "networkerror": ("transient", "transient"),
    "systemerror": ("transient", "transient"),
    "systemfull": ("transient", "transient"),
    "mailererror": ("transient", "transient"),
    "greylisting": ("transient", "transient"),
    "authfailure": ("config", "config"),
    "requireptr": ("config", "config"),
    "failedstarttls": ("config", "config"),
    "securityerror": ("config", "config"),
    "norelaying": ("config", "config"),
    "notcompliantrfc": ("config", "config"),
    "syntaxerror": ("config", "config"),
    "onhold": ("other", "other"),
    "undefined": ("other", "transient"),
}
assert set(DEFAULT_CLASS) == set(REASONS)

# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_ADDR_CHARS = r"[^\s<>()\[\]{}\"',;:@]"
_RE_ADDR: Final = re.compile(_ADDR_CHARS + r"*@" + _ADDR_CHARS + r"*")
_RE_ADDR_BRACKETS: Final = re.compile(r"[<\[(]+\s*<addr>\s*[>\])]+")
#: what ``[a-z]`` matches with re.IGNORECASE: ASCII letters plus 'İ' (U+0130), 'ı' (U+0131),
#: 'ſ' (U+017F) and the Kelvin sign (U+212A), which fold to 'i', 'i', 's' and 'k'
_AZ: Final = "a-zA-Z\u0130\u0131\u017f\u212a"
#: One pass over the text: every alternative starts at a token start (after white space or one
#: of the delimiters), so the engine rejects most positions with a single look-behind test.
#: Every alternative also needs a digit, '@', '[' or ':' before the next white space (addr an
#: '@', host a '[', time/ip4/id a digit, ip6 a ':'), so the guard look-ahead after the
#: look-behind rejects a token start in a plain word with one possessive scan of that word
#: instead of trying the seven alternatives (the id look-ahead alone reads 16 characters).
#: The guard and the possessive ``*+`` in addr (its class excludes '@', so backtracking into
#: the run could never find one) change no match: tests/test_classifier.py compares the
#: matches with the unguarded pattern on generated replies. The pattern is case-insensitive
#: without re.IGNORECASE (which makes the engine case-fold every character it compares):
#: its letters are spelled in both cases, ``[a-z]`` as :data:`_AZ`.
_RE_VARIABLE: Final = re.compile(
    r"(?<![^\s<>()\[\]{}\"',;=&?/:|])(?=[^\s\d@\[:]*+[\d@\[:])(?:"
    r"(?P<addr><?[^\s<>()\[\]{}\"',;:@]*+@[^\s<>()\[\]{}\"',;:]*>?)"
    rf"|(?P<host>\[(?:[{_AZ}0-9_-]+\.)+[{_AZ}0-9_-]+\.[{_AZ}0-9-]*[{_AZ}][{_AZ}0-9-]*\])"
    r"|(?P<time>\d{4}-\d\d-\d\d(?:[tT ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:[zZ]|[+-]\d\d:?\d\d)?)?"
    r"|\d{1,2}:\d\d:\d\d(?:[.,]\d+)?)"
    r"|(?P<ip4>\d{1,3}(?:\.\d{1,3}){3})(?![\w])"
    r"|(?P<ip6>(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4})(?![\w:])"
    rf"|(?P<id>(?=[\w+/=.-]{{16}})(?=[{_AZ}_+/=.-]*\d)[\w+/=.-]+"
    r"|(?=[a-fA-F]*\d)(?=\d*[a-fA-F])[0-9a-fA-F]{10,}(?![\w])"
    r"|\d{10,}(?![\w]))"
    r")"
)
_MAX_NORM: Final = 1000


#: characters after a matched token that do not ask for another pass (see :func:`_may_expose`;
#: meant as the characters that cannot start a token, but '/' and '=' can start an id)
_NO_START: Final = frozenset(" \t\n\r\x0b\x0c<>(){}\"',;=&?/:|]")


#: delimiters that may also end a token (an IPv6 run, a base64 id): a matched token right after
#: one asks for another pass (see :func:`_may_expose`), since its replacement can change what an
#: earlier look-ahead saw
_INNER: Final = frozenset(":=/&?|")

#: replacement by ``m.lastindex`` (1 addr, 2 host, 3 time, 4 ip4, 5 ip6, 6 id); "" = computed
_REPLACEMENT: Final = ("", "<addr>", "", "<time>", "<ip>", "", "<id>")
_HOST: Final = 2


def _replace(m: re.Match[str]) -> str:
    kind = m.lastindex
    assert kind is not None
    rep = _REPLACEMENT[kind]
    if rep:
        return rep
    if kind == _HOST:
        labels = m.group(0)[1:-1].split(".")
        keep = labels[-3:] if len(labels) >= 4 else labels[-2:]
        return "[<host>." + ".".join(keep).lower() + "]"
    g = m.group(0)  # ip6
    return "<ip>" if sum(1 for p in g.split(":") if p) >= 3 else g


def _may_expose(text: str) -> bool:
    """Whether a pass over ``text`` replaced a token next to a possible token start.

    True when a matched token (an ip6 run left as it is included) is followed by a character
    not in ``_NO_START`` or starts right after one of ``_INNER``: the rule that decides whether
    :func:`normalize_reply` makes another pass. Only asked when the ``_RE_EXPOSED_*`` searches
    find a place where another pass could change something, so a pass does not pay for it.
    """
    n = len(text)
    for m in _RE_VARIABLE.finditer(text):
        start, end = m.span()
        if (end < n and text[end] not in _NO_START) or (start and text[start - 1] in _INNER):
            return True
    return False


#: Where another pass over a pass's output could replace something, given that no '@' is left
#: and no bracket collapsed (either forces another pass). Replacements start with '<' or '[',
#: end with '>' or ']' and hold no digit, '@' or ':', so a token that the next pass finds and
#: this one did not must read a replacement, and only these can then match:
#:
#: - a token right after a replacement (a new token start) if it starts with '[' (host), with
#:   one to four hex digits and ':' (ip6; a run starting with ':' was tried one character
#:   later), or has a digit in the run of id characters it starts (time, ip4, every id): this
#:   includes the kept labels of ``[<host>.a.b]`` after its '>';
#: - an ip6 run ending with ':' right before a replacement (its ``(?![\w:])`` may now hold):
#:   a hex digit or ':' precedes that ':'.
#:
#: Elsewhere a replacement's '<' or '[' stands where the original characters were, and every
#: other part can only fail on it: the guard and id look-aheads see fewer characters, host
#: labels, time and ip4 digits stop at it, addr needs an '@'. No hit means another pass would
#: change nothing, so it is skipped; a hit asks :func:`_may_expose` whether the pass is due as
#: before. tests/test_classifier.py compares :func:`normalize_reply` with the loop that asked
#: :func:`_may_expose` after every pass. Three searches, each with a literal first character,
#: are faster than one with a character class or a branch.
_EXPOSED_TAIL: Final = r"(?:\[|(?=[\w+/=.-]*\d)|[0-9a-fA-F]{1,4}:)"
_RE_EXPOSED_GT: Final = re.compile(">" + _EXPOSED_TAIL)
_RE_EXPOSED_RB: Final = re.compile(r"\]" + _EXPOSED_TAIL)
_RE_EXPOSED_IP6: Final = re.compile(r":(?<=[0-9a-fA-F:]:)[<\[]")
#: a bracket collapse needs a closer after ``<addr>``: a literal-prefix search is much cheaper
#: than trying :data:`_RE_ADDR_BRACKETS` at every '<', '[' and '('
_RE_ADDR_CLOSED: Final = re.compile(r"<addr>\s*[>\])]")


def _normalize_once(text: str) -> tuple[str, bool]:
    """One pass; the flag says whether another pass might still change the result."""
    out = _RE_VARIABLE.sub(_replace, text)
    again = False
    if "@" in out:  # an '@' not at a token start: never let an address through
        out = _RE_ADDR.sub("<addr>", out)
        again = True
    if "<addr>" in out and _RE_ADDR_CLOSED.search(out) is not None:
        before = out
        out = _RE_ADDR_BRACKETS.sub("<addr>", out)
        again = again or out != before
    if not again and (
        _RE_EXPOSED_GT.search(out) is not None
        or _RE_EXPOSED_RB.search(out) is not None
        or _RE_EXPOSED_IP6.search(out) is not None
    ):
        again = _may_expose(text)
    return " ".join(out.split()), again


def normalize_reply(text: str) -> str:
    """Strip what varies between otherwise identical replies.

    Addresses become ``<addr>`` (the result never contains an ``@``), IP addresses ``<ip>``,
    bracketed host names ``[<host>.<last labels>]``, queue/message ids and long hex, base64 or
    digit tokens ``<id>``, timestamps ``<time>``; runs of white space become one space. The
    result is used as the cache key and as the evidence string.
    """
    # A replacement can turn the character before the next token into a delimiter, so repeat
    # while a pass says it may have exposed a new token start (rare). Not quite idempotent:
    # a second pass is only made when :func:`_may_expose` asks for one, which misses e.g. an
    # id right after an IPv4 address and a '/' ("1.2.3.4/abcdefghijklmn1"); kept as it is,
    # since the normalised text is a cache key and stored evidence.
    for _ in range(8):
        new, again = _normalize_once(text[: _MAX_NORM + 200] if len(text) > _MAX_NORM else text)
        if len(new) > _MAX_NORM:
            new = new[:_MAX_NORM].rstrip()
            again = True
        if new == text or not again:
            return new
        text = new
    return text


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------

_RE_LEAD_CODE: Final = re.compile(r"^\s*([245]\d\d)(?:[\s-]|$)")
#: ``(?<![\d.])[245]`` written as ``[245](?<![\d.].)``: the same test, but the pattern now
#: starts with a character class, so the engine skips to the next 2, 4 or 5 in C.
_RE_ENH_IN_TEXT: Final = re.compile(r"([245](?<![\d.].)\.\d{1,3}\.\d{1,3})(?![\d]|\.\d)")
_RE_ENH_VALID: Final = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def parse_codes(
    smtp_code: int | None, enhanced_code: str | None, text: str
) -> tuple[int | None, str | None]:
    """Fill a missing basic or enhanced code from the reply text (``550 5.1.1 ...``)."""
    if smtp_code is None:
        m = _RE_LEAD_CODE.match(text)
        if m:
            smtp_code = int(m.group(1))
    if enhanced_code is None:
        m2 = _RE_ENH_IN_TEXT.search(text, 0, 400)
        if m2:
            enhanced_code = m2.group(1)
    elif not _RE_ENH_VALID.match(enhanced_code):
        enhanced_code = None
    return smtp_code, enhanced_code


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_RE_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")
_RE_WORD: Final = re.compile(r"\w+")
_RULE_KEYS: Final = frozenset(
    {"id", "pattern", "reason", "class", "temp_class", "provider", "global", "codes", "source"}
)
_CODE_KEYS: Final = frozenset({"code", "reason", "class", "temp_class", "source"})
_RE_CODE_KEY: Final = re.compile(r"^(?:[245X]\.\d{1,3}(?:\.\d{1,3})?|[245]\d\d|[245]xx)$")


@dataclass(frozen=True, slots=True)
class Rule:
    """One text rule (see docs/classification.md, "Rule files")."""

    id: str
    pattern: str
    reason: str
    cls: str
    temp_cls: str
    providers: frozenset[str] = frozenset()
    is_global: bool = False
    codes: tuple[str, ...] = ()
    source: str = ""
    user: bool = False
    regex: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)
    #: top-level alternatives, each compiled alone with its index key (None: no key)
    branches: tuple[tuple[re.Pattern[str], str | None, frozenset[str]], ...] = field(
        default=(), compare=False, repr=False
    )

    @property
    def anchors(self) -> tuple[str, ...] | None:
        """Index keys of the rule; None when some alternative has none."""
        keys = [k for _, k, _ in self.branches]
        if not keys or any(k is None for k in keys):
            return None
        return tuple(dict.fromkeys(k for k in keys if k is not None))

    def codes_ok(self, smtp: int | None, enh: str | None) -> bool:
        if not self.codes:
            return True
        s = str(smtp) if smtp is not None else ""
        e = enh or ""
        return any((e and e.startswith(c)) or (s and s.startswith(c)) for c in self.codes)


@dataclass(frozen=True, slots=True)
class _CodeRule:
    id: str
    reason: str
    cls: str


def _split_top(pattern: str) -> list[str]:
    """Split a pattern at its top-level ``|`` (outside groups, classes and escapes)."""
    parts: list[str] = []
    depth, i, last, n = 0, 0, 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "|" and depth == 0:
            parts.append(pattern[last:i])
            last = i + 1
        i += 1
    parts.append(pattern[last:])
    return parts


_EDGE: Final = "\x00"  # stands for \b, \s, ^, $ inside a literal run: a word edge


def _branch_keys(branch: str) -> tuple[str, ...]:
    """Word keys every match of one alternative contains (see :func:`_anchors_of`)."""
    runs: list[str] = []
    cur: list[str] = []
    i, n, depth = 0, len(branch), 0

    def end_run() -> None:
        if cur:
            runs.append("".join(cur))
            cur.clear()

    while i < n:
        c = branch[i]
        if c == "\\" and i + 1 < n:
            d = branch[i + 1]
            if depth == 0:
                if d in "bsW":
                    cur.append(_EDGE)
                elif not d.isalnum():
                    cur.append(d.lower())
                else:
                    end_run()
            i += 2
            continue
        if c == "(":
            if depth == 0:
                end_run()
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth > 0:
            pass
        elif c == "[":
            end_run()
            j = i + 1
            if j < n and branch[j] == "^":
                j += 1
            if j < n and branch[j] == "]":
                j += 1
            while j < n and branch[j] != "]":
                j += 2 if branch[j] == "\\" else 1
            i = j
        elif c in "?*{":
            if cur:
                cur.pop()
            end_run()
            if c == "{":
                while i < n and branch[i] != "}":
                    i += 1
        elif c in "+.":
            end_run()
        elif c in "^$":
            cur.append(_EDGE)
        else:
            cur.append(c.lower())
        i += 1
    end_run()
    found: list[tuple[int, str]] = []
    cjk: str | None = None
    for run in runs:
        text = run.replace(_EDGE, " ")
        for m in _RE_WORD.finditer(text):
            a, b, w = m.start(), m.end(), m.group(0)
            if cjk is None:
                c2 = _RE_CJK2.search(w)
                if c2 is not None:
                    cjk = _CJK_MARK + c2.group(0)
            if a == 0:
                continue  # not left-bounded: could be the tail of a longer word
            if len(w) >= _KEY_LEN:
                key = w[:_KEY_LEN]
            elif len(w) == _KEY_LEN - 1 or b < len(text):
                key = w  # three letters that may go on ("ofr" in "ofr006_102"), or a short word
            else:
                continue
            found.append((len(w), key))
    if not found:
        return (cjk,) if cjk is not None else ()
    found.sort(key=lambda t: -t[0])
    return tuple(dict.fromkeys(k for _, k in found))


def _branch_key(branch: str) -> str | None:
    """The index key of one alternative (its most selective word key), or None."""
    keys = _branch_keys(branch)
    return keys[0] if keys else None


_KEY_LEN: Final = 4
_CJK_MARK: Final = "\x01"
_RE_CJK2: Final = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]{2}")


def _text_keys(low: str) -> set[str]:
    """Index keys present in a lower-cased text (see :func:`_anchors_of`)."""
    if low.isascii():
        # ASCII: \w is [0-9a-z_], so one bytes.translate turns every other byte into a space
        # and split() yields the words; the slicing maps run in C (about half the time of a
        # regex findall plus a Python loop)
        words = low.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
        keys = set(map(_FIRST4, words))
        keys.update(map(_FIRST3, words))
        return keys
    # the first four characters of every word (the leading class lets the engine skip to word
    # characters instead of testing \b at every position), then the first three of those
    keys = set(_RE_WORD_KEY.findall(low))
    keys.update([k[:3] for k in keys if len(k) == _KEY_LEN])
    for run in _RE_CJK_RUN.findall(low):
        keys.update(_CJK_MARK + run[i : i + 2] for i in range(len(run) - 1))
    return keys


_RE_WORD_KEY: Final = re.compile(r"(\w{1,4})\w*")
#: bytes.translate table: ASCII word characters stay, every other byte becomes a space
_ASCII_WORDS: Final = bytes(
    c if c < 128 and (chr(c).isalnum() or c == 95) else 32 for c in range(256)
)
_FIRST4: Final = itemgetter(slice(None, _KEY_LEN))
_FIRST3: Final = itemgetter(slice(None, _KEY_LEN - 1))
_RE_CJK_RUN: Final = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]{2,}")


def _anchors_of(pattern: str) -> tuple[str, ...] | None:
    """Index keys of a pattern: every match contains a word with one of these keys, or None.

    The key of a word is its first four characters. A pattern
    is read at top level: literal characters form runs; groups, classes, escapes other than
    escaped punctuation, and quantifiers end a run (a quantifier also drops the character it
    applies to). A word of a run qualifies when the run shows a word edge before it (a
    non-word character, ``\\b``, ``\\s`` or ``^``): then every matching text has a word that
    starts with it. A three-letter word keys by itself (the text offers the first three letters
    of its longer words too); shorter words must show an edge after them. A
    top-level alternation qualifies when every alternative does. A run of CJK characters (no
    spaces between words) gives the key "\\x01" + its first two characters, and the text then
    offers all its CJK bigrams. None means "always try".
    """
    keys: list[str] = []
    for branch in _split_top(pattern):
        k = _branch_key(branch)
        if k is None:
            return None
        if k not in keys:
            keys.append(k)
    return tuple(keys)


_MAX_BRANCHES: Final = 255


_Branch = tuple[re.Pattern[str], str | None, frozenset[str]]


def _branches_of(pattern: str) -> tuple[_Branch, ...]:
    """Each top-level alternative compiled alone, with its index key and all required keys."""
    parts = _split_top(pattern)
    whole: tuple[_Branch, ...] = (
        (re.compile(pattern, re.IGNORECASE | re.DOTALL), None, frozenset()),
    )
    if len(parts) > _MAX_BRANCHES:
        return whole
    out: list[_Branch] = []
    for part in parts:
        try:
            rx = re.compile(part, re.IGNORECASE | re.DOTALL)
        except re.error:  # e.g. a global inline flag in the first alternative only
            return whole
        keys = _branch_keys(part)
        out.append((rx, keys[0] if keys else None, frozenset(keys)))
    return tuple(out)


def _check_class(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or value not in CLASS_CODE:
        raise RuleError(f"{where}: {key} must be one of {', '.join(CLASSES)} (got {value!r})")
    return value


def _parse_rule(raw: Any, src: str, n: int, user: bool) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{src}: rule #{n}: must be a table")
    rid = raw.get("id")
    if rid is None:
        raise RuleError(f"{src}: rule #{n} (no id): missing field 'id'")
    if not isinstance(rid, str) or not _RE_ID.match(rid):
        raise RuleError(f"{src}: rule #{n}: bad id {rid!r} (letters, digits, _ . : - only)")
    where = f"{src}: rule {rid!r}"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("pattern", "reason"):
        if key not in raw:
            raise RuleError(f"{where}: missing field {key!r}")
    pattern = raw["pattern"]
    if not isinstance(pattern, str) or not pattern.strip():
        raise RuleError(f"{where}: pattern must be a non-empty string")
    if "(?P<" in pattern:
        raise RuleError(f"{where}: named groups are not allowed in patterns")
    try:
        regex = re.compile(pattern, re.IGNORECASE | re.DOTALL)
    except re.error as exc:
        raise RuleError(f"{where}: bad regex {pattern!r}: {exc}") from None
    if regex.search(""):
        raise RuleError(f"{where}: pattern {pattern!r} matches the empty string")
    reason = raw["reason"]
    if not isinstance(reason, str) or reason not in REASON_CODE:
        raise RuleError(f"{where}: unknown reason {reason!r}")
    perm_default, temp_default = DEFAULT_CLASS[reason]
    if "class" in raw:
        cls = _check_class(raw["class"], where, "class")
        temp_default = cls
    else:
        cls = perm_default
    temp_cls = (
        _check_class(raw["temp_class"], where, "temp_class")
        if "temp_class" in raw
        else temp_default
    )
    prov = raw.get("provider", [])
    if isinstance(prov, str):
        prov = [prov]
    if not isinstance(prov, list) or not all(isinstance(p, str) and p for p in prov):
        raise RuleError(f"{where}: provider must be a string or a list of strings")
    is_global = raw.get("global", False)
    if not isinstance(is_global, bool):
        raise RuleError(f"{where}: global must be true or false")
    if is_global and not prov:
        raise RuleError(f"{where}: global = true needs a provider")
    codes = raw.get("codes", [])
    if isinstance(codes, str | int):
        codes = [codes]
    if not isinstance(codes, list) or not all(isinstance(c, str | int) for c in codes):
        raise RuleError(f"{where}: codes must be a list of code prefixes")
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise RuleError(f"{where}: source must be a string")
    return Rule(
        id=rid,
        pattern=pattern,
        reason=reason,
        cls=cls,
        temp_cls=temp_cls,
        providers=frozenset(p.lower() for p in prov),
        is_global=is_global,
        codes=tuple(str(c) for c in codes),
        source=source,
        user=user,
        regex=regex,
        branches=_branches_of(pattern),
    )


def _parse_code(raw: Any, src: str, n: int) -> list[tuple[str, _CodeRule]]:
    if not isinstance(raw, dict):
        raise RuleError(f"{src}: code #{n}: must be a table")
    key = raw.get("code")
    if key is None:
        raise RuleError(f"{src}: code #{n} (no code): missing field 'code'")
    if not isinstance(key, str | int) or not _RE_CODE_KEY.match(str(key)):
        raise RuleError(f"{src}: code #{n}: bad code {key!r} (e.g. '5.1.1', 'X.7.26', '550')")
    key = str(key)
    where = f"{src}: code {key!r}"
    unknown = set(raw) - _CODE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "reason" not in raw:
        raise RuleError(f"{where}: missing field 'reason'")
    reason = raw["reason"]
    if not isinstance(reason, str) or reason not in REASON_CODE:
        raise RuleError(f"{where}: unknown reason {reason!r}")
    perm_default, temp_default = DEFAULT_CLASS[reason]
    cls = _check_class(raw["class"], where, "class") if "class" in raw else perm_default
    if "class" in raw:
        temp_default = cls
    temp_cls = (
        _check_class(raw["temp_class"], where, "temp_class")
        if "temp_class" in raw
        else temp_default
    )
    out: list[tuple[str, _CodeRule]] = []
    keys = [key.replace("X", "4", 1), key.replace("X", "5", 1)] if key[0] == "X" else [key]
    for k in keys:
        temp = k[0] == "4"
        prefix = "code." if "." not in k else "enh."
        out.append((k, _CodeRule(prefix + k, reason, temp_cls if temp else cls)))
    return out


@dataclass(slots=True)
class RuleFile:
    path: str
    rules: list[Rule]
    codes: list[tuple[str, _CodeRule]]


def load_rule_file(path: Path | str, *, user: bool = False, text: str | None = None) -> RuleFile:
    """Parse and validate one rules file; raise :class:`RuleError` naming file and rule."""
    src = str(path)
    try:
        if text is None:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            data = tomllib.loads(text)
    except OSError as exc:
        raise RuleError(f"{src}: cannot read rules file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{src}: not valid TOML: {exc}") from None
    unknown = set(data) - {"rule", "code", "meta"}
    if unknown:
        raise RuleError(f"{src}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    raw_rules = data.get("rule", [])
    raw_codes = data.get("code", [])
    if not isinstance(raw_rules, list) or not isinstance(raw_codes, list):
        raise RuleError(f"{src}: 'rule' and 'code' must be arrays of tables ([[rule]], [[code]])")
    rules = [_parse_rule(r, src, i + 1, user) for i, r in enumerate(raw_rules)]
    codes: list[tuple[str, _CodeRule]] = []
    for i, c in enumerate(raw_codes):
        codes.extend(_parse_code(c, src, i + 1))
    return RuleFile(src, rules, codes)


@lru_cache(maxsize=1)
def _default_files() -> tuple[RuleFile, ...]:
    """The shipped rule files, parsed and compiled once per process (nothing mutates them)."""
    pkg = resources.files("models.classify.rules")
    out = []
    for entry in sorted(pkg.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            out.append(
                load_rule_file(f"models/classify/rules/{entry.name}", text=entry.read_text("utf-8"))
            )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


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


_Key = tuple[int | None, str | None, str, str | None, str | None]


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
    ) -> Classification:
        if self.cache_size <= 0:
            return self._decide(smtp_code, enhanced_code, normalize_reply(text), provider, operator)
        key = (smtp_code, enhanced_code, text, provider, operator)
        hit = self._raw_cache.get(key)
        if hit is not None:
            return hit
        res = self.classify_normalized(
            smtp_code, enhanced_code, normalize_reply(text), provider, operator
        )
        self._store(self._raw_cache, key, res)
        return res

    def classify_normalized(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        norm: str,
        provider: str | None = None,
        operator: str | None = None,
    ) -> Classification:
        """Classify a reply already passed through :func:`normalize_reply`.

        For callers that keep the normalised text anyway (the ingest pipeline stores it as
        incident evidence), so the reply is normalised once.
        """
        if self.cache_size <= 0:
            return self._decide(smtp_code, enhanced_code, norm, provider, operator)
        nkey = (smtp_code, enhanced_code, norm, provider, operator)
        res = self._cache.get(nkey)
        if res is None:
            res = self._decide(smtp_code, enhanced_code, norm, provider, operator)
            self._store(self._cache, nkey, res)
        return res

    def explain(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        text: str,
        provider: str | None = None,
        operator: str | None = None,
    ) -> tuple[Classification, str]:
        """Classification plus the normalised evidence string (no cache)."""
        norm = normalize_reply(text)
        return self._decide(smtp_code, enhanced_code, norm, provider, operator), norm

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
        ordered += [r for r in d if not r.providers]
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
    ) -> Classification:
        smtp, enh = parse_codes(smtp_code, enhanced_code, norm)
        if smtp is not None:
            temp = 400 <= smtp < 500
        elif enh is not None:
            temp = enh[0] == "4"
        else:
            temp = False
        low = norm.lower()
        plan = self._plan(provider, operator)
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
                return self._result(r.reason, r.temp_cls if temp else r.cls, r.id)
            skip = r
        codes = self.codes
        if enh is not None:
            cr = codes.get(enh) or codes.get(enh[: enh.rindex(".")])
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
