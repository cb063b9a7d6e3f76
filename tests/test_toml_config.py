"""The shared TOML reading of the policy configurations (models/act/toml_config.py), and the
messages the suppression, throttle and KumoMTA loaders build on it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models.act.kumo import KumoConfigError, loads_kumo_config
from models.act.suppression_config import SuppressionConfigError
from models.act.suppression_config import load_config as load_suppression
from models.act.suppression_config import loads_config as loads_suppression
from models.act.throttle_config import ThrottleConfigError
from models.act.throttle_config import load_config as load_throttle
from models.act.throttle_config import loads_config as loads_throttle
from models.act.toml_config import NOT_TOML, load_toml, loads_toml


class _Bad(ValueError):
    pass


def _decode_message(text: str) -> str:
    """tomllib's own message for ``text`` (which must not decode)."""
    with pytest.raises(tomllib.TOMLDecodeError) as ei:
        tomllib.loads(text)
    return str(ei.value)


@dataclass(frozen=True)
class Case:
    id: str
    #: the file's content; None: no file at the path; "<dir>": the path is a directory
    content: str | None
    #: the document read, or None when an error is expected
    doc: dict[str, Any] | None
    #: what follows "<path>: " in the message when an error is expected
    message: str | None


def _bad(id_: str, text: str) -> Case:
    return Case(id_, text, None, f"{NOT_TOML}: {_decode_message(text)}")


CASES = [
    Case("good", '[a]\nb = 1\nc = ["x", "y"]\n', {"a": {"b": 1, "c": ["x", "y"]}}, None),
    Case("empty file", "", {}, None),
    Case("utf-8 text", 'name = "Zoë"\n', {"name": "Zoë"}, None),
    _bad("unclosed table", "[a\n"),
    _bad("no value", "a =\n"),
    _bad("key twice", "a = 1\na = 2\n"),
    Case("latin-1 bytes", "<latin-1>", None, f"{NOT_TOML}: not UTF-8 at byte 10"),
    Case("missing file", None, None, "cannot read: No such file or directory"),
    Case("a directory", "<dir>", None, "cannot read: Is a directory"),
]


def _place(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "policy.toml"
    if case.content == "<dir>":
        path.mkdir()
    elif case.content == "<latin-1>":
        path.write_bytes('name = "Zoë"\n'.encode("latin-1"))
    elif case.content is not None:
        path.write_text(case.content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_load_toml(case: Case, as_str: bool, tmp_path: Path) -> None:
    path = _place(tmp_path, case)
    arg: Path | str = str(path) if as_str else path
    if case.doc is not None:
        assert load_toml(arg, _Bad) == case.doc
        return
    with pytest.raises(_Bad) as ei:
        load_toml(arg, _Bad)
    assert str(ei.value) == f"{path}: {case.message}"
    # the message says it all: the OSError / TOMLDecodeError is not chained
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


TEXT_CASES = [c for c in CASES if c.content not in (None, "<dir>", "<latin-1>")]


@pytest.mark.parametrize("case", TEXT_CASES, ids=[c.id for c in TEXT_CASES])
def test_loads_toml(case: Case) -> None:
    assert case.content is not None
    if case.doc is not None:
        assert loads_toml(case.content, "inline", _Bad) == case.doc
        return
    with pytest.raises(_Bad) as ei:
        loads_toml(case.content, "the-source-name", _Bad)
    assert str(ei.value) == f"the-source-name: {case.message}"
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_the_invalid_wording_and_the_error_factory() -> None:
    made: list[str] = []

    def factory(msg: str) -> Exception:
        made.append(msg)
        return _Bad(msg.upper())

    with pytest.raises(_Bad, match=r"^SRC: INVALID TOML: "):
        loads_toml("[x\n", "src", factory, invalid="invalid TOML")
    assert made == ["src: invalid TOML: " + _decode_message("[x\n")]


# -- the policy loaders built on it: the same messages as before, with their own error type --

Loader = Callable[[Path], object]
TextLoader = Callable[[str, str], object]

FILE_LOADERS: list[tuple[str, Loader, type[Exception]]] = [
    ("suppression", load_suppression, SuppressionConfigError),
    ("throttle", load_throttle, ThrottleConfigError),
]
TEXT_LOADERS: list[tuple[str, TextLoader, type[Exception], str]] = [
    ("suppression", loads_suppression, SuppressionConfigError, "not valid TOML"),
    ("throttle", loads_throttle, ThrottleConfigError, "not valid TOML"),
    ("kumo", loads_kumo_config, KumoConfigError, "invalid TOML"),
]
ERROR_CASES = [c for c in CASES if c.message is not None]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
@pytest.mark.parametrize(
    ("loader", "error"), [(f, e) for _, f, e in FILE_LOADERS], ids=[n for n, _, _ in FILE_LOADERS]
)
def test_policy_file_loaders(
    case: Case, loader: Loader, error: type[Exception], tmp_path: Path
) -> None:
    path = _place(tmp_path, case)
    with pytest.raises(error) as ei:
        loader(path)
    assert str(ei.value) == f"{path}: {case.message}"


@pytest.mark.parametrize("case", [c for c in TEXT_CASES if c.message], ids=lambda c: c.id)
@pytest.mark.parametrize(
    ("loader", "error", "wording"),
    [(f, e, w) for _, f, e, w in TEXT_LOADERS],
    ids=[n for n, _, _, _ in TEXT_LOADERS],
)
def test_policy_text_loaders(
    case: Case, loader: TextLoader, error: type[Exception], wording: str
) -> None:
    assert case.content is not None and case.message is not None
    with pytest.raises(error) as ei:
        loader(case.content, "my-policy.toml")
    assert str(ei.value) == f"my-policy.toml: {case.message.replace(NOT_TOML, wording, 1)}"


def test_policy_file_loaders_read_a_good_file(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[suppression]\nforget_after_days = 7\n", encoding="utf-8")
    assert load_suppression(f).forget_after_s == 7 * 86_400.0
    f.write_text("[throttle]\nexpire_s = 7200.0\n", encoding="utf-8")
    assert load_throttle(f).globals.expire_s == 7200.0
