"""Torch zip checkpoints are listed from their pickle opcodes without ever being unpickled."""

import io
import os
import pickle
import random
import zipfile

import pytest
import torch
from ckpt_factory import checkpoint_tensors

from vpred_core.checkpoints import torch_pickle as pickle_listing
from vpred_core.checkpoints.inspection import inspect_checkpoint
from vpred_core.checkpoints.sidecar_yaml import write_yaml_for_checkpoint
from vpred_core.checkpoints.torch_pickle import PickleListingError, PickleStackError, evaluate, list_torch_checkpoint

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
        value = evaluate(payload)
    except PickleStackError:
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
        except PickleStackError:
            pass
