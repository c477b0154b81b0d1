"""Header reader: real files round-trip, and every malformed header gives a clear HeaderError (fuzzed)."""

import json
import random
import struct
import tracemalloc

import pytest
from ckpt_factory import build_checkpoint, write_safetensors
from safetensors import safe_open

from vpred_core.checkpoints.safetensors_header import MAX_HEADER_BYTES, HeaderError, parse_header_bytes, read_header

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
    (struct.pack("<Q", 2**63) + b"{}", "exceeds the limit"),
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
    with pytest.raises(HeaderError, match="exceeds the limit"):
        read_header(path)
    assert tracemalloc.get_traced_memory()[1] < SMALL_PEAK_BYTES
    tracemalloc.stop()


OK_ENTRY = json.dumps({"a": _entry()})


@pytest.mark.parametrize("header, fragment", [
    (b"[1, 2]", "does not start with"),
    (b"{\"a\": 1", "not valid JSON"),
    (b"{\"a\": \xff\xfe}", "not valid UTF-8"),
    (b"{\"a\": " + b"[" * 200_000, "nested too deeply"),
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
