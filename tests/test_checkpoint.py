"""fastgrad.save and fastgrad.load: every float back bit for bit, the documented JSON, every malformed file a
ValueError naming the file and the fault, and a save that crashes or fails leaving the previous file whole."""
import json
import math
import os
import stat
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import Value
from fastgrad.micrograd.nn import MLP
from support import run_child


def float_from_bits(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def canonical(obj):
    """obj with every float as its bits and tuples as lists: what a round trip must give back exactly."""
    if isinstance(obj, float):
        return ("float", struct.pack("<d", obj).hex())
    if isinstance(obj, (list, tuple)):
        return [canonical(x) for x in obj]
    if isinstance(obj, dict):
        return {key: canonical(x) for key, x in obj.items()}
    return (type(obj).__name__, obj)


def round_trip(obj, tmp_path):
    fastgrad.save(obj, tmp_path / "saved.json")
    return fastgrad.load(tmp_path / "saved.json")


NAN_PAYLOADS = [float_from_bits(b) for b in (0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001,
                                             0x7FF4000000000000, 0xFFFFFFFFFFFFFFFF)]
AWKWARD_FLOATS = NAN_PAYLOADS + [math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 2.225073858507201e-308,
                                 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1 / 3, 1e22, 1e23, 2.0 ** 53 + 2]


def test_awkward_floats_come_back_bit_for_bit(tmp_path):
    loaded = round_trip({"floats": AWKWARD_FLOATS}, tmp_path)
    assert canonical(loaded) == canonical({"floats": AWKWARD_FLOATS})


def test_plain_values_keep_their_types(tmp_path):
    obj = {"step": 50, "big": 2 ** 70, "negative": -3, "flag": True, "off": False, "none": None, "one": 1.0,
           "text": "ünïcode \u2603 \ud800", "empty": "", "pair": (1, 2.5), "nested": [[], {}, [[0]]],
           "$float": "not a float", "$$": 1, "$": [2], "format": "a key like any other"}
    loaded = round_trip(obj, tmp_path)
    assert canonical(loaded) == canonical(obj)
    assert type(loaded["step"]) is int and type(loaded["one"]) is float and loaded["pair"] == [1, 2.5]


any_float = st.one_of(st.floats(), st.integers(0, 2 ** 64 - 1).map(float_from_bits))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), any_float, st.text())
keys = st.one_of(st.text(), st.sampled_from(["$float", "$", "$$", "$$float", "$x", "format", "data"]))
saveable = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner), st.tuples(inner, inner), st.dictionaries(keys, inner)), max_leaves=25)


@settings(max_examples=100, deadline=None)
@given(obj=saveable)
def test_anything_saveable_comes_back_as_it_was(obj, tmp_path_factory):
    assert canonical(round_trip(obj, tmp_path_factory.mktemp("save"))) == canonical(obj)


def test_a_training_checkpoint_round_trips(tmp_path):
    model = MLP(2, [4, 1])
    optimizer = fastgrad.optim.Adam(model.parameters())
    checkpoint = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": 7}
    assert canonical(round_trip(checkpoint, tmp_path)) == canonical(checkpoint)


def test_the_file_is_the_documented_json(tmp_path):
    fastgrad.save({"w": [0.5, -0.0, 1e-310, math.nan, -math.inf], "$k": 1, "n": 2}, tmp_path / "f.json")
    with open(tmp_path / "f.json", encoding="utf-8") as f:
        document = json.load(f)      # any JSON reader can read it
    assert document == {"format": "fastgrad", "version": 1, "data": {
        "w": [0.5, -0.0, 1e-310, {"$float": "7ff8000000000000"}, {"$float": "fff0000000000000"}],
        "$$k": 1, "n": 2}}
    text = (tmp_path / "f.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_paths_may_be_str_or_path_like(tmp_path):
    fastgrad.save([1.5], str(tmp_path / "a.json"))
    assert fastgrad.load(tmp_path / "a.json") == [1.5]
    assert fastgrad.load(os.fsencode(tmp_path / "a.json")) == [1.5]


def test_loading_never_runs_code(tmp_path):
    # What a pickle would turn into a call is, in JSON, just data.
    path = tmp_path / "f.json"
    path.write_text('{"format": "fastgrad", "version": 1, "data": '
                    '{"__reduce__": ["os.system", ["echo hacked"]], "__class__": "subprocess.Popen"}}')
    assert fastgrad.load(path) == {"__reduce__": ["os.system", ["echo hacked"]], "__class__": "subprocess.Popen"}


# ---------------------------------------------------------------------------------------------------
# Files that are not fastgrad saves

def envelope(data_text):
    return '{"format": "fastgrad", "version": 1, "data": ' + data_text + "}"


def truncated_save():
    return envelope(json.dumps({"model": {f"w.{i}": i / 7 for i in range(50)}}))[:-200]


MALFORMED = [
    (b"", "the file is empty"),
    (b"  \n", "the file is empty"),
    (truncated_save().encode(), "(the file ends too early: truncated?)"),
    (b'{"format": "fastgrad", "version": 1, "data": [1.0, 2.0', "truncated?"),
    (b"\xff\xfe{\x00", "not UTF-8 text"),
    (b"not json", "not valid JSON: Expecting value at line 1 column 1"),
    (envelope("1") .encode() + b" trailing", "not valid JSON: Extra data"),
    (b"[1, 2]", "the file holds a JSON list, not an object with a 'format'"),
    (b'"fastgrad"', "the file holds a JSON str"),
    (b'{"format": "pickle", "version": 1, "data": 1}', "its format is 'pickle', not 'fastgrad'"),
    (b'{"version": 1, "data": 1}', "it has no 'format', not 'fastgrad'"),
    (b'{"format": "fastgrad", "version": 2, "data": 1}', "format version 2 (written by a newer fastgrad?)"),
    (b'{"format": "fastgrad", "version": 0, "data": 1}', "format version 0; this fastgrad reads version 1"),
    (b'{"format": "fastgrad", "version": "1", "data": 1}', "its 'version' is '1', not a whole number"),
    (b'{"format": "fastgrad", "version": true, "data": 1}', "its 'version' is True"),
    (b'{"format": "fastgrad", "version": 1.0, "data": 1}', "its 'version' is 1.0"),
    (b'{"format": "fastgrad", "data": 1}', "its 'version' is None"),
    (b'{"format": "fastgrad", "version": 1}', "it has no 'data'"),
    (b'{"format": "fastgrad", "version": 1, "data": 1, "extra": 2}', "unexpected top-level field 'extra'"),
    (envelope("[NaN]").encode(), "NaN is not JSON"),
    (envelope('{"w": -Infinity}').encode(), "-Infinity is not JSON"),
    (envelope("[1e999]").encode(), "the number 1e999 is beyond a float's range"),
    (envelope('{"w": 1, "w": 2}').encode(), "a JSON object repeats the key 'w'"),
    (b'{"format": "fastgrad", "format": "fastgrad", "version": 1, "data": 1}', "repeats the key 'format'"),
    (envelope('{"w": {"$float": "7ff8"}}').encode(), "data['w']: $float must be 16 hex digits"),
    (envelope('[{"$float": "7ff800000000000g"}]').encode(), "data[0]: $float must be 16 hex digits"),
    (envelope('{"$float": 1}').encode(), "data: $float must be 16 hex digits (a float's IEEE-754 bits), not 1"),
    (envelope('{"$float": "7ff8000000000000", "x": 1}').encode(), "data is a '$float' object with other fields"),
    (envelope('{"a": {"$x": 1}}').encode(), "data['a'] has the key '$x'"),
    (envelope("[" * 100_000 + "]" * 100_000).encode(), "nested too deeply"),
]


@pytest.mark.parametrize("content, fragment", MALFORMED, ids=[fragment for _, fragment in MALFORMED])
def test_a_file_that_is_not_a_fastgrad_save_is_a_value_error(content, fragment, tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        fastgrad.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not a fastgrad save: ")
    assert fragment in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastgrad.load(tmp_path / "nothing.json")


# ---------------------------------------------------------------------------------------------------
# What cannot be saved, and saving safely

def self_containing():
    items = [1.0]
    items.append(items)
    return items


def nested(depth, make):
    obj = 1.0
    for _ in range(depth):
        obj = make(obj)
    return obj


@pytest.mark.parametrize("obj, error, fragment", [
    (Value(1.0), TypeError,
     "can't save obj, of type 'fastgrad.engine.Value' (save its .data, or the model's state_dict())"),
    ({"model": MLP(2, [1])}, TypeError,
     "can't save obj['model'], of type 'fastgrad.micrograd.nn.MLP' (save its state_dict())"),
    ([1.0, {2, 3}], TypeError, "can't save obj[1], of type 'set': fastgrad.save takes dicts with str keys"),
    ({"w": [object()]}, TypeError, "can't save obj['w'][0], of type 'object'"),
    ({1: 2.0}, TypeError, "can't save obj: its key 1 is not a str but 'int'"),
    ([{"x": b"bytes"}], TypeError, "can't save obj[0]['x'], of type 'bytes'"),
    (self_containing(), ValueError, "can't save obj[1]: it contains itself"),
    (nested(100_000, lambda obj: [obj]), ValueError, "can't save obj: it is nested too deeply"),
    (nested(100_000, lambda obj: {"a": obj}), ValueError, "can't save obj: it is nested too deeply"),
])
def test_what_cannot_be_saved_leaves_the_file_as_it_was(obj, error, fragment, tmp_path):
    path = tmp_path / "ck.json"
    fastgrad.save({"old": 1.0}, path)
    with pytest.raises(error) as raised:
        fastgrad.save(obj, path)
    assert fragment in str(raised.value)
    assert fastgrad.load(path) == {"old": 1.0}
    assert os.listdir(tmp_path) == ["ck.json"]


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ck.json"
    fastgrad.save({"old": 1.0}, path)

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fastgrad.save({"new": 2.0}, path)
    monkeypatch.undo()
    assert fastgrad.load(path) == {"old": 1.0}
    assert os.listdir(tmp_path) == ["ck.json"]


KILLED_BEFORE_THE_RENAME = """
    import os, signal
    import fastgrad

    fastgrad.save({"old": 1.0}, "ck.json")
    def crash(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = crash           # the process dies after the new file is written, before it takes the name
    fastgrad.save({"new": [0.5] * 100_000}, "ck.json")
    print("not reached")
"""


def test_a_crash_while_saving_leaves_the_old_file_loadable(tmp_path):
    result = run_child(KILLED_BEFORE_THE_RENAME, tmp_path)
    assert result.returncode == -9, result.stderr
    assert "not reached" not in result.stdout
    assert fastgrad.load(tmp_path / "ck.json") == {"old": 1.0}
    leftovers = [name for name in os.listdir(tmp_path) if name != "ck.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.json.") and leftovers[0].endswith(".tmp")
    assert fastgrad.load(tmp_path / leftovers[0]) == {"new": [0.5] * 100_000}     # written whole, never renamed


def test_a_saved_file_gets_the_permissions_of_any_new_file(tmp_path):
    fastgrad.save([1.0], tmp_path / "saved.json")
    (tmp_path / "opened.json").write_text("[]")
    assert stat.S_IMODE(os.stat(tmp_path / "saved.json").st_mode) == stat.S_IMODE(
        os.stat(tmp_path / "opened.json").st_mode)


def test_saving_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "ck.json"
    fastgrad.save([1.0], target)
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    fastgrad.save([2.0], link)
    assert link.is_symlink() and fastgrad.load(target) == [2.0]
