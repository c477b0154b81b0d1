"""Benchmark (not a test): header inspection vs a bare header read vs a full load, and a folder scan + YAML write.

Run from the repository root: ``python benchmarks/bench_inspect.py [--files 200] [--repeat 50] [--no-full-load]``.
Everything is created in a temporary folder (the 6.9 GB SDXL checkpoint is a sparse file) and removed afterwards.
Targets: inspection <= 1.2x a bare header read, >= 100x faster than ``safetensors.torch.load_file``,
200 checkpoints scanned + YAML written in < 1 s (warm page cache). Times are the best and the median of
``--repeat`` runs, in CPU time of this process (``time.process_time``: on a shared machine wall time measures the
other tenants) and in wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ckpt_factory import checkpoint_tensors, real_checkpoint_tensors, write_safetensors  # noqa: E402

from vpred_core.checkpoints.inspection import CHECKPOINT_SUFFIXES, inspect_checkpoint  # noqa: E402
from vpred_core.checkpoints.sidecar_yaml import WRITTEN, write_yaml_for_checkpoint  # noqa: E402
from vpred_core.cli.main import find_checkpoints  # noqa: E402

GIB = 2**30
SDXL_FILLER_BLOCKS = 355  # ~2500 tensors, the size of a real SDXL checkpoint header (the folder's files)
FAMILY_CYCLE = ("sdxl", "sd1", "sd2", "sdxl", "sdxl_refiner")
KOHYA_METADATA = {
    "modelspec.prediction_type": "v", "ss_zero_terminal_snr": "True", "ss_v_parameterization": "True",
    "ss_tag_frequency": json.dumps({f"dir_{d}": {f"tag {t}": t for t in range(400)} for d in range(8)}),
    "ss_training_started_at": "1700000000.0", "ss_base_model_version": "sdxl_base_v1-0",
}


def bare_header_read(path: str) -> dict:
    """The floor: read the length, read the JSON, parse it (no validation, no interpretation)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def best_and_median(func, repeat: int, clock=time.perf_counter) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = clock()
        func()
        times.append(clock() - start)
    return min(times), statistics.median(times)


def make_big_checkpoint(folder: Path) -> Path:
    """A real SDXL checkpoint (every tensor's name, dtype and shape; 6.9 GB sparse) with a kohya training record."""
    tensors = real_checkpoint_tensors("sdxl")
    tensors["v_pred"] = ("F32", [0])
    return write_safetensors(folder / "big_sdxl_v.safetensors", tensors, KOHYA_METADATA)


def bench_single(folder: Path, repeat: int, full_load: bool) -> None:
    path = str(make_big_checkpoint(folder))
    size = os.path.getsize(path)
    bare_header_read(path)
    inspect_checkpoint(path)  # warm the page cache and imports
    result = inspect_checkpoint(path)
    print(f"checkpoint: {size / GIB:.2f} GiB sparse, {result.tensor_count} tensors, "
          f"header {_header_len(path) / 1024:.0f} KiB, detected {result.architecture.id} "
          f"{result.prediction} ztsnr={result.ztsnr}")
    for clock_name, clock in (("CPU", time.process_time), ("wall", time.perf_counter)):
        bare = best_and_median(lambda: bare_header_read(path), repeat, clock)
        inspected = best_and_median(lambda: inspect_checkpoint(path), repeat, clock)
        print(f"{clock_name:4s} bare header read      best {bare[0] * 1e3:8.3f} ms   median {bare[1] * 1e3:8.3f} ms")
        print(f"{clock_name:4s} inspect_checkpoint    best {inspected[0] * 1e3:8.3f} ms   median "
              f"{inspected[1] * 1e3:8.3f} ms   ratio {inspected[0] / bare[0]:.2f}x (best) "
              f"{inspected[1] / bare[1]:.2f}x (median)   target <= 1.2x")
    if full_load:  # on the real SD1.5 table (2.1 GB): loading the 6.9 GB SDXL one would need 6.9 GB of memory
        from safetensors.torch import load_file

        small = str(write_safetensors(folder / "sd15.safetensors", real_checkpoint_tensors("sd15")))
        inspect_time = best_and_median(lambda: inspect_checkpoint(small), repeat)[1]
        start = time.perf_counter()
        state = load_file(small)
        load_time = time.perf_counter() - start
        del state
        print(f"SD1.5 ({os.path.getsize(small) / GIB:.2f} GiB): safetensors load_file {load_time * 1e3:8.1f} ms, "
              f"inspection {inspect_time * 1e3:.1f} ms: {load_time / inspect_time:.0f}x faster (median)   "
              "target >= 100x")


def _header_len(path: str) -> int:
    with open(path, "rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def make_folder(folder: Path, count: int) -> None:
    folder.mkdir()
    for index in range(count):
        family = FAMILY_CYCLE[index % len(FAMILY_CYCLE)]
        blocks = SDXL_FILLER_BLOCKS if family.startswith("sdxl") else SDXL_FILLER_BLOCKS // 3
        tensors = checkpoint_tensors(family, blocks=blocks)
        if index % 2 == 0:
            tensors["v_pred"] = ("F32", [0])
        meta = {"modelspec.prediction_type": "v"} if family == "sd2" else None
        write_safetensors(folder / f"model_{index:03d}.safetensors", tensors, meta)


def scan_and_write(folder: Path, dry_run: bool) -> tuple[int, int]:
    files = list(find_checkpoints(str(folder), CHECKPOINT_SUFFIXES, recursive=True))
    written = sum(write_yaml_for_checkpoint(path, dry_run=dry_run).status == WRITTEN for path in files)
    return len(files), written


def bench_folder(base: Path, count: int) -> None:
    folder = base / "folder"
    make_folder(folder, count)
    scan_and_write(folder, dry_run=True)  # warm: page cache, template cache, imports
    start = time.perf_counter()
    files, written = scan_and_write(folder, dry_run=False)
    elapsed = time.perf_counter() - start
    print(f"folder scan + YAML write: {files} checkpoints, {written} YAML written in {elapsed * 1e3:.0f} ms "
          f"({elapsed / files * 1e3:.2f} ms each)   target < 1000 ms")
    start = time.perf_counter()
    for path in find_checkpoints(str(folder), CHECKPOINT_SUFFIXES, recursive=True):
        bare_header_read(path)
    print(f"same folder, bare header reads only (the floor on this machine): "
          f"{(time.perf_counter() - start) * 1e3:.0f} ms")
    start = time.perf_counter()
    for path in find_checkpoints(str(folder), CHECKPOINT_SUFFIXES, recursive=True):
        inspect_checkpoint(path)
    print(f"folder scan, inspection only (YAML present, read back as a source): "
          f"{(time.perf_counter() - start) * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--no-full-load", action="store_true", help="skip the multi-GB safetensors load")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vpred_bench_"))
    try:
        bench_single(base, args.repeat, not args.no_full_load)
        bench_folder(base, args.files)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
