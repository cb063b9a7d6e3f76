"""models.ingest.providers: provider and MX-operator resolution from the data table."""

from __future__ import annotations

import pytest

from models.ingest.providers import OTHER, ProviderResolver, default_table, parse_table


@pytest.mark.parametrize(
    ("domain", "mx", "provider", "operator"),
    [
        ("gmail.com", "", "google", "google"),
        ("gmail.com", "gmail-smtp-in.l.google.com", "google", "google"),
        ("startup.io", "aspmx.l.google.com", "google", "google"),
        ("hotmail.com", "", "microsoft", "microsoft"),
        ("contoso.de", "contoso-de.mail.protection.outlook.com", "microsoft", "microsoft"),
        ("aol.com", "", "yahoo", "yahoo"),
        ("icloud.com", "mx01.mail.icloud.com", "apple", OTHER),
        ("web.de", "mx-ha03.web.de", "gmx", OTHER),
        ("acme.de", "eu-smtp-inbound-1.mimecast.com", OTHER, "mimecast"),
        ("globex.com", "mx0a-00123401.pphosted.com", OTHER, "proofpoint"),
        ("initech.com", "d123.ess.barracudanetworks.com", OTHER, "barracuda"),
        ("umbrella.com", "esa1.umbrella.iphmx.com", OTHER, "cisco"),
        ("hooli.co.uk", "cluster1.eu.messagelabs.com", OTHER, "broadcom"),
        ("small.example", "mx1.small.example", OTHER, OTHER),
        ("notgoogle.com", "mx.notgoogle.com", OTHER, OTHER),  # suffix match respects labels
        ("evil.com", "google.com.evil.com", OTHER, OTHER),
    ],
)
def test_resolution(domain: str, mx: str, provider: str, operator: str) -> None:
    assert ProviderResolver().resolve(domain, mx) == (provider, operator)


def test_table_lists_the_issue_providers() -> None:
    t = default_table()
    for p in ("google", "microsoft", "yahoo", "apple", "comcast", "gmx"):
        assert p in t.providers
    for o in ("google", "microsoft", "mimecast", "proofpoint", "barracuda", "cisco"):
        assert o in t.operators


@pytest.mark.parametrize(
    "doc",
    [
        {"providers": []},
        {"providers": {"x": []}},
        {"providers": {"x": {"domains": "gmail.com"}}},
        {"operators": {"y": {"mx_suffixes": [1]}}},
    ],
)
def test_bad_tables_are_rejected(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_table(doc, "t.toml")
