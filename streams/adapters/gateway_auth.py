"""Who may post to ``repmon gateway`` (docs/gateway.md, "Authentication"): the shared token, the
SendGrid Signed Event Webhook, and which SNS subscription URLs the gateway will confirm.

* :func:`check_credentials`: ``Authorization: Bearer <token>`` or ``Authorization: Basic
  base64(<any user>:<token>)`` (Amazon SNS and SendGrid can only put credentials in the URL,
  ``https://user:token@host/...``, which they send as Basic), compared in constant time.
* :class:`SendGridVerifier`: SendGrid signs ``timestamp + raw body`` with ECDSA P-256 over
  SHA-256; the signature (base64, DER) is in ``X-Twilio-Email-Event-Webhook-Signature``, the
  timestamp (epoch seconds) in ``X-Twilio-Email-Event-Webhook-Timestamp``, and the public key
  that SendGrid shows under Mail Settings is base64 of the DER SubjectPublicKeyInfo (the body of
  a PEM file; a whole PEM is accepted too). Signatures older or newer than ``max_skew_s`` are
  refused as stale (a replay window).
* :func:`sns_subscribe_url_problem`: the only URLs the gateway GETs to confirm an SNS
  subscription (https, ``sns.<region>.amazonaws.com[.cn]``, ``Action=ConfirmSubscription``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

#: SendGrid's signature headers
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

#: the hosts of SNS's SubscribeURL (commercial regions and China)
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?\Z")


def check_credentials(expected: str, header: str | None) -> tuple[str, str] | None:
    """None when the ``Authorization`` header carries the token (Bearer, or Basic with the
    token as password); else ``(reason, message)``, reason ``missing_credentials`` or
    ``wrong_token``. No token configured: None (open)."""
    if not expected:
        return None
    if not header:
        return (
            "missing_credentials",
            "this endpoint needs 'Authorization: Bearer <token>' or Basic credentials with the "
            "token as password (REPMON_GATEWAY_TOKEN)",
        )
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        given = value.encode()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "wrong_token", "malformed Basic credentials"
        given = decoded.partition(b":")[2]
    else:
        return "missing_credentials", f"unsupported authorization scheme {scheme[:20]!r}"
    if not hmac.compare_digest(given, expected.encode()):
        return "wrong_token", "wrong token"
    return None


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 of the DER SubjectPublicKeyInfo (as SendGrid shows
    it) or a PEM file's text. ValueError unless it is an ECDSA P-256 public key."""
    t = text.strip()
    try:
        if t.startswith("-----BEGIN"):
            key = load_pem_public_key(t.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(t.split()), validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ValueError(f"not a public key (base64 DER or PEM): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the SendGrid verification key must be an ECDSA P-256 public key")
    return key


class SendGridVerifier:
    """Checks SendGrid's Signed Event Webhook signatures (see the module docstring)."""

    __slots__ = ("key", "max_skew_s")

    def __init__(self, public_key: str, max_skew_s: float = 300.0) -> None:
        self.key = load_public_key(public_key)
        self.max_skew_s = float(max_skew_s)

    def check(
        self, signature: str | None, timestamp: str | None, body: bytes, now: float
    ) -> tuple[str, str] | None:
        """None when ``signature`` is SendGrid's over ``timestamp + body`` and ``timestamp`` is
        within ``max_skew_s`` of ``now``; else ``(reason, message)`` with reason
        ``missing_signature``, ``bad_signature`` or ``stale_signature``."""
        if not signature or not timestamp:
            return "missing_signature", f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
        ts_text = timestamp.strip()
        if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
            return "bad_signature", f"{TIMESTAMP_HEADER} is not epoch seconds"
        try:
            sig = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "bad_signature", f"{SIGNATURE_HEADER} is not base64"
        try:
            self.key.verify(sig, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad_signature", "the signature does not match the body and timestamp"
        skew = now - int(ts_text)
        if not math.isfinite(skew) or abs(skew) > self.max_skew_s:
            return (
                "stale_signature",
                f"signed {skew:+.0f} s from now, more than {self.max_skew_s:.0f} s "
                "(REPMON_GATEWAY_SENDGRID_MAX_SKEW_S)",
            )
        return None


def sns_subscribe_url_problem(url: object) -> str | None:
    """None when ``url`` is an SNS ConfirmSubscription URL the gateway may GET; else why not
    (the gateway never fetches a URL a request names unless it is SNS's own)."""
    if not isinstance(url, str) or len(url) > 4096:
        return "no SubscribeURL"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "SubscribeURL does not parse"
    if parts.scheme != "https":
        return "SubscribeURL is not https"
    if port not in (None, 443) or parts.username or parts.password:
        return "SubscribeURL has a port or credentials"
    if not _SNS_HOST.match(host):
        return f"SubscribeURL host {host[:80]!r} is not sns.<region>.amazonaws.com"
    if parse_qs(parts.query).get("Action") != ["ConfirmSubscription"]:
        return "SubscribeURL is not a ConfirmSubscription action"
    return None
