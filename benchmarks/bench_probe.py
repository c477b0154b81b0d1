"""Benchmark (not a test): the prediction-type probe's time as a multiple of one sampling step.

Run from the repository root:
``python benchmarks/bench_probe.py [--size 64] [--repeat 3] [--families sd15 sdxl] [--threads N]``.

A real-size UNet with random weights (diffusers ``UNet2DConditionModel``: SD1.5's config, 860M parameters; ``sdxl``:
SDXL's, 2.6B, about 10 GB of float32) runs on the CPU at a ``size`` x ``size`` latent. One sampling step = one UNet
forward at batch 2 (cond + uncond for CFG) at the same latent size; the probe makes one call at batch 3 (4 evaluations
for a v model: one more call at batch 1, timed separately and added). Best of ``repeat`` runs each, by wall time and
by this process's CPU time (the second does not depend on other load on the machine). The random UNet's verdict is
printed too (it must be ``unknown``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpred_core.cli.kdiffusion import declare_torchvision_op_schemas  # noqa: E402
from vpred_core.sampling.probe import probe_prediction_type  # noqa: E402

SD15 = {"name": "SD1.5", "context": (77, 768), "config": {"cross_attention_dim": 768, "attention_head_dim": 8}}
SDXL = {"name": "SDXL", "context": (77, 2048), "added": {"text_embeds": 1280, "time_ids": 6}, "config": {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816}}

FAMILIES = {"sd15": SD15, "sdxl": SDXL}


def build(family: dict, seed: int = 0):
    """(unet, callable f(x, t)) for a randomly initialised UNet of the family and a fixed stand-in conditioning."""
    declare_torchvision_op_schemas()
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**family["config"]).eval()
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, *family["context"], generator=gen)
    added = {k: torch.randn(1, n, generator=gen) for k, n in family.get("added", {}).items()}

    def f(x, t):
        batch = x.shape[0]
        extra = {"added_cond_kwargs": {k: v.expand(batch, -1) for k, v in added.items()}} if added else {}
        return unet(x, t, encoder_hidden_states=context.expand(batch, -1, -1), **extra).sample

    return unet, f


def best_of(func, repeat: int) -> tuple[tuple[float, float], object]:
    """((best wall time, best CPU time of this process), last value); CPU time is robust to a shared machine."""
    wall, cpu, value = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = func()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return (wall, cpu), value


def ratios(numerator: tuple[float, float], denominator: tuple[float, float]) -> str:
    return f"{numerator[0] / denominator[0]:.2f} steps by wall time, {numerator[1] / denominator[1]:.2f} by CPU time"


def bench(family: dict, size: int, repeat: int) -> None:
    start = time.perf_counter()
    unet, f = build(family)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"{family['name']}: {params:.0f}M parameters, built in {time.perf_counter() - start:.1f} s, "
          f"latent {size}x{size}, {torch.get_num_threads()} threads")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x2, x1 = torch.randn(2, 4, size, size, generator=gen), torch.randn(1, 4, size, size, generator=gen)
        step, _ = best_of(lambda: f(x2, torch.full((2,), 500.0)), repeat)
        single, _ = best_of(lambda: f(x1, torch.full((1,), 999.0)), repeat)
    probe_time, result = best_of(lambda: probe_prediction_type(f, 4, size=(size, size)), repeat)
    v_time = (probe_time[0] + single[0], probe_time[1] + single[1])
    print(f"  one sampling step (UNet batch 2, CFG): {step[0]:.2f} s wall / {step[1]:.2f} s CPU; "
          f"one UNet evaluation (batch 1): {single[0]:.2f} s / {single[1]:.2f} s")
    print(f"  probe, 3 evaluations (eps/x0/flow/unknown): {probe_time[0]:.2f} s = {ratios(probe_time, step)}")
    print(f"  probe, 4 evaluations (v, with the ZTSNR hint): {v_time[0]:.2f} s = {ratios(v_time, step)}")
    print(f"  verdict on random weights: {result.summary()}")
    print("  reading errors: " + ", ".join(f"{k} {v:.2f}" for k, v in result.reading_error.items())
          + "; pass R2: " + ", ".join(f"{fit.name} {fit.r2:.3f}" for fit in result.fits))
    del unet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent height and width (64 = 512 px)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=["sd15"],
                        help="UNet configs to time (sdxl needs about 12 GB of RAM)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.families:
        bench(FAMILIES[name], args.size, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
