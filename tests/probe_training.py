"""Tiny UNets trained on image-like synthetic latents with the eps, v, v+ZTSNR, x0 and rectified-flow objectives:
the honest models behind the prediction-type probe's acceptance tests (tests/test_probe.py).

Run from the repository root to (re)create the committed weights (deterministic at a given torch build and thread
count; about 10 minutes per model on one loaded CPU core):

    python tests/probe_training.py [--steps 1500] [--objectives eps v v_ztsnr x0 flow] [--out tests/data/probe_models]

Data (``synthetic_latents``): x0 = c * F + o + n per sample, with F the probe's own smooth-field family
(:func:`vpred_core.sampling.probe.smooth_field`, natural-image 1/f amplitude spectrum) up to
``DATA_MAX_CYCLES`` cycles per image, contrast c ~ U(0.6, 1.2), per-channel offset o ~ N(0, 0.5^2) ("colour /
brightness", the image-level low-frequency variance that a non-ZTSNR model learns to read at t = T) and a white
texture n ~ N(0, 0.1^2). Per-pixel std is about 1, as SD latents after the VAE scaling factor. The probe's clean
latent is a member of the same field family with fewer cycles, contrast 1 and no offset: in distribution.

Objectives (``training_example``), network input x, network timestep t, target y:
- ``eps`` / ``v`` / ``x0``: SD "scaled_linear" betas (0.00085, 0.012, T = 1000), t ~ U{0..999},
  x = z = alpha_t x0 + s_t eps, y = eps / alpha_t eps - s_t x0 / x0 (Ho et al. 2020; Salimans & Ho 2022).
- ``v_ztsnr``: as ``v`` on the exact ZTSNR schedule (Lin et al. 2023 Alg. 1, alpha_T = 0).
- ``flow``: sigma ~ U(0, 1), x = (1 - sigma) x0 + sigma eps, t = 1000 sigma, y = eps - x0 (rectified flow,
  Liu et al. 2022; the SD3 / ComfyUI ``CONST`` convention, Esser et al. 2024).

Weights are stored in float16 (``<objective>.safetensors``, metadata: objective, steps, seed, final loss, the
network config as JSON); tests evaluate them as float32 and float16 copies.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vpred_core.sampling.probe import smooth_field  # noqa: E402
from vpred_core.sampling.schedules import ScheduleSpec  # noqa: E402

OBJECTIVES = ("eps", "v", "v_ztsnr", "x0", "flow")
OBJECTIVE_PREDICTION = {"eps": "eps", "v": "v", "v_ztsnr": "v", "x0": "x0", "flow": "flow"}
OBJECTIVE_ZTSNR = {"eps": False, "v": False, "v_ztsnr": True, "x0": False, "flow": None}
MODELS_DIR = ROOT / "tests" / "data" / "probe_models"
CHANNELS = 4
DATA_SIZE = 16
DATA_MAX_CYCLES = 4
CONTRAST_RANGE = (0.6, 1.2)
OFFSET_STD = 0.5
TEXTURE_STD = 0.1
FLOW_TIMESTEP_MULTIPLIER = 1000.0
NETWORK_CONFIG = {"channels": CHANNELS, "widths": [16, 32, 32], "time_dim": 32, "groups": 8}
TRAIN_STEPS = 1500
BATCH = 32
LEARNING_RATE = 2e-3
EMA_DECAY = 0.995
SEED = 20261129
STORE_DTYPE = torch.float16


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / (dim/2)) (Vaswani et al. 2017; DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time projection, GroupNorm-SiLU-conv, residual (the DDPM / SD UNet block)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SelfAttention(nn.Module):
    """Single-head global self-attention over pixels (the bottleneck sees the whole latent, as SD's UNet does)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(groups, channels), nn.Conv2d(channels, 3 * channels, 1), \
            nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(1, 2).reshape(b, c, h, w))


class TinyUNet(nn.Module):
    """UNet f(x, t) -> output: one res block per level, strided-conv downsampling, nearest upsampling with skip
    concatenation, res block + global attention at the bottleneck; t is the network timestep (float, any scale)."""

    def __init__(self, channels: int = CHANNELS, widths=(16, 32, 32), time_dim: int = 32, groups: int = 8):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = widths[0]
        for level, width in enumerate(widths):
            self.down.append(ResBlock(prev, width, time_dim, groups))
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            prev = width
        self.mid, self.attention = ResBlock(prev, prev, time_dim, groups), SelfAttention(prev, groups)
        self.up = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(ResBlock(prev + width, width, time_dim, groups))
            prev = width
        self.norm_out, self.conv_out = nn.GroupNorm(groups, prev), nn.Conv2d(prev, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        h, skips = self.conv_in(x), []
        for block, downsample in zip(self.down, self.downsample, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = downsample(h)
        h = self.attention(self.mid(h, emb))
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def synthetic_latents(n: int, generator: torch.Generator, size: int = DATA_SIZE) -> torch.Tensor:
    """x0 = c F + o + n (see the module docstring), float64 (n, 4, size, size)."""
    field = smooth_field(n, CHANNELS, size, size, generator, max_cycles=DATA_MAX_CYCLES)
    low, high = CONTRAST_RANGE
    contrast = low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    offset = OFFSET_STD * torch.randn(n, CHANNELS, 1, 1, generator=generator, dtype=torch.float64)
    texture = TEXTURE_STD * torch.randn(n, CHANNELS, size, size, generator=generator, dtype=torch.float64)
    return contrast * field + offset + texture


def training_schedule(objective: str) -> torch.Tensor:
    """alphas_cumprod of the objective's training schedule (SD scaled_linear; exact ZTSNR for ``v_ztsnr``)."""
    return ScheduleSpec(ztsnr=objective == "v_ztsnr", terminal="exact").alphas_cumprod()


def training_example(objective: str, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator,
                     alphas_cumprod: torch.Tensor):
    """(network input, network timestep, target) for a batch (see the module docstring), float64."""
    n = x0.shape[0]
    if objective == "flow":
        sigma = torch.rand(n, generator=generator, dtype=torch.float64)
        sig = sigma.view(-1, 1, 1, 1)
        return (1 - sig) * x0 + sig * eps, FLOW_TIMESTEP_MULTIPLIER * sigma, eps - x0
    t = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator)
    alpha = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    target = {"eps": eps, "x0": x0}.get(objective)
    if target is None:
        target = alpha * eps - s * x0
    return alpha * x0 + s * eps, t.to(torch.float64), target


def new_network(seed: int = SEED) -> TinyUNet:
    """A freshly initialised TinyUNet (PyTorch's default init under a fixed seed, global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyUNet(**NETWORK_CONFIG)


def train_denoiser(objective: str, steps: int = TRAIN_STEPS, seed: int = SEED, model: nn.Module | None = None,
                   log_every: int = 100):
    """Train ``model`` (default: a new TinyUNet; any ``f(x, t)`` module) with AdamW + one-cycle LR on fresh synthetic
    batches; returns the EMA copy of the weights in eval mode and the final smoothed training loss."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    model = model if model is not None else new_network(seed)
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    abar = training_schedule(objective)
    smoothed, start = 0.0, time.time()
    for step in range(steps):
        x0 = synthetic_latents(BATCH, generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x_in, t, target = training_example(objective, x0, eps, generator, abar)
        loss = (model(x_in.float(), t.float()) - target.float()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        smoothed = 0.99 * smoothed + 0.01 * loss.item()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"{objective} step {step} loss {smoothed / (1 - 0.99 ** (step + 1)):.4f} "
                  f"{time.time() - start:.0f}s", flush=True)
    return ema.eval(), smoothed / (1 - 0.99**steps)


def save_model(model: nn.Module, path: Path, metadata: dict) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(STORE_DTYPE).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})
    return path


def load_model(objective: str, dtype: torch.dtype = torch.float32, folder: Path = MODELS_DIR) -> TinyUNet:
    """The committed trained model for ``objective`` as a ``dtype`` copy in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / f"{objective}.safetensors"
    with safe_open(str(path), "pt") as handle:
        config = json.loads(handle.metadata()["network_config"])
    model = TinyUNet(**config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(path)).items()})
    return model.to(dtype).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for objective in args.objectives:
        start = time.time()
        model, loss = train_denoiser(objective, args.steps, args.seed)
        path = save_model(model, args.out / f"{objective}.safetensors", {
            "objective": objective, "steps": args.steps, "seed": args.seed, "batch": BATCH,
            "final_loss": f"{loss:.5f}", "network_config": json.dumps(NETWORK_CONFIG),
            "data": f"smooth_field max_cycles={DATA_MAX_CYCLES} size={DATA_SIZE} offset_std={OFFSET_STD} "
                    f"texture_std={TEXTURE_STD} contrast={CONTRAST_RANGE}",
            "torch": torch.__version__, "threads": args.threads})
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB, loss {loss:.4f}, {time.time() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
