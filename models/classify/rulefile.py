"""Rule files: TOML rules parsed and validated into ``Rule`` objects with their word keys.

The shipped files are ``models/classify/rules/*.toml``; user files take precedence
(docs/classification.md). A bad file raises ``RuleError`` naming the file and the rule.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

from models.schema import CLASS_CODE, CLASSES, REASON_CODE, REASONS


class RuleError(ValueError):
    """A rule file is invalid; the message names the file and the rule."""


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

_RE_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")
_RE_WORD: Final = re.compile(r"\w+")
_RULE_KEYS: Final = frozenset(
    {
        "id",
        "pattern",
        "reason",
        "class",
        "temp_class",
        "provider",
        "global",
        "codes",
        "source",
        "generic",
    }
)
_CODE_KEYS: Final = frozenset({"code", "reason", "class", "temp_class", "source", "refine"})
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
    #: a generic wording ("rejected", "access denied", "Recipient address rejected"): below
    #: specific text and below a specific enhanced code (docs/classification.md, Precedence)
    generic: bool = False
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
    #: an exact x.y.z entry with z != 0: a specific code (tier 3 of the precedence)
    specific: bool = False
    #: reasons of specific text rules that may refine this code (None: every reason)
    refine: frozenset[str] | None = frozenset()


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
    generic = raw.get("generic", False)
    if not isinstance(generic, bool):
        raise RuleError(f"{where}: generic must be true or false")
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
        generic=generic,
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
    refine: frozenset[str] | None = frozenset()
    if "refine" in raw:
        rv = raw["refine"]
        if rv == "*":
            refine = None
        elif isinstance(rv, list) and all(isinstance(x, str) and x in REASON_CODE for x in rv):
            refine = frozenset(rv)
        else:
            raise RuleError(f"{where}: refine must be '*' or a list of reasons (got {rv!r})")
    # x.y.z with z != 0 is a specific code (RFC 3463: the detail names one condition); x.y.0,
    # subjects ("5.7") and basic codes are not
    specific = key.count(".") == 2 and not key.endswith(".0")
    out: list[tuple[str, _CodeRule]] = []
    keys = [key.replace("X", "4", 1), key.replace("X", "5", 1)] if key[0] == "X" else [key]
    for k in keys:
        temp = k[0] == "4"
        prefix = "code." if "." not in k else "enh."
        out.append((k, _CodeRule(prefix + k, reason, temp_cls if temp else cls, specific, refine)))
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
