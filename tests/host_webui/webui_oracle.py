"""The exact posterior-mean oracle (``vpred_core.cli.oracle.OracleModel``: v-prediction trained on the SD betas with
ZTSNR, bright class mu = 1.5, 4x64x64 latents) as the UNet inside a webui's own model object, sampled through the
host's own sampler registry (``sd_samplers.all_samplers``) the way the host's processing runs a pass.

Statistics of the final latents (all images of the bright class; for one class the oracle is affine in z, so an
exact sampler reproduces the data distribution):
- ``ratio``: mean image brightness / mu (target 1; antithetic initial-noise pairs cancel the noise-driven part);
- ``spread``: std of the image brightnesses (the data's is the class's brightness std, 0.5);
- ``within``: mean within-image std of the latent;
- ``residual``: std of the latent outside the oracle's two features (brightness, pattern): the data's pixel noise is
  exactly ``PIXEL_STD`` = 0.1, so anything above it is noise the sampler left in the latent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from webui_host_env import pack

N_IMAGES = 16
STEPS = 20
SEED = 0
RATIO_LOW, RATIO_HIGH = 0.95, 1.05
MODES = ("before", "pack", "exact")


def oracle_parts():
    oracle = pack("vpred_core.cli.oracle")
    schedules = pack("vpred_core.sampling.schedules")
    return oracle, schedules


class OracleUNet(torch.nn.Module):
    """In place of the webui's ``diffusion_model``: the oracle's v (or eps) for the bright class, whatever the text
    conditioning (cfg 1 makes the guided result the cond result). Trained on the SD betas, with ZTSNR (host clamp)
    when ``ztsnr``; one oracle per latent shape (hires passes sample larger latents)."""

    def __init__(self, prediction: str = "v", ztsnr: bool = True, dtype=torch.float32):
        super().__init__()
        oracle, schedules = oracle_parts()
        self.alphas_cumprod = schedules.ScheduleSpec(ztsnr=ztsnr).alphas_cumprod()
        self.prediction, self.class_index, self.dtype = prediction, oracle.BRIGHT_CLASS, dtype
        self.oracles = {}
        self.calls = 0
        self.fail_with = None  # an exception instance to raise from the next call (a generation that raised)

    def oracle(self, shape):
        shape = tuple(shape)
        if shape not in self.oracles:
            self.oracles[shape] = oracle_parts()[0].OracleModel(self.alphas_cumprod, self.prediction, shape=shape,
                                                                dtype=self.dtype)
        return self.oracles[shape]

    def forward(self, x, timesteps=None, context=None, **_kwargs):
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        cond = torch.full((x.shape[0],), self.class_index, dtype=torch.long)
        t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return self.oracle(x.shape[1:])(x.float(), t, cond).to(x.dtype)


def class_mean() -> float:
    oracle, _ = oracle_parts()
    return oracle.DEFAULT_CLASSES[oracle.BRIGHT_CLASS].brightness_mean


def antithetic(n: int, shape=(4, 64, 64), seed: int = SEED) -> torch.Tensor:
    return pack("vpred_core.cli.demo").antithetic_noise(n, shape, seed)


class AntitheticRNG:
    """``p.rng`` for a pass: the host's TorchHijack draws every ancestral / SDE noise through ``next()``; each draw is
    an antithetic pair batch, so the injected noise cancels in the batch mean as the initial noise does."""

    def __init__(self, n: int, shape=(4, 64, 64), seed: int = SEED):
        self.n, self.shape = n, shape
        self.generator = torch.Generator().manual_seed(seed + 1)

    def next(self):
        half = torch.randn((self.n // 2, *self.shape), generator=self.generator)
        return torch.cat([half, -half])


# Modules whose samplers draw noise themselves (A1111 k-diffusion, reForge's k_diff / ldm_patched copies, reForge's
# SMEA samplers): their ``torch`` and ``BrownianTreeNoiseSampler`` are paired for the block.
NOISE_MODULES = ("k_diffusion.sampling", "k_diff.k_diffusion.sampling", "ldm_patched.k_diffusion.sampling",
                 "modules.sd_samplers_kdiffusion_smea")


class AntitheticTorch:
    """A sampler module's ``torch`` for a block: ``randn`` / ``randn_like`` of an even batch draw half of it and
    mirror it (the webuis' own TorchHijack, installed per sampler, routes ``randn_like`` to ``p.rng`` instead)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def randn_like(self, x, *args, **kwargs):
        if x.ndim == 0 or x.shape[0] % 2:
            return self._real.randn_like(x, *args, **kwargs)
        half = self._real.randn_like(x[: x.shape[0] // 2], *args, **kwargs)
        return self._real.cat([half, -half])

    def randn(self, *size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if not shape or shape[0] % 2:
            return self._real.randn(*size, **kwargs)
        half = self._real.randn((shape[0] // 2, *shape[1:]), **kwargs)
        return self._real.cat([half, -half])


def mirrored_brownian(original):
    """A BrownianTreeNoiseSampler class whose tree covers the first half of the batch (the first half of a per-image
    seed list) and whose increments are mirrored for the second half."""

    class MirroredBrownianTreeNoiseSampler:
        def __init__(self, x, *args, **kwargs):
            half = x.shape[0] // 2
            if isinstance(kwargs.get("seed"), list):
                kwargs["seed"] = kwargs["seed"][:half]
            self.inner = original(x[:half], *args, **kwargs)

        def __call__(self, sigma, sigma_next):
            first = self.inner(sigma, sigma_next)
            return torch.cat([first, -first])

    return MirroredBrownianTreeNoiseSampler


@contextlib.contextmanager
def antithetic_noise():
    """For the block, the noise the samplers draw themselves comes in antithetic pairs like ``p.rng``'s: the
    modules' ``torch.randn`` / ``randn_like`` (:class:`AntitheticTorch`) and their Brownian trees (the host's own tree
    over half the batch, mirrored; the hosts' ``create_noise_sampler`` builds it from these modules too)."""
    import sys

    saved = []
    for name in NOISE_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        for attr, make in (("torch", AntitheticTorch), ("BrownianTreeNoiseSampler", mirrored_brownian)):
            current = getattr(module, attr, None)
            if current is not None:
                saved.append((module, attr, current))
                setattr(module, attr, make(current))
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


@dataclasses.dataclass
class Stats:
    ratio: float
    spread: float
    within: float
    residual: float
    finite: bool

    @property
    def passes(self) -> bool:
        return self.finite and RATIO_LOW <= self.ratio <= RATIO_HIGH

    def cell(self) -> str:
        if not self.finite:
            return "NaN/inf"
        return f"{self.ratio:.3f} ({self.spread:.2f}; {self.within:.2f})"


def stats(latents: torch.Tensor) -> Stats:
    x = latents.double().flatten(1)
    finite = bool(torch.isfinite(x).all())
    if not finite and torch.isfinite(x).any(dim=1).sum() == 0:
        return Stats(math.nan, math.nan, math.nan, math.nan, False)
    if not finite:
        return Stats(math.nan, math.nan, math.nan, math.nan, False)
    basis = OracleUNet().oracle(latents.shape[1:]).basis
    brightness = x.mean(1)
    resid = x - (x @ basis.T) @ basis
    return Stats(float(brightness.mean() / class_mean()), float(brightness.std()), float(x.std(1).mean()),
                 float(resid.pow(2).mean(1).sqrt().mean()), True)


@dataclasses.dataclass
class Row:
    sampler: str
    cells: dict


def format_table(rows: list[Row], modes=MODES) -> str:
    head = "| sampler | " + " | ".join(modes) + " |"
    lines = [head, "|" + "---|" * (len(modes) + 1)]
    for row in rows:
        cells = []
        for mode in modes:
            value = row.cells.get(mode)
            cells.append(value if isinstance(value, str) else (value.cell() if value is not None else "-"))
        lines.append(f"| {row.sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
