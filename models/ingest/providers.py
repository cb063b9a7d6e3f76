"""Mailbox provider and MX operator lookup from ``models/ingest/data/providers.toml``.

``provider`` answers "whose rate limits and reputation system decide this delivery?" (Google for
gmail.com and for any domain whose MX is at google.com). ``operator`` answers "who runs the MX of
this domain?" and is what the B2B false-bounce detector groups by (mimecast, proofpoint, ...).
Lookups are cached: the number of distinct domains and MX hosts in a stream is small compared with
the number of events.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

OTHER = "other"


@dataclass(frozen=True, slots=True)
class ProviderTable:
    domain_provider: dict[str, str]
    provider_suffixes: tuple[tuple[str, str], ...]  # (suffix, provider), longest first
    operator_suffixes: tuple[tuple[str, str], ...]  # (suffix, operator), longest first

    @property
    def providers(self) -> tuple[str, ...]:
        names = set(self.domain_provider.values()) | {p for _, p in self.provider_suffixes}
        return tuple(sorted(names))

    @property
    def operators(self) -> tuple[str, ...]:
        return tuple(sorted({o for _, o in self.operator_suffixes}))


def _suffix_match(host: str, table: tuple[tuple[str, str], ...]) -> str | None:
    host = host.lower().rstrip(".")
    for suffix, name in table:
        if host == suffix or host.endswith("." + suffix):
            return name
    return None


def parse_table(data: dict[str, Any], source: str = "<providers>") -> ProviderTable:
    """Validate and index a providers document (the TOML shape of providers.toml)."""
    domain_provider: dict[str, str] = {}
    psuf: list[tuple[str, str]] = []
    osuf: list[tuple[str, str]] = []
    for section, out in (("providers", psuf), ("operators", osuf)):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"{source}: [{section}] must be a table")
        for name, spec in entries.items():
            if not isinstance(spec, dict):
                raise ValueError(f"{source}: [{section}.{name}] must be a table")
            for key in ("domains", "mx_suffixes"):
                vals = spec.get(key, [])
                if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
                    raise ValueError(f"{source}: {section}.{name}.{key} must be a list of strings")
            if section == "providers":
                for d in spec.get("domains", []):
                    domain_provider[d.lower()] = name
            for s in spec.get("mx_suffixes", []):
                out.append((s.lower().rstrip("."), name))
    psuf.sort(key=lambda t: -len(t[0]))
    osuf.sort(key=lambda t: -len(t[0]))
    return ProviderTable(domain_provider, tuple(psuf), tuple(osuf))


@lru_cache(maxsize=1)
def default_table() -> ProviderTable:
    text = resources.files("models.ingest").joinpath("data/providers.toml").read_text("utf-8")
    return parse_table(tomllib.loads(text), "models/ingest/data/providers.toml")


def load_table(path: Path) -> ProviderTable:
    with path.open("rb") as fh:
        return parse_table(tomllib.load(fh), str(path))


#: MX hosts whose suffix matches a ProviderResolver remembers at most (about 200 bytes each)
MX_CACHE_SIZE = 16_384


class ProviderResolver:
    """(domain, mx_host) -> (provider, operator) resolution.

    The domain part is one dict lookup in the table; the MX host's suffix matches (a scan of
    the suffix tables) are cached per MX host, at most ``cache_size`` of them (the cache is
    emptied when full). Nothing is kept per domain: a stream of a million distinct domains
    behind a few MX hosts costs a few cache entries (docs/performance.md, "Memory in the live
    worker").
    """

    def __init__(self, table: ProviderTable | None = None, cache_size: int = MX_CACHE_SIZE) -> None:
        self.table = t = table or default_table()
        self.cache_size = max(1, cache_size)
        self._operators = frozenset(t.operators)
        #: mx_host -> (provider of its suffix, operator of its suffix), None where none matches
        self._mx: dict[str, tuple[str | None, str | None]] = {}

    def resolve(self, domain: str, mx_host: str = "") -> tuple[str, str]:
        """Return ``(provider, operator)`` for a recipient domain and optional MX host.

        The provider comes from the domain table, else from the MX host's suffix, else "other".
        The operator comes from the MX host's suffix; without an MX host, a consumer domain's
        provider stands in for it (gmail.com is operated by google), else "other".
        """
        provider = self.table.domain_provider.get(domain)
        operator = None
        if mx_host:
            hit = self._mx.get(mx_host)
            if hit is None:
                t = self.table
                hit = (
                    _suffix_match(mx_host, t.provider_suffixes),
                    _suffix_match(mx_host, t.operator_suffixes),
                )
                if len(self._mx) >= self.cache_size:
                    self._mx.clear()
                self._mx[mx_host] = hit
            if provider is None:
                provider = hit[0]
            operator = hit[1]
        if operator is None and provider is not None and provider in self._operators:
            operator = provider
        return (provider or OTHER, operator or OTHER)

    def cache_len(self) -> int:
        """MX hosts remembered now."""
        return len(self._mx)
