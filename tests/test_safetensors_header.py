"""Header reader: real files round-trip, every malformed header gives a clear HeaderError (fuzzed), and every
limit holds at its value and refuses one past it, before anything is parsed."""

import gc
import json
import random
import struct
import tracemalloc

import pytest
from ckpt_factory import REAL_KINDS, build_checkpoint, real_checkpoint_tensors, write_safetensors
from safetensors import safe_open

from vpred_core.checkpoints import MAX_TENSORS, CheckpointLimitError
from vpred_core.checkpoints import safetensors_header as st
from vpred_core.checkpoints.safetensors_header import (
    MAX_HEADER_BYTES,
    HeaderError,
    HeaderLimitError,
    parse_header_bytes,
    read_header,
)

SMALL_PEAK_BYTES = 5_000_000


def _raw_file(path, header_bytes: bytes, length: int | None = None, data: bytes = b"") -> str:
    length = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", length) + header_bytes + data)
    return str(path)


def _entry(begin=0, end=4, dtype="F32", shape=(1,)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def test_real_file_matches_safetensors_library(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sdxl", markers=("v_pred",),
                            metadata={"modelspec.prediction_type": "v"})
    header = read_header(path)
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == sorted(header.names)
        assert handle.metadata() == header.metadata
        for name in handle.keys():
            assert list(handle.get_slice(name).get_shape()) == list(header.shape(name))
    assert header.tensor("v_pred").shape == (0,)
    assert "v_pred" in header and "nope" not in header and header.shape("nope") is None


def test_reads_only_the_header_of_a_large_sparse_file(tmp_path):
    tensors = {"big": ("F16", [16384, 8192])}  # 256 MiB of (sparse) data
    path = write_safetensors(tmp_path / "big.safetensors", tensors)
    tracemalloc.start()
    header = read_header(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert header.file_size > 256 * 2**20 and peak < SMALL_PEAK_BYTES


def _bad(path, fragment):
    with pytest.raises(HeaderError) as info:
        read_header(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("content, fragment", [
    (b"", "too short"),
    (b"\x01\x02\x03", "too short"),
    (struct.pack("<Q", 0), "length is 0"),
    (struct.pack("<Q", 2**63) + b"{}", "(MAX_HEADER_BYTES)"),
    (struct.pack("<Q", 50) + b"{}", "exceeds the file size"),
])
def test_bad_lengths(tmp_path, content, fragment):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    _bad(path, fragment)


def test_huge_claimed_length_allocates_nothing(tmp_path):
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        handle.truncate(MAX_HEADER_BYTES * 2)
    tracemalloc.start()
    with pytest.raises(HeaderLimitError, match="MAX_HEADER_BYTES") as info:
        read_header(path)
    assert tracemalloc.get_traced_memory()[1] < SMALL_PEAK_BYTES
    tracemalloc.stop()
    assert (info.value.limit, info.value.found, info.value.maximum) == ("MAX_HEADER_BYTES", MAX_HEADER_BYTES + 1,
                                                                        MAX_HEADER_BYTES)


OK_ENTRY = json.dumps({"a": _entry()})


@pytest.mark.parametrize("header, fragment", [
    (b"[1, 2]", "does not start with"),
    (b"{\"a\": 1", "not valid JSON"),
    (b"{\"a\": \xff\xfe}", "not valid UTF-8"),
    (b"{\"a\": " + b"[" * 20_000, "nested too deeply"),
    (b"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}} trailing", "not valid JSON"),
    (json.dumps({"a": 1}).encode(), "entry must be an object"),
    (json.dumps({"a": _entry(dtype="F99")}).encode(), "unknown dtype"),
    (json.dumps({"a": {**_entry(), "dtype": 3}}).encode(), "unknown dtype"),
    (json.dumps({"a": _entry(shape=(-1,))}).encode(), "shape must be"),
    (json.dumps({"a": {**_entry(), "shape": [True]}}).encode(), "shape must be"),
    (json.dumps({"a": {**_entry(), "shape": "1"}}).encode(), "shape must be"),
    (json.dumps({"a": {**_entry(), "data_offsets": [0]}}).encode(), "data_offsets must be"),
    (json.dumps({"a": {**_entry(), "data_offsets": [0, 1.5]}}).encode(), "data_offsets must be"),
    (json.dumps({"a": _entry(begin=8, end=4)}).encode(), "begin 8 > end 4"),
    (json.dumps({"a": _entry(end=400)}).encode(), "beyond the data size"),
    (json.dumps({"a": {"shape": [1], "data_offsets": [0, 4]}}).encode(), "unknown dtype None"),
    (json.dumps({"__metadata__": {"k": {"nested": "x"}}, **json.loads(OK_ENTRY)}).encode(), "must be a string"),
    (json.dumps({"__metadata__": ["x"]}).encode(), "must be an object of strings"),
    (json.dumps({"__metadata__": {"k": 1}}).encode(), "must be a string"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": '
     b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "duplicate key 'a'"),
    (b'{"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}', "duplicate key 'dtype'"),
    (b'{"__metadata__": {"k": "1", "k": "2"}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
     "duplicate key 'k'"),
    (b'{"__metadata__": {"k:": "1", "k\\u003a": "2"}}', "duplicate key 'k:'"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": {"y": 1, "y": 2}}}', "duplicate key 'y'"),
])
def test_malformed_headers(tmp_path, header, fragment):
    _bad(_raw_file(tmp_path / "x.safetensors", header, data=b"\0" * 4), fragment)


def test_bad_entry_after_good_ones_is_named(tmp_path):
    header = json.dumps({"good": _entry(), "also_good": _entry(4, 8), "bad": _entry(dtype="F99")}).encode()
    _bad(_raw_file(tmp_path / "x.safetensors", header, data=b"\0" * 8), "tensor 'bad': unknown dtype")


def test_metadata_with_colons_and_escapes_is_fine(tmp_path):
    meta = {"ss_tag_frequency": json.dumps({"dir": {"a:b": 3}}), "time": "12:00", "uni": "caf\u00e9 \u2603"}
    path = write_safetensors(tmp_path / "m.safetensors", {"w:x": ("F32", [2])}, meta)
    header = read_header(path)
    assert header.metadata == meta and header.names == ["w:x"]


def test_truncated_header(tmp_path):
    path = _raw_file(tmp_path / "t.safetensors", OK_ENTRY.encode()[:10], length=len(OK_ENTRY))
    _bad(path, "exceeds the file size")


def test_unreadable_path(tmp_path):
    _bad(tmp_path, "cannot read file")


def test_parse_header_bytes_without_file():
    header = parse_header_bytes(OK_ENTRY.encode())
    assert header.names == ["a"] and header.metadata == {}


def test_fuzz_mutations_and_truncations(tmp_path):
    """Random byte flips and cuts of a real header: each result is a header or a HeaderError, nothing else."""
    rng = random.Random(1234)
    good = build_checkpoint(tmp_path / "g.safetensors", "sd1", markers=("v_pred",),
                            metadata={"modelspec.prediction_type": "v", "note": "a:b"}).read_bytes()
    length = struct.unpack("<Q", good[:8])[0]
    path = tmp_path / "f.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        data = bytearray(good[: 8 + length + 64])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            read_header(path)
            outcomes["ok"] += 1
        except HeaderError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


# --- limits: each holds at its value and refuses one more, before the JSON is parsed
def _flood(count: int, item: bytes) -> bytes:
    return b'{"x":[' + b",".join([item] * count) + b"]}"


def _tensors(count: int) -> bytes:
    return b"{" + b",".join(b'"t%d":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}' % i
                            for i in range(count)) + b"}"


@pytest.mark.parametrize("limit, build", [
    ("MAX_JSON_CONTAINERS", lambda n: _flood(n - 2, b"[]")),  # the object and the list around them count
    ("MAX_JSON_SEPARATORS", lambda n: _flood(n, b"0")),  # n - 1 commas and the one colon
    ("MAX_TENSORS", _tensors),
])
def test_limit_holds_at_its_value_and_refuses_one_more(limit, build):
    maximum = MAX_TENSORS if limit == "MAX_TENSORS" else getattr(st, limit)
    try:
        parse_header_bytes(build(maximum), "at.safetensors")
    except HeaderLimitError:
        pytest.fail(f"{limit} refused a header at the limit")
    except HeaderError:
        pass  # at the limit the header is read; it may still be invalid for another reason
    with pytest.raises(HeaderLimitError) as info:
        parse_header_bytes(build(maximum + 1), "over.safetensors")
    assert info.value.limit == limit and info.value.maximum == maximum and "over.safetensors" in str(info.value)
    assert isinstance(info.value, CheckpointLimitError) and limit in str(info.value)


def test_header_bytes_limit_applies_to_bytes_given_directly():
    with pytest.raises(HeaderLimitError, match="MAX_HEADER_BYTES"):
        parse_header_bytes(b'{"__metadata__":{"k":"' + b"a" * MAX_HEADER_BYTES + b'"}}')


def test_structure_is_counted_before_parsing():
    """A flood one container over the limit is refused without building it: the peak stays at the bytes' size."""
    raw = _flood(st.MAX_JSON_CONTAINERS, b"[]")
    tracemalloc.start()
    with pytest.raises(HeaderLimitError):
        parse_header_bytes(raw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * len(raw)  # parsed, the same flood is ~25 bytes per byte


@pytest.mark.parametrize("kind", REAL_KINDS)
@pytest.mark.parametrize("ema", [False, True])
def test_real_headers_are_far_inside_every_limit(tmp_path, kind, ema):
    """The limits come from real files with a margin of at least 3x (docs/INSPECTION.md "Limits")."""
    tensors = real_checkpoint_tensors(kind, ema)
    header = read_header(write_safetensors(tmp_path / "real.safetensors", tensors))
    assert header.names == list(tensors)
    with open(tmp_path / "real.safetensors", "rb") as handle:
        raw = handle.read(8 + header.header_size)[8:]
    measured = {"MAX_HEADER_BYTES": len(raw), "MAX_TENSORS": len(tensors),
                "MAX_JSON_CONTAINERS": raw.count(b"{") + raw.count(b"["),
                "MAX_JSON_SEPARATORS": raw.count(b":") + raw.count(b",")}
    limits = {name: MAX_TENSORS if name == "MAX_TENSORS" else getattr(st, name) for name in measured}
    assert all(limits[name] >= 3 * value for name, value in measured.items()), (measured, limits)


def test_reading_leaves_the_garbage_collector_alone(tmp_path, monkeypatch):
    """Library code never changes interpreter-wide state: no gc.disable / freeze / threshold change."""
    def forbidden(*args):
        raise AssertionError("process-wide garbage collector change")

    for name in ("disable", "enable", "freeze", "set_threshold"):
        monkeypatch.setattr(gc, name, forbidden)
    path = build_checkpoint(tmp_path / "m.safetensors", "sdxl", blocks=50)
    assert len(read_header(path)) > 300 and gc.isenabled()


def test_error_messages_stay_short_whatever_the_file_holds(tmp_path):
    name = "n" * 1_000_000
    header = json.dumps({name: {"dtype": "F99", "shape": [1] * 100_000, "data_offsets": [0, 2]}}).encode()
    with pytest.raises(HeaderError) as info:
        parse_header_bytes(header, "x.safetensors")
    assert "unknown dtype" in str(info.value) and len(str(info.value)) < 300


def test_dimensions_beyond_u64_are_refused():
    header = json.dumps({"a": {"dtype": "F16", "shape": [2**64], "data_offsets": [0, 2]}}).encode()
    with pytest.raises(HeaderError, match="shape must be"):
        parse_header_bytes(header)
