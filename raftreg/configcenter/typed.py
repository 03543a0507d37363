"""`dataclass_parser`: a service's settings as a frozen dataclass, checked.

Names map to fields by nesting: '.' separates levels, and a field whose type is itself a
(frozen) dataclass is a section. For example

    @dataclass(frozen=True)
    class RateLimit:
        rps: float = 100.0
        burst: int = 20

    @dataclass(frozen=True)
    class Gateway:
        ratelimit: RateLimit = RateLimit()
        policy: Literal["round_robin", "least_loaded"] = "round_robin"

reads the settings `ratelimit.rps`, `ratelimit.burst` and `policy`. A missing setting takes
the field's default (inside a section: the field of the section's default instance, when the
section field has one, else the section class's field default); a missing setting without any
default is an error.

Accepted field types: `bool`, `int` (not a bool), `float` (an int is converted), `str`,
`None`, `Any`, `list[X]` / `tuple[X, ...]` (a JSON list), `dict[str, X]` (a JSON object),
`Literal[...]`, unions such as `X | None` (first alternative that fits), nested frozen
dataclasses as sections. Anything else raises `TypeError` when the parser is made. Type hints
are resolved with `typing.get_type_hints`, so the dataclasses must be defined at module level.

The parser raises one `ValueError` listing every problem (unknown setting, wrong type, missing
setting); a `ValueError` / `TypeError` from the dataclass's own `__post_init__` (range checks)
is reported the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

D = TypeVar("D")
Check = Callable[[Any], Any]  # the value converted, or raises _Mismatch


class _Mismatch(Exception):
    pass


def _describe(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _checker(tp: Any, where: str) -> Check:
    """A function that validates (and converts) a decoded JSON value for type `tp`."""
    if tp is Any:
        return lambda v: v
    if tp is type(None) or tp is None:
        return _exact(type(None), "null")
    if tp is bool:
        return _exact(bool, "bool")
    if tp is str:
        return _exact(str, "str")
    if tp is int:

        def check_int(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, int):
                raise _Mismatch(f"expected int, got {_describe(v)} {v!r}")
            return v

        return check_int
    if tp is float:

        def check_float(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _Mismatch(f"expected float, got {_describe(v)} {v!r}")
            return float(v)

        return check_float
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (list, tuple) or origin in (list, tuple):
        container = origin or tp
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"{where}: only tuple[X, ...] is supported, not {tp}")
        item = _checker(args[0], where) if args else (lambda v: v)

        def check_seq(v: Any) -> Any:
            if not isinstance(v, list):
                raise _Mismatch(f"expected a list, got {_describe(v)} {v!r}")
            try:
                items = [item(x) for x in v]
            except _Mismatch as e:
                raise _Mismatch(f"list item: {e}") from None
            return tuple(items) if container is tuple else items

        return check_seq
    if tp is dict or origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: only dict[str, X] is supported, not {tp}")
        value = _checker(args[1], where) if args else (lambda v: v)

        def check_dict(v: Any) -> Any:
            if not isinstance(v, dict):
                raise _Mismatch(f"expected an object, got {_describe(v)} {v!r}")
            try:
                return {k: value(x) for k, x in v.items()}
            except _Mismatch as e:
                raise _Mismatch(f"object member: {e}") from None

        return check_dict
    if origin is typing.Literal:
        allowed = args

        def check_literal(v: Any) -> Any:
            if not any(type(v) is type(a) and v == a for a in allowed):
                raise _Mismatch(f"expected one of {list(allowed)!r}, got {v!r}")
            return v

        return check_literal
    if origin is typing.Union or origin is types.UnionType:
        alternatives = [_checker(a, where) for a in args]

        def check_union(v: Any) -> Any:
            problems: list[str] = []
            for alt in alternatives:
                try:
                    return alt(v)
                except _Mismatch as e:
                    problems.append(str(e))
            raise _Mismatch(" or ".join(problems))

        return check_union
    raise TypeError(f"{where}: unsupported setting type {tp!r}")


def _exact(cls: type, name: str) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not cls:
            raise _Mismatch(f"expected {name}, got {_describe(v)} {v!r}")
        return v

    return check


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    check: Check | None  # None for a section
    section: _Schema | None
    has_default: bool
    default: Any  # the default value, or for a section its default instance or factory


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type
    fields: tuple[_Field, ...]


def _schema(cls: type, where: str) -> _Schema:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: {cls!r} is not a dataclass")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{where}: {cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls)
    out: list[_Field] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if "." in f.name:
            raise TypeError(f"{where}: field name {f.name!r} contains '.'")
        tp = hints[f.name]
        path = f"{where}.{f.name}" if where else f.name
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        default: Any = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.append(_Field(f.name, None, _schema(tp, path), has_default, default))
        else:
            out.append(_Field(f.name, _checker(tp, path), None, has_default, default))
    return _Schema(cls, tuple(out))


def _build(
    schema: _Schema,
    entries: Mapping[str, Any],
    path: str,
    base: Any,
    problems: list[str],
) -> Any:
    """An instance of `schema.cls` from `entries` (names relative to `path`), missing fields
    taken from `base` (an instance) or the field defaults; None when there were problems."""
    kwargs: dict[str, Any] = {}
    known = {f.name for f in schema.fields}
    before = len(problems)
    for name in sorted(entries):
        head = name.split(".", 1)[0]
        if head not in known:
            problems.append(f"unknown setting {path + name!r}")
    for f in schema.fields:
        full = path + f.name
        if f.section is not None:
            sub = {
                k[len(f.name) + 1:]: v for k, v in entries.items() if k.startswith(f.name + ".")
            }
            if f.name in entries:
                problems.append(f"{full!r} is a section: set {full}.<name> instead")
            section_base = getattr(base, f.name) if base is not None else f.default
            if callable(section_base) and (
                isinstance(section_base, type) or not dataclasses.is_dataclass(section_base)
            ):
                section_base = section_base()  # a default_factory (e.g. the section class)
            if not sub:
                if base is not None:
                    kwargs[f.name] = section_base
                elif not f.has_default:
                    kwargs[f.name] = _build(f.section, {}, full + ".", None, problems)
                continue
            kwargs[f.name] = _build(f.section, sub, full + ".", section_base, problems)
            continue
        assert f.check is not None
        for k in entries:
            if k.startswith(f.name + "."):
                problems.append(f"unknown setting {path + k!r} ({full!r} is not a section)")
        if f.name in entries:
            try:
                kwargs[f.name] = f.check(entries[f.name])
            except _Mismatch as e:
                problems.append(f"{full}: {e}")
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
        elif not f.has_default:
            problems.append(f"missing setting {full!r}")
    if len(problems) > before:
        return None
    try:
        return schema.cls(**kwargs)
    except (ValueError, TypeError) as e:
        problems.append(f"{path.rstrip('.') or schema.cls.__name__}: {e}")
        return None


def dataclass_parser(cls: type[D]) -> Callable[[Mapping[str, Any]], D]:
    """A parser (for `ConfigWatcher`) that builds a frozen `cls` from a service's settings;
    see the module docstring. `TypeError` now if `cls` has an unsupported field type."""
    schema = _schema(cls, "")

    def parse(settings: Mapping[str, Any]) -> D:
        problems: list[str] = []
        value = _build(schema, settings, "", None, problems)
        if problems:
            raise ValueError("; ".join(problems))
        return typing.cast(D, value)

    parse.__name__ = f"parse_{cls.__name__}"
    parse.__qualname__ = parse.__name__
    return parse
