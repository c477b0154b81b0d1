"""Per-step cost of the pack's ComfyUI patches against ComfyUI's native equivalents (a script printing ratios, not a
test; target <= 1.01x).

- native: ComfyUI's ModelSamplingDiscrete(v_prediction, zsnr) + RescaleCFG(0.7);
- pack:   the pack's Model Sampling (v, ZTSNR on: host-clamp table + first-step wrapper) + CFG Rescale (0.7, v).
Both sample with ComfyUI's own ``nodes.common_ksampler`` (euler, ``simple``: both start at sigma_max, so the pack's
first step acts), cfg 5 (cond + uncond), a full-size SD1.5 UNet (ComfyUI's SD15 config, 860M parameters, random
weights: nothing is downloaded) at 64x64 latents (``--latent-size``). Repetitions are interleaved (A B, B A, ...)
and the per-pair ratio's median and spread are printed. A second measurement with a zero-cost UNet isolates the
per-step cost of ComfyUI's sampling loop plus each variant's patches, so the patches' own difference is also shown
in milliseconds.

Usage (ComfyUI tree and venv as in docs/HOST_TESTING.md):
    COMFYUI_PATH=/work/hosts/ComfyUI /work/venv-comfy/bin/python benchmarks/bench_comfy_step.py [--reps 5] \
        [--latent-size 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "vpred_ztsnr_pack"
SEED = 5
CFG = 5.0
PHI = 0.7
SAMPLER = "euler"
SCHEDULER = "simple"
INIT_STD = 0.02
LATENT_CHANNELS = 4
DEFAULT_LATENT_SIZE = 64  # 512x512 images
CONTEXT_SHAPE = (1, 77, 768)
# SD1.5's UNet as ComfyUI's model detection builds it (comfy/model_detection.py for an SD1.5 checkpoint).
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_spatial_transformer": True, "legacy": False,
}


def start_comfyui(comfyui_path: str):
    """ComfyUI's node registry with the pack loaded through ComfyUI's own loader (as tests/host_comfyui does)."""
    sys.path.insert(0, comfyui_path)
    from comfy.cli_args import args

    args.cpu = args.cpu or not torch.cuda.is_available()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    custom = Path(tempfile.mkdtemp(prefix="bench_custom_nodes_"))
    (custom / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    if not asyncio.run(nodes.load_custom_node(str(custom / PACK_DIR_NAME), ignore=set(nodes.NODE_CLASS_MAPPINGS))):
        raise RuntimeError("ComfyUI failed to load the pack")
    return nodes


class NullUNet(torch.nn.Module):
    """A zero-cost diffusion model: isolates ComfyUI's sampling loop and the patches."""

    dtype = torch.float32

    def forward(self, x, timesteps, context=None, **kwargs):
        return torch.zeros_like(x)


def sd15_model(null_unet: bool = False):
    """A ModelPatcher around ComfyUI's SD1.5 BaseModel with random weights (or a zero-cost UNet)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(SD15_UNET_CONFIG))
    config.set_inference_dtype(torch.float16 if mm.should_use_fp16() else torch.float32, None)
    base = config.get_model({}, "", device=mm.get_torch_device() if not null_unet else torch.device("cpu"))
    if null_unet:
        base.diffusion_model = NullUNet()
    else:
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for param in base.diffusion_model.parameters():
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def variants(nodes, model) -> dict:
    """{"native": MODEL, "pack": MODEL}: the same base with ComfyUI's patches or the pack's."""
    mappings = nodes.NODE_CLASS_MAPPINGS
    native = mappings["ModelSamplingDiscrete"]().patch(model, "v_prediction", True)[0]
    native = mappings["RescaleCFG"]().patch(native, PHI)[0]
    pack = mappings["VPredZTSNR_ModelSampling"].execute(model, "v", "on", "auto", 0.00085, 0.012, 1000,
                                                        "host_clamp").result[0]
    pack = mappings["VPredZTSNR_CFGRescale"].execute(pack, PHI, "v").result[0]
    return {"native": native, "pack": pack}


def step_time(nodes, model, steps: int, positive, negative, size: int) -> float:
    """Seconds per sampling step of one common_ksampler run."""
    import comfy.model_management as mm

    latent = {"samples": torch.zeros(1, LATENT_CHANNELS, size, size)}
    mm.soft_empty_cache()
    start = time.perf_counter()
    with torch.inference_mode():  # as ComfyUI runs every node (execution.py)
        nodes.common_ksampler(model, SEED, steps, CFG, SAMPLER, SCHEDULER, positive, negative, latent)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def interleaved(nodes, models: dict, steps: int, reps: int, size: int, label: str) -> dict:
    """Per-step seconds of each variant, measured in alternating order; one warm-up run each first."""
    gen = torch.Generator().manual_seed(SEED)
    positive = [[torch.randn(CONTEXT_SHAPE, generator=gen), {}]]
    negative = [[torch.randn(CONTEXT_SHAPE, generator=gen), {}]]
    names = list(models)
    for name in names:
        step_time(nodes, models[name], 1, positive, negative, size)
    times = {name: [] for name in names}
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            times[name].append(step_time(nodes, models[name], steps, positive, negative, size))
        print(f"  {label} rep {rep + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms/step" for n in names),
              flush=True)
    return times


def report(label: str, times: dict) -> None:
    ratios = [p / n for p, n in zip(times["pack"], times["native"], strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else (min(ratios), None, max(ratios))
    print(f"{label}: native {statistics.median(times['native']) * 1e3:.2f} ms/step, "
          f"pack {statistics.median(times['pack']) * 1e3:.2f} ms/step")
    print(f"  pack / native per-step ratio: median {statistics.median(ratios):.4f}, "
          f"interquartile {q[0]:.4f}..{q[-1]:.4f}, min {min(ratios):.4f}, max {max(ratios):.4f} "
          f"({len(ratios)} interleaved pairs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions with the SD1.5 UNet")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per repetition")
    parser.add_argument("--null-reps", type=int, default=40, help="repetitions with the zero-cost UNet")
    parser.add_argument("--null-steps", type=int, default=20)
    parser.add_argument("--null-only", action="store_true", help="only the zero-cost UNet measurement")
    parser.add_argument("--latent-size", type=int, default=DEFAULT_LATENT_SIZE,
                        help="latent height = width (64: 512x512 images); smaller runs faster on a CPU")
    opts = parser.parse_args()
    nodes = start_comfyui(os.environ.get("COMFYUI_PATH", "ComfyUI"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    size = opts.latent_size
    print(f"device: {device}; {SAMPLER}/{SCHEDULER}, cfg {CFG}, latent 1x{LATENT_CHANNELS}x{size}x{size}", flush=True)
    null = interleaved(nodes, variants(nodes, sd15_model(null_unet=True)), opts.null_steps, opts.null_reps, size,
                       "zero-cost UNet")
    report("zero-cost UNet (sampling loop + patches)", null)
    delta = statistics.median(null["pack"]) - statistics.median(null["native"])
    print(f"patch cost difference {delta * 1e3:+.3f} ms/step (median pack - median native, zero-cost UNet)")
    if opts.null_only:
        return
    full = interleaved(nodes, variants(nodes, sd15_model()), opts.steps, opts.reps, size, "SD1.5 UNet")
    report("SD1.5 UNet, random weights", full)
    for label, unet_step in (("median", statistics.median(full["native"])), ("fastest", min(full["native"]))):
        print(f"patch cost difference = {delta / unet_step:+.4%} of the {label} native SD1.5 step "
              f"-> ratio {1 + delta / unet_step:.4f} (target <= 1.01)")


if __name__ == "__main__":
    main()
