"""Benchmark (not a test): ``stamp`` throughput as a ratio to ``cp`` of the same file on the same disk, and peak RSS.

Run from the repository root: ``python benchmarks/bench_stamp.py [--gib 2] [--sparse-gib 6] [--repeat 2] [--dir D]``.
Files are created in a temporary folder under ``--dir`` (default: the system temp folder) and removed afterwards.

- Throughput: a ``--gib`` checkpoint with real (random, non-sparse) tensor bytes and an SDXL-sized header is copied
  by ``cp --reflink=never`` (plain, and followed by an fsync of the copy, which ``stamp`` always does) and stamped
  into a new file by ``python -m vpred_core stamp --out`` (copy, read-back comparison, sha256 of the data region,
  fsync), and by the library with ``hash_data=False`` (the same without the sha256). Each is timed with a warm page
  cache (source read once before) and a cold one (source evicted with ``posix_fadvise(DONTNEED)`` after a sync).
  Ratio = cp time / stamp time (>= 1: as fast). Target >= 0.8x. For scale, the time of the sha256 of the data region
  alone (the floor of anything that prints that hash) is measured the same way.
- Peak RSS: ``ru_maxrss`` of the ``python -m vpred_core stamp`` process (``os.wait4``) on a ``--sparse-gib`` sparse
  checkpoint, for a rewrite and for an in-place stamp, next to a bare interpreter importing the CLI. Target <= 64 MB.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ckpt_factory import checkpoint_tensors, write_safetensors  # noqa: E402

GIB = 2**30
MIB = 2**20
SDXL_FILLER_BLOCKS = 355  # ~2500 tensors: the header of a real SDXL checkpoint
FILLER_NAME = "model.diffusion_model.filler.weight"
RANDOM_BLOCK = 64 * MIB
TARGET_RATIO = 0.8
TARGET_RSS_MB = 64
STAMP_ARGS = ("--prediction", "v", "--ztsnr", "on")
NO_HASH_SCRIPT = """
import sys
from vpred_core.checkpoints.stamp import StampRequest, stamp_file
stamp_file(sys.argv[1], StampRequest("v", True), out=sys.argv[2], hash_data=False)
"""
IMPORT_ONLY_SCRIPT = "import vpred_core.cli.main"
HASH_ONLY_SCRIPT = """
import hashlib, sys
with open(sys.argv[1], "rb", buffering=0) as handle:
    handle.seek(8 + int.from_bytes(handle.read(8), "little"))
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    while count := handle.readinto(buffer):
        digest.update(memoryview(buffer)[:count])
"""


def checkpoint_of_size(path: Path, size: int) -> Path:
    """An SDXL-keyed checkpoint padded with one U8 tensor to ``size`` bytes (sparse until filled)."""
    tensors = checkpoint_tensors("sdxl", blocks=SDXL_FILLER_BLOCKS)
    used = sum(2 * _count(shape) for _, shape in tensors.values())
    tensors[FILLER_NAME] = ("U8", [max(size - used, 0)])
    return write_safetensors(path, tensors)


def _count(shape) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def fill_with_random(path: Path) -> None:
    """Overwrite the whole data region with random bytes (no holes left)."""
    with open(path, "r+b") as handle:
        start = 8 + int.from_bytes(handle.read(8), "little")
        size = os.fstat(handle.fileno()).st_size
        block = random.Random(0).randbytes(RANDOM_BLOCK)
        handle.seek(start)
        for offset in range(start, size, RANDOM_BLOCK):
            handle.write(block[: min(RANDOM_BLOCK, size - offset)])
        os.fsync(handle.fileno())


def make_warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(RANDOM_BLOCK):
            pass


def make_cold(path: Path) -> None:
    """Evict ``path`` from the page cache (clean pages only: sync first)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_child(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def cp_fsync(src: Path, dst: Path) -> list[str]:
    return ["sh", "-c", f'cp --reflink=never "{src}" "{dst}" && sync "{dst}"']


def copy_commands(src: Path, dst: Path) -> dict[str, list[str]]:
    return {
        "cp": ["cp", "--reflink=never", str(src), str(dst)],
        "cp + fsync": cp_fsync(src, dst),
        "stamp (CLI: check + sha256 + fsync)": [sys.executable, "-m", "vpred_core", "stamp", str(src), *STAMP_ARGS,
                                          "--out", str(dst)],
        "stamp without sha256 (check + fsync)": [sys.executable, "-c", NO_HASH_SCRIPT, str(src), str(dst)],
        "sha256 of the data region alone": [sys.executable, "-c", HASH_ONLY_SCRIPT, str(src), str(dst)],
    }


def bench_throughput(folder: Path, gib: float, repeat: int) -> None:
    src, dst = folder / "real.safetensors", folder / "copy.safetensors"
    checkpoint_of_size(src, int(gib * GIB))
    fill_with_random(src)
    size = os.path.getsize(src)
    print(f"throughput: {size / GIB:.2f} GiB checkpoint, random tensor bytes, copies into the same folder ({folder})")
    for cache, prepare in (("warm", make_warm), ("cold", make_cold)):
        times = {}
        for name, argv in copy_commands(src, dst).items():
            best = float("inf")
            for _ in range(repeat):
                prepare(src)
                best = min(best, timed_child(argv)[0])
                dst.unlink(missing_ok=True)
                os.sync()
            times[name] = best
        print(f"  page cache {cache}:")
        for name, seconds in times.items():
            ratios = f"{times['cp'] / seconds:5.2f}x cp  {times['cp + fsync'] / seconds:5.2f}x cp+fsync"
            print(f"    {name:<34} {seconds:7.2f} s  {size / seconds / MIB:7.0f} MiB/s  {ratios}")
    print(f"  target: stamp >= {TARGET_RATIO}x cp")


def bench_rss(folder: Path, gib: float) -> None:
    path = checkpoint_of_size(folder / "sparse.safetensors", int(gib * GIB))
    size = os.path.getsize(path)
    cli = [sys.executable, "-m", "vpred_core", "stamp", str(path)]
    base_time, base_rss = timed_child([sys.executable, "-c", IMPORT_ONLY_SCRIPT])
    rewrite_time, rewrite_rss = timed_child([*cli, *STAMP_ARGS])
    in_place_time, in_place_rss = timed_child([*cli, "--prediction", "eps", "--ztsnr", "off"])
    print(f"peak RSS (ru_maxrss), {size / GIB:.2f} GiB sparse checkpoint:")
    print(f"  python + import vpred_core.cli.main        {base_rss:6.1f} MB")
    print(f"  stamp, rewrite (sparse copy, sha256)      {rewrite_rss:6.1f} MB   {rewrite_time:6.2f} s")
    print(f"  stamp, in place (header + one hash pass)  {in_place_rss:6.1f} MB   {in_place_time:6.2f} s")
    print(f"  target <= {TARGET_RSS_MB} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the real (non-sparse) checkpoint")
    parser.add_argument("--sparse-gib", type=float, default=6.0, help="size of the sparse checkpoint (RSS)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is kept)")
    parser.add_argument("--dir", default=None, help="folder to create the files in (the disk measured)")
    parser.add_argument("--no-throughput", action="store_true", help="only the RSS measurement")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vpred_bench_stamp_", dir=args.dir))
    try:
        bench_rss(base, args.sparse_gib)
        if not args.no_throughput:
            bench_throughput(base, args.gib, args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
