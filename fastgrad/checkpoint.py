"""fastgrad.save and fastgrad.load: state dicts, and plain containers of them, in a JSON file that any program
can read and that loads without running code (unlike a pickle).

The file is one JSON object:

    {"format": "fastgrad", "version": 1, "data": ...}

and `data` is the saved object, written as JSON writes it, with two additions:

- a float is a JSON number in Python's shortest form that reads back as the same float (`0.1`, `-0.0`,
  `5e-324`, always with a `.` or an exponent, so it never reads back as an int); JSON has no nan or infinity,
  so a float that is not finite is `{"$float": "7ff8000000000000"}`, its 64 IEEE-754 bits in hex. Every
  float comes back bit for bit, nan's sign and payload included;
- a dict key that starts with `$` is written with one more `$` in front (`$x` is `$$x` in the file), so
  that no key of yours can be read as `$float`.

dicts (with str keys), lists, tuples (they load as lists), str, int, float, bool and None can be saved.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import secrets
import struct
from typing import TYPE_CHECKING, Any, NoReturn

from fastgrad.engine import Value, type_name

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Union

    from _typeshed import StrOrBytesPath

    # What save() takes: Mapping and Sequence, not dict and list, so that a dict[str, float] fits (save itself
    # takes only dicts, lists and tuples); and the JSON values load() reads.
    _Saveable = Union[None, float, str, Sequence["_Saveable"], Mapping[str, "_Saveable"]]
    _JSON = Union[None, bool, int, float, str, list["_JSON"], dict[str, "_JSON"]]

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "fastgrad"
VERSION = 1
FLOAT_TAG = "$float"


def save(obj: _Saveable, path: StrOrBytesPath) -> None:
    """Write obj (a state dict, or a dict, list or tuple of them and of plain values) to path as a fastgrad
    save (see the module's doc). Nothing is written unless obj can be saved whole (TypeError or ValueError
    saying what cannot).

    The file is written under a temporary name in the same directory, flushed to disk, then renamed over
    path in one step: a crash or an error while saving leaves the previous file as it was (a crash may
    leave the temporary `.<name>.<random>.tmp` behind).
    """
    path = os.path.realpath(os.fsdecode(path))        # through a symlink: replace the file it points to
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "data": _encoded(obj)}, indent=1, allow_nan=False)
    except RecursionError:       # _encoded and json recurse once per level: load() could not read it back either
        raise ValueError("can't save obj: it is nested too deeply") from None
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    # 0o666 as open() uses: the new file gets the permissions the user's umask gives any new file.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


def load(path: StrOrBytesPath) -> Any:
    """Read what save() wrote to path. Only JSON is parsed: nothing in the file can run code.

    ValueError naming the file and what is wrong if it is not a fastgrad save: not UTF-8, not JSON (an
    empty or truncated file), another format or version, a value JSON cannot hold (NaN, 1e999), a
    repeated key, a malformed `$float`. OSError if it cannot be read.
    """
    path = os.fsdecode(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Invalid(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
        if not text.strip():
            raise _Invalid("the file is empty")
        try:
            document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                                  object_pairs_hook=_object_without_repeated_keys)
        except json.JSONDecodeError as error:
            truncated = " (the file ends too early: truncated?)" if error.pos >= len(text.rstrip()) else ""
            raise _Invalid(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}{truncated}")
        except ValueError as error:          # an int of more digits than Python converts
            raise _Invalid(f"not valid JSON: {error}") from None
        return _decoded(_checked_envelope(document), "data")
    except RecursionError:
        raise ValueError(f"{path}: not a fastgrad save: nested too deeply") from None
    except _Invalid as error:
        raise ValueError(f"{path}: not a fastgrad save: {error}") from None


# ---------------------------------------------------------------------------------------------------
# Writing

def _encoded(obj: object, where: str = "obj", containing: tuple[int, ...] = ()) -> object:
    """obj as plain JSON values (see the module's doc); where names obj in error messages."""
    if obj is None or type(obj) is bool:
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        number = float(obj)
        return number if math.isfinite(number) else {FLOAT_TAG: struct.pack(">d", number).hex()}
    if isinstance(obj, (list, tuple, dict)):
        if id(obj) in containing:
            raise ValueError(f"can't save {where}: it contains itself")
        containing = (*containing, id(obj))
        if not isinstance(obj, dict):
            return [_encoded(item, f"{where}[{i}]", containing) for i, item in enumerate(obj)]
        encoded: dict[str, object] = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"can't save {where}: its key {key!r} is not a str but {type_name(key)!r}")
            key = str.__str__(key)
            encoded["$" + key if key.startswith("$") else key] = _encoded(item, f"{where}[{key!r}]", containing)
        return encoded
    hint = (" (save its .data, or the model's state_dict())" if type(obj) is Value
            else " (save its state_dict())" if hasattr(obj, "state_dict") else "")
    raise TypeError(f"can't save {where}, of type {type_name(obj)!r}{hint}: fastgrad.save takes dicts with str "
                    "keys, lists, tuples, str, int, float, bool and None")


def _sync_directory(directory: str) -> None:
    """Flush the rename itself to disk, where the system allows opening a directory."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------------
# Reading

class _Invalid(Exception):
    """What is wrong with the file; load() turns it into a ValueError naming the file."""


def _refuse_constant(name: str) -> NoReturn:
    raise _Invalid(f"{name} is not JSON (a float that is not finite is written as a {FLOAT_TAG!r} object)")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise _Invalid(f"the number {literal} is beyond a float's range")
    return number


def _object_without_repeated_keys(pairs: list[tuple[str, _JSON]]) -> dict[str, _JSON]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = sorted({key for key, _ in pairs if sum(k == key for k, _ in pairs) > 1})
        raise _Invalid(f"a JSON object repeats the key {repeated[0]!r}")
    return obj


def _checked_envelope(document: _JSON) -> _JSON:
    if not isinstance(document, dict):
        raise _Invalid(f"the file holds a JSON {type_name(document)}, not an object with a 'format'")
    if document.get("format") != FORMAT:
        found = f"its format is {document['format']!r}" if "format" in document else "it has no 'format'"
        raise _Invalid(f"{found}, not {FORMAT!r}")
    version = document.get("version")
    if type(version) is not int:
        raise _Invalid(f"its 'version' is {version!r}, not a whole number")
    if version != VERSION:
        newer = " (written by a newer fastgrad?)" if version > VERSION else ""
        raise _Invalid(f"format version {version}{newer}; this fastgrad reads version {VERSION}")
    if "data" not in document:
        raise _Invalid("it has no 'data'")
    extra = sorted(set(document) - {"format", "version", "data"})
    if extra:
        raise _Invalid(f"unexpected top-level field {extra[0]!r}")
    return document["data"]


def _decoded(node: _JSON, where: str) -> _JSON:
    """The saved object from the JSON values of data (see the module's doc)."""
    if isinstance(node, list):
        return [_decoded(item, f"{where}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if FLOAT_TAG in node:
        bits = node[FLOAT_TAG]
        if len(node) != 1:
            raise _Invalid(f"{where} is a {FLOAT_TAG!r} object with other fields")
        if not isinstance(bits, str) or len(bits) != 16 or any(c not in "0123456789abcdefABCDEF" for c in bits):
            raise _Invalid(f"{where}: {FLOAT_TAG} must be 16 hex digits (a float's IEEE-754 bits), not {bits!r}")
        number: float = struct.unpack(">d", bytes.fromhex(bits))[0]
        return number
    decoded: dict[str, _JSON] = {}
    for key, item in node.items():
        if key.startswith("$"):
            if not key.startswith("$$"):
                raise _Invalid(f"{where} has the key {key!r}: keys of the file that start with '$' are "
                               f"{FLOAT_TAG!r} or escaped ('$$...')")
            key = key[1:]
        decoded[key] = _decoded(item, f"{where}[{key!r}]")
    return decoded
