"""Reply normalisation (addresses, times, IPs and ids masked) and SMTP code parsing.

The normalised text is the classifier's cache key and the evidence text of incidents.
"""

from __future__ import annotations

import re
from typing import Final

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
#: An IPv4-like token right after "- " that starts with 4. or 5. is not an ip4: Yahoo appends
#: its internal status code that way ("... user complaints - 4.16.55.1; see
#: https://postmaster.yahooinc.com/error-codes"); masking it would make it look like the
#: sending IP the same reply names.
_RE_VARIABLE: Final = re.compile(
    r"(?<![^\s<>()\[\]{}\"',;=&?/:|])(?=[^\s\d@\[:]*+[\d@\[:])(?:"
    r"(?P<addr><?[^\s<>()\[\]{}\"',;:@]*+@[^\s<>()\[\]{}\"',;:]*>?)"
    rf"|(?P<host>\[(?:[{_AZ}0-9_-]+\.)+[{_AZ}0-9_-]+\.[{_AZ}0-9-]*[{_AZ}][{_AZ}0-9-]*\])"
    r"|(?P<time>\d{4}-\d\d-\d\d(?:[tT ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:[zZ]|[+-]\d\d:?\d\d)?)?"
    r"|\d{1,2}:\d\d:\d\d(?:[.,]\d+)?)"
    r"|(?P<ip4>(?!(?<=- )[45]\.)\d{1,3}(?:\.\d{1,3}){3})(?![\w])"
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


#: a reply's own codes at its start: ``550 5.7.1 ...``, ``550-5.7.1 ...``, ``550 550 5.7.1 ...``
_RE_LEADING_ENH: Final = re.compile(
    r"\s*(?:[245]\d\d[\s-]+){0,2}([245]\.\d{1,3}\.\d{1,3})(?!\d|\.\d)"
)


def leading_enhanced_code(text: str) -> str | None:
    """The enhanced status code a reply starts with (after its basic code), or None."""
    m = _RE_LEADING_ENH.match(text)
    return m.group(1) if m else None


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
