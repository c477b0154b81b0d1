"""Torch zip checkpoints are listed from their pickle opcodes without ever being unpickled, within every limit."""

import io
import os
import pickle
import random
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import pytest
import torch
from ckpt_factory import (
    REAL_KINDS,
    checkpoint_tensors,
    real_checkpoint_tensors,
    save_torch_checkpoint,
    write_safetensors,
)

from vpred_core.checkpoints import CheckpointLimitError
from vpred_core.checkpoints import torch_pickle as pickle_listing
from vpred_core.checkpoints.inspection import inspect_checkpoint
from vpred_core.checkpoints.safetensors_header import read_header
from vpred_core.checkpoints.sidecar_yaml import write_yaml_for_checkpoint
from vpred_core.checkpoints.torch_pickle import (
    PickleLimitError,
    PickleListingError,
    evaluate,
    list_torch_checkpoint,
)

FUZZ_CASES = 300


def state_dict(family, markers=()):
    """Real tensors with the real key names and shapes; stride-0 views keep the saved file tiny."""
    tensors = {name: torch.zeros(1, dtype=torch.float16).expand(*shape) if shape else torch.zeros(())
               for name, (_, shape) in checkpoint_tensors(family).items()}
    tensors.update({marker: torch.tensor([]) for marker in markers})
    return tensors


def save(path, obj, **kwargs):
    torch.save(obj, path, **kwargs)
    return path


class Pwn:
    """What an attacker pickles: unpickling would run os.system."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("family,arch", [("sd1", "sd1"), ("sd2", "sd2"), ("sdxl", "sdxl")])
def test_lists_real_torch_checkpoints(tmp_path, family, arch):
    path = save(tmp_path / f"{family}.ckpt", {"state_dict": state_dict(family, ("v_pred",)), "global_step": 7})
    listing = list_torch_checkpoint(path)
    expected = {name: tuple(shape) for name, (_, shape) in checkpoint_tensors(family).items()}
    assert {k: v for k, v in listing.shapes.items() if k != "v_pred"} == expected
    result = inspect_checkpoint(path)
    assert result.ok and result.architecture.id == arch and result.prediction == "v"
    assert "never unpickled" in result.file_format


def test_flat_state_dict_and_yaml_for_ckpt(tmp_path):
    path = save(tmp_path / "flat.pt", state_dict("sd1", ("v_pred", "ztsnr")))
    result = inspect_checkpoint(path)
    assert result.prediction == "v" and result.ztsnr is True
    outcome = write_yaml_for_checkpoint(path)
    assert outcome.status == "written" and (tmp_path / "flat.yaml").is_file()


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": {"x": Pwn(marker)}}, protocol=2)
    with pytest.raises(PickleListingError, match="no tensors"):
        list_torch_checkpoint(zip_with_pickle(tmp_path / "evil.ckpt", payload))
    mixed = io.BytesIO()
    torch.save({"state_dict": {**state_dict("sd1"), "evil": Pwn(marker)}}, mixed)
    (tmp_path / "mixed.ckpt").write_bytes(mixed.getvalue())
    assert inspect_checkpoint(tmp_path / "mixed.ckpt").architecture.id == "sd1"
    assert not marker.exists()


def test_legacy_pickle_and_junk_are_refused(tmp_path):
    legacy = save(tmp_path / "legacy.ckpt", state_dict("sd1"), _use_new_zipfile_serialization=False)
    for path in (legacy, tmp_path / "junk.ckpt"):
        if not path.exists():
            path.write_bytes(b"not a checkpoint")
        result = inspect_checkpoint(path)
        assert result.status == "unsupported" and "cannot inspect safely" in result.error


def test_oversized_pickle_refused_before_reading(tmp_path, monkeypatch):
    path = save(tmp_path / "big.ckpt", state_dict("sd1"))
    monkeypatch.setattr(pickle_listing, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(PickleListingError, match="limit"):
        list_torch_checkpoint(path)


@pytest.mark.parametrize("payload", [b"", b"\x80\x02}q\x00(", b"\x80\x02cos\nsystem\nq\x00.", b"(i__main__\nX\n."])
def test_unsupported_or_truncated_opcodes(payload):
    try:
        value = evaluate(payload, "p.ckpt")
    except PickleListingError as exc:
        assert exc.path == "p.ckpt"
        return
    assert not callable(value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pickletools warns on fuzzed STRING escapes
def test_fuzzed_pickles_give_clear_errors(tmp_path):
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict("sd1", ("v_pred",))}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    rng = random.Random(1234)
    for _ in range(FUZZ_CASES):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cut = bytes(mutated[: rng.randint(1, len(mutated))]) if rng.random() < 0.3 else bytes(mutated)
        try:
            evaluate(cut)
        except PickleListingError:
            pass


PLAIN_DATA = {"a": [1, -5, 70_000, 2**40, 10**30, 2.5, "x", "\u00e9\U0001f600", None, True, False],
              "t": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)), 3: {"nested": [{"k": "v"}]}, "s": "a" * 300}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_evaluates_as_pickle_would_load_it(protocol):
    """Same value as pickle.loads (our own data, safe to load) for every protocol's opcodes."""
    data = pickle.dumps(PLAIN_DATA, protocol=protocol)
    assert evaluate(data) == pickle.loads(data)


@pytest.mark.parametrize("kind", REAL_KINDS)
@pytest.mark.parametrize("ema", [False, True])
def test_real_checkpoints_list_like_their_safetensors_twin(tmp_path, kind, ema):
    """Every real tensor name and shape, in order, as the safetensors reader sees the same table."""
    tensors = real_checkpoint_tensors(kind, ema)
    listing = list_torch_checkpoint(save_torch_checkpoint(tmp_path / "real.ckpt", tensors))
    header = read_header(write_safetensors(tmp_path / "real.safetensors", tensors))
    assert listing.names == header.names and all(listing.shape(n) == header.shape(n) for n in listing.names)


# --- limits: each holds at its value and refuses one more
PROTO2 = b"\x80\x02"


def _walk_error(data: bytes) -> PickleListingError | None:
    try:
        evaluate(data, "p.ckpt")
    except PickleListingError as exc:
        return exc
    return None


@pytest.mark.parametrize("limit, build", [
    ("MAX_OPCODES", lambda n: PROTO2 + b"N" * (n - 2) + b"."),  # PROTO and STOP count
    ("MAX_CONTAINERS", lambda n: PROTO2 + b"]" * n + b"N."),
    ("MAX_MEMO", lambda n: PROTO2 + b"N" + b"".join(b"r" + struct.pack("<I", i) for i in range(n)) + b"."),
    ("MAX_MARK_DEPTH", lambda n: PROTO2 + b"(" * n + b"N."),
    ("MAX_GLOBALS", lambda n: PROTO2 + b"".join(b"cm%d\nn\n0" % i for i in range(n)) + b"N."),
    ("MAX_TEXT_OPS", lambda n: PROTO2 + b"I1\n0" * n + b"N."),
])
def test_walk_limit_holds_at_its_value_and_refuses_one_more(limit, build):
    maximum = getattr(pickle_listing, limit)
    at = _walk_error(build(maximum))
    assert not isinstance(at, PickleLimitError), at
    over = _walk_error(build(maximum + 1))
    assert isinstance(over, PickleLimitError) and isinstance(over, CheckpointLimitError)
    assert over.limit == limit and over.maximum == maximum and "p.ckpt" in str(over)


def test_tensor_limit(monkeypatch):
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\nq\x00(NK\x00K\x01\x85K\x01\x85\x89tR"
    data = PROTO2 + b"}(" + b"".join(b"X\x01\x00\x00\x00" + bytes([97 + i]) + (tensor if i == 0 else
                                     tensor.replace(b"ctorch._utils\n_rebuild_tensor_v2\nq\x00", b"h\x00"))
                                     for i in range(3)) + b"u."
    assert len(evaluate(data)) == 3
    monkeypatch.setattr(pickle_listing, "MAX_TENSORS", 2)
    assert _walk_error(data).limit == "MAX_TENSORS"


def test_text_argument_line_is_bounded():
    assert "text argument longer" in str(_walk_error(PROTO2 + b"L" + b"9" * 5000 + b"\nN."))


def _zip(members: dict, method=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def _limit_of(tmp_path, data: bytes) -> str | None:
    path = tmp_path / "z.ckpt"
    path.write_bytes(data)
    try:
        list_torch_checkpoint(path)
    except PickleLimitError as exc:
        assert str(path) in str(exc)
        return exc.limit
    except PickleListingError:
        return None
    return None


def _string_pickle(size: int) -> bytes:
    """A pickle of exactly ``size`` bytes: one string."""
    return PROTO2 + b"X" + struct.pack("<I", size - 8) + b"a" * (size - 8) + b"."


def test_pickle_size_and_compression_ratio_are_checked_before_reading(tmp_path):
    size = pickle_listing.MAX_PICKLE_BYTES
    assert _limit_of(tmp_path, _zip({"a/data.pkl": _string_pickle(size)})) is None
    assert _limit_of(tmp_path, _zip({"a/data.pkl": _string_pickle(size + 1)})) == "MAX_PICKLE_BYTES"
    bomb = _zip({"a/data.pkl": PROTO2 + b"(}" * (size // 2 - 4) + b"."}, zipfile.ZIP_DEFLATED)
    assert _limit_of(tmp_path, bomb) == "MAX_COMPRESSION_RATIO"
    real = io.BytesIO()
    torch.save({"state_dict": state_dict("sd1")}, real)
    with zipfile.ZipFile(real) as archive:  # re-zipped with deflate: a real pickle compresses ~6:1
        rezipped = _zip({name: archive.read(name) for name in archive.namelist()}, zipfile.ZIP_DEFLATED)
    (tmp_path / "re.ckpt").write_bytes(rezipped)
    assert len(list_torch_checkpoint(tmp_path / "re.ckpt")) == len(checkpoint_tensors("sd1"))


def test_deflate_bomb_declaring_a_small_size_is_not_inflated(tmp_path):
    """The directory says 100 bytes, the deflated stream holds 16 MiB: reading stops at the declared size."""
    data = bytearray(_zip({"a/data.pkl": PROTO2 + b"(}" * 2**23 + b"."}, zipfile.ZIP_DEFLATED))
    struct.pack_into("<L", data, data.find(b"PK\x01\x02") + 24, 100)  # the central directory's uncompressed size
    (tmp_path / "bomb.ckpt").write_bytes(bytes(data))
    tracemalloc.start()
    with pytest.raises(PickleListingError, match="CRC"):
        list_torch_checkpoint(tmp_path / "bomb.ckpt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def _with_end_record(data: bytes, members: int, directory_size: int) -> bytes:
    data = bytearray(data)
    struct.pack_into("<HHL", data, data.rfind(b"PK\x05\x06") + 8, members, members, directory_size)
    return bytes(data)


def test_zip_directory_is_sized_before_zipfile_parses_it(tmp_path):
    real = _zip({"a/data.pkl": pickle.dumps({"x": 1}, protocol=2)})
    assert _limit_of(tmp_path, _with_end_record(real, pickle_listing.MAX_ZIP_MEMBERS + 1, 100)) == "MAX_ZIP_MEMBERS"
    huge = _with_end_record(real, 2, pickle_listing.MAX_ZIP_DIRECTORY_BYTES + 1)
    assert _limit_of(tmp_path, huge) == "MAX_ZIP_DIRECTORY_BYTES"


def _zip64_markers(data: bytes) -> bytes:
    """The classic end record's counts and offsets replaced by zip64 markers, as in a > 4 GB torch checkpoint."""
    data = bytearray(data)
    struct.pack_into("<HHLL", data, data.rfind(b"PK\x05\x06") + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return bytes(data)


def test_zip64_end_record_is_what_counts(tmp_path):
    """torch.save writes zip64 records; past 4 GB the classic fields are markers and only zip64 holds the sizes."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict("sd1")}, buffer)
    real = buffer.getvalue()
    assert b"PK\x06\x06" in real
    (tmp_path / "big.ckpt").write_bytes(_zip64_markers(real))
    assert len(list_torch_checkpoint(tmp_path / "big.ckpt")) == len(checkpoint_tensors("sd1"))
    lying = bytearray(_zip64_markers(real))
    record = lying.rfind(b"PK\x06\x06")
    struct.pack_into("<Q", lying, record + 40, pickle_listing.MAX_ZIP_DIRECTORY_BYTES + 1)  # directory size
    assert _limit_of(tmp_path, bytes(lying)) == "MAX_ZIP_DIRECTORY_BYTES"


def test_tuple_nested_deep_as_a_dict_key_does_not_crash_the_interpreter():
    """Hashing a tuple nested 60k deep (within MAX_CONTAINERS) recurses in C: in a thread with a 512 KiB stack
    (macOS's default for threads; the webui scans in a thread) that is a SIGSEGV of the whole process."""
    code = ("import sys, threading; sys.path.insert(0, '.');"
            "from vpred_core.checkpoints.torch_pickle import evaluate;"
            "threading.stack_size(512 * 1024);"
            "data = b'\\x80\\x02}K\\x01' + b'\\x85' * 60000 + b'Ns.';"
            "thread = threading.Thread(target=lambda: print(evaluate(data))); thread.start(); thread.join()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "{}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    for suffix in (".ckpt", ".safetensors"):
        os.mkfifo(tmp_path / f"pipe{suffix}")
        result = inspect_checkpoint(tmp_path / f"pipe{suffix}")
        assert not result.ok and "not a regular file" in result.error
