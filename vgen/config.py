"""Typed configs: dataclasses loaded from YAML, with dotted ``key=value`` overrides.

A config class is a plain dataclass whose fields carry their constraints in metadata
(:func:`param`). Loading is strict: an unknown key, a value of the wrong type or one out
of range raises :class:`ConfigError` with one line naming the key and what is allowed, and
the CLI turns that into exit code 2 without a traceback. Supported field types: bool, int,
float, str, ``Literal[...]``, ``X | None``, ``list[X]`` / ``tuple[X, ...]``, ``dict[str, X]``
and nested config dataclasses.

Rules every field gets, whatever its metadata says (see :func:`param` for the ones it adds):

* numbers are finite (NaN and inf are refused, also as list items and mapping values) and
  integers fit in 64 bits;
* a seed (an int field named ``seed`` or ``*_seed``) lies in ``0 <= seed < 2**32``
  (:data:`SEED_LIMIT`): torch's CPU generator, which draws the initial weights and every
  sample's noise, keeps only the low 32 bits of its seed, so larger seeds would silently
  repeat smaller ones (and values of 2**63 and up overflow torch / numpy outright);
* a string is at most 4096 characters (``max_len`` changes that), holds no NUL byte and no
  part between slashes longer than 255 bytes: every string field of a vgen config is a path
  or a name, and the OS refuses such paths (ENAMETOOLONG) only deep inside the job.

The YAML reader rejects duplicate keys (PyYAML silently keeps the last one, which hides
typos), files over 1 MiB (a config is a few hundred bytes; PyYAML is pure Python and takes
seconds per megabyte), and accepts ``1e-4`` as a float for float fields (YAML 1.1 would
read a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from vgen.errors import UserError
from vgen.io import atomic_write_text

SEED_LIMIT = 2**32  # seeds lie in [0, SEED_LIMIT): see the module docstring
STR_MAX = 4096  # default longest string value (Linux PATH_MAX)
NAME_MAX = 255  # longest part of a path between slashes, in UTF-8 bytes (Linux NAME_MAX)
FILE_MAX = 1 << 20  # largest config file, bytes
_MESSAGE_MAX = 2000  # a message quoting user text is cut to this many characters


class ConfigError(UserError, ValueError):
    """A user error in a config file or override; its message is one line (and a short one)."""

    def __init__(self, message: str):
        super().__init__(message)
        text = self.args[0]
        if len(text) > _MESSAGE_MAX:  # a 10 MB key or YAML tag quoted by a message must not flood the terminal
            text = text[: _MESSAGE_MAX // 2] + " ... " + text[-_MESSAGE_MAX // 2:]
            self.args = (text,)


def param(default: Any = dataclasses.MISSING, *, help: str = "", ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, min_len: int | None = None, max_len: int | None = None,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help text and optional constraints.

    ``ge`` / ``le`` (inclusive) and ``gt`` / ``lt`` (exclusive) bound a number, or every item of
    a list and every value of a mapping; ``min_len`` / ``max_len`` bound the number of items of a
    list or mapping, or the characters of a string (strings default to at most :data:`STR_MAX`).
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "min_len": min_len, "max_len": max_len}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 60, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def _show(value: Any) -> str:
    text = _REPR.repr(value)  # bounded: YAML aliases can build a value whose full repr is gigabytes
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_kind(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_kind(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a section (a mapping)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {prefix + match[0]!r}?)" if match else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (converting only where it is lossless) and return it."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key!r} must be {_kind(tp)}, got {_show(value)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        hint = _suggest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
        raise ConfigError(f"{key!r} = {_show(value)} is not allowed: choose one of "
                          f"{', '.join(str(a) for a in allowed)}{hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key!r} must be {_kind(tp)}, got {_show(value)}")
        item = get_args(tp)[0]
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} must be {_kind(tp)}, got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{key!r} keys must be strings, got {_show(k)}")
        return {k: _coerce(v, get_args(tp)[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} is a section: give a mapping of its keys, got {_show(value)}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                raise ConfigError(f"{key!r} must be a finite number, got {_show(value)}") from None
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    else:
        raise TypeError(f"unsupported config field type {tp!r} for {key!r}")
    raise ConfigError(f"{key!r} must be {_kind(tp)}, got {_show(value)}")


_BOUNDS = (("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
           ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b))
_INT64 = 2**63


def _is_seed(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf == "seed" or leaf.endswith("_seed")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _check_length(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    lo, hi = meta.get("min_len"), meta.get("max_len")
    is_str = isinstance(value, str)
    if is_str and hi is None:
        hi = STR_MAX
    if lo is None and hi is None:
        return
    n, what = len(value), "character" if is_str else "item"
    if lo is not None and lo == hi and n != lo:
        raise ConfigError(f"{key!r} must have exactly {_count(lo, what)}, got {n}: {_show(value)}")
    if lo is not None and n < lo:
        raise ConfigError(f"{key!r} must have at least {_count(lo, what)}, got {n}: {_show(value)}")
    if hi is not None and n > hi:
        raise ConfigError(f"{key!r} must have at most {_count(hi, what)}, got {n}: {_show(value)}")


def _check_string(value: str, key: str) -> None:
    if "\0" in value:
        raise ConfigError(f"{key!r} = {_show(value)} holds a NUL byte (a path or a name cannot)")
    for part in value.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise ConfigError(f"{key!r} = {_show(value)} has a part of {len(part)} characters between slashes: a "
                              f"file or folder name is at most {NAME_MAX} bytes")


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str, item: bool = False) -> None:
    """The generic rules of the module docstring plus ``meta``'s bounds, on a value and on every
    item of a list or mapping (``item``: ``value`` is one such item; lengths are the field's)."""
    if not item:
        if isinstance(value, (list, tuple, dict, str)):
            _check_length(value, meta, key)
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_range(v, meta, f"{key}[{i}]", item=True)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                _check_string(k, f"{key} key")
            _check_range(v, meta, f"{key}.{k}", item=True)
        return
    if isinstance(value, str):
        if item and len(value) > STR_MAX:
            raise ConfigError(f"{key!r} must have at most {STR_MAX} characters, got {len(value)}: {_show(value)}")
        _check_string(value, key)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key!r} must be a finite number, got {value}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if any(meta.get(name) is not None and not ok(value, meta[name]) for name, _, ok in _BOUNDS):
        limits = " and ".join(f"{word} {meta[name]}" for name, word, _ in _BOUNDS if meta.get(name) is not None)
        raise ConfigError(f"{key!r} = {_show(value)} is out of range: must be {limits}")
    if isinstance(value, int) and _is_seed(key) and not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key!r} = {_show(value)} is out of range: a seed must be >= 0 and < {SEED_LIMIT} "
                          f"(2**32, what torch's generator keeps)")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{key!r} = {_show(value)} is out of range: an integer must fit in 64 bits "
                          f"(-2**63 <= value < 2**63)")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections included."""
    out = []
    for name, (_, tp) in _fields(cls).items():
        out.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            out += valid_keys(tp, prefix + name + ".")
    return out


def _unknown(key: str, cls: type, prefix: str, root: type | None = None) -> ConfigError:
    here = list(_fields(cls))
    hint = _suggest(key.rsplit(".", 1)[-1], here, prefix)
    if not hint and root is not None:
        hint = _suggest(key, valid_keys(root))
    where = f"in {prefix[:-1]!r}" if prefix else "at the top level"
    return ConfigError(f"unknown key {_show(key)}{hint}; valid keys {where}: {', '.join(here)}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build a config from a plain mapping, strictly (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix[:-1] or 'the config'} must be a mapping of keys, got {_show(data)}")
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            where = f" in {prefix[:-1]!r}" if prefix else ""
            raise ConfigError(f"config keys must be strings, got {_show(key)}{where}")
        if key not in fields:
            raise _unknown(prefix + key, cls, prefix)
        f, tp = fields[key]
        kwargs[key] = _coerce(value, tp, prefix + key)
        _check_range(kwargs[key], f.metadata, prefix + key)
    for name, (f, _) in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {prefix + name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check()  # cross-field rules; raises ConfigError
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, and places every value it cannot construct."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, ConfigError):
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # PyYAML's own constructors fail like this on `2020-13-45`, `!!int ''`, `!!bool x`, 5000-digit ints
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            why = f" ({e})" if isinstance(e, (ValueError, OverflowError)) else ""  # the others say nothing useful
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(node.value)} as {tag}{why}", node.start_mark) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    if not isinstance(node, yaml.MappingNode):  # `!!map [1]`
        raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found a {node.id}", node.start_mark)
    loader.flatten_mapping(node)
    out = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a key must be a plain value") from None
        if key in out:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {_show(key)}")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str = "config") -> Any:
    """YAML text -> data, with one-line errors for every malformation."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = str(e.problem or e.context)
        why = why if len(why) <= 500 else why[:247] + "..." + why[-250:]  # PyYAML quotes whole tags and anchors
        raise ConfigError(f"{source}: invalid YAML{where}: {why}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML config file; missing, unreadable or malformed files raise ConfigError."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(FILE_MAX + 1)  # bounded: a config path may name /dev/zero or a 10 GB file
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(p)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {str(p)!r}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
    if len(raw) > FILE_MAX:
        raise ConfigError(f"{p}: larger than {FILE_MAX >> 20} MiB; a config file is a few hundred bytes of YAML "
                          "(is this the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    return parse_yaml(text, str(p))


# ---------------------------------------------------------------- overrides


def _field_type(cls: type, dotted: str) -> Any:
    """The type of the field at a dotted key, or ConfigError naming the unknown part."""
    tp: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{prefix!r} is not a section; cannot set {dotted!r}")
        fields = _fields(tp)
        if part not in fields:
            raise _unknown(dotted, tp, prefix + "." if prefix else "", root=cls)
        tp = fields[part][1]
    return tp


def _parse_override_value(text: str, tp: Any, key: str) -> Any:
    """Parse the text of an override for a field of type ``tp``; strings are taken verbatim."""
    args = get_args(tp)
    optional = get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional and text.strip().lower() in ("null", "none", "~"):
        return None
    plain = [a for a in args if a is not type(None)] if optional else [tp]
    if len(plain) == 1 and plain[0] is str:
        return text
    if len(plain) == 1 and get_origin(plain[0]) is Literal and all(isinstance(a, str) for a in get_args(plain[0])):
        return text
    if len(plain) == 1 and plain[0] is bool:
        low = text.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key!r} must be true or false, got {_show(text)}")
    return parse_yaml(text, f"override {key}")


def apply_overrides(cls: type, data: dict, overrides: list[str]) -> dict:
    """Return ``data`` with each ``a.b.c=value`` override set (checked against ``cls``)."""
    data = dict(data)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {_show(item)} must look like key=value (e.g. run.seed=1)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"override {_show(item)}: {_show(key)} is not a dotted key like run.seed")
        tp = _field_type(cls, key)
        if dataclasses.is_dataclass(tp):
            example = f"{key}.{next(iter(_fields(tp)))}=..."
            raise ConfigError(f"{key!r} is a section; set its keys one by one, e.g. {example}")
        value = _parse_override_value(text, tp, key)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part, {})
            if not isinstance(child, dict):  # don't let an override hide a malformed section
                raise ConfigError(f"{'.'.join(parts[:i + 1])!r} is a section: give a mapping of its keys, "
                                  f"got {_show(child)}")
            node[part] = dict(child)
            node = node[part]
        node[parts[-1]] = value
    return data


def load(cls: type, path: str | Path | None = None, overrides: list[str] = (), recipe: str | None = None) -> Any:
    """Config of type ``cls`` from an optional YAML file plus overrides.

    A file may carry a top-level ``recipe:`` naming the job it is for; when ``recipe`` is
    given, a file for another recipe is refused.
    """
    data = {} if path is None else read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {_show(data)}")
    if "recipe" in data:
        data = dict(data)
        found = data.pop("recipe")
        if recipe is not None and found != recipe:
            raise ConfigError(f"{path}: this config is for recipe {_show(found)}, not {recipe!r}")
    return from_dict(cls, apply_overrides(cls, data, list(overrides)))


def dump(obj: Any, recipe: str | None = None) -> str:
    """YAML text of a config (with its recipe first), loadable again by :func:`load`."""
    data = to_dict(obj)
    if recipe is not None:
        data = {"recipe": recipe, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def save(obj: Any, path: str | Path, recipe: str | None = None) -> None:
    """Write the resolved config atomically."""
    atomic_write_text(path, dump(obj, recipe))
