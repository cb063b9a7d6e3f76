"""Reading a policy's TOML document (suppression, throttle, KumoMTA mapping) into plain data.

Each policy module validates its own document and has its own error type; what they share is
the step before: read the file or take the text, decode it with :mod:`tomllib`, and turn a file
that cannot be read or is not TOML into that error type, with a message that starts with the
file (or source) name::

    <source>: cannot read: <why>
    <source>: not valid TOML: <tomllib's message>
    <source>: not valid TOML: not UTF-8 at byte <offset>

``error`` is the module's error type (any callable taking the message); the original exception
is not chained (``from None``): the message says it all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

#: what a document that does not decode is called in the message (the default)
NOT_TOML: Final[str] = "not valid TOML"


def loads_toml(
    text: str, source: str, error: Callable[[str], Exception], *, invalid: str = NOT_TOML
) -> dict[str, Any]:
    """The TOML document in ``text``; ``error(f"{source}: {invalid}: ...")`` when it does not
    decode."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: {invalid}: {exc}") from None


def load_toml(
    path: Path | str, error: Callable[[str], Exception], *, invalid: str = NOT_TOML
) -> dict[str, Any]:
    """The TOML document in the file at ``path`` (read as bytes, decoded as UTF-8 by
    :func:`tomllib.load`); ``error`` with ``str(path)`` first in the message when the file
    cannot be read or does not decode."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: {invalid}: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (tomllib decodes the bytes itself)
        raise error(f"{source}: {invalid}: not UTF-8 at byte {exc.start}") from None


__all__ = ["NOT_TOML", "load_toml", "loads_toml"]
