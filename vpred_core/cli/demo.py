"""The built-in demo: sample the Gaussian oracle with k-diffusion under the flawed and the fixed setups, and render
the samples as one labelled PNG grid (Pillow, imported lazily).

Rows (all for the "bright" class, mu = 1.5, 4x64x64 latents, ``steps`` steps, antithetic noise pairs):
(a) eps model on the SD schedule, webui spacing (leading+1)  -> lands near gray (Lin et al. 2023 Fig. 1)
(b) v model on the ZTSNR schedule, trailing start at t = T   -> reaches the class brightness
(c) (b) with CFG 7                                            -> over-saturated ("burnt")
(d) (c) with CFG rescale phi = 0.7 in v-space                 -> saturation pulled back toward the cond std
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.denoiser import DiscreteDenoiser, GuidedDenoiser, sample_from_schedule
from ..sampling.schedules import ScheduleSpec
from .kdiffusion import load_kdiffusion
from .oracle import BRIGHT_CLASS, DEFAULT_CLASSES, OracleModel

UNCONDITIONAL = -1
DEMO_CFG_SCALE = 7.0
DEMO_RESCALE_PHI = 0.7


@dataclass(frozen=True)
class DemoCase:
    """One row of the demo: model prediction type, schedule, spacing, guidance."""

    label: str
    prediction: str
    ztsnr: bool
    spacing: str
    cond_scale: float = 1.0
    phi: float = 0.0
    terminal: str = "host_clamp"


DEMO_CASES = (
    DemoCase("(a) eps + SD schedule, leading+1", "eps", False, "leading_plus_one"),
    DemoCase("(b) v + ZTSNR + trailing", "v", True, "trailing"),
    DemoCase("(c) (b) + CFG 7", "v", True, "trailing", DEMO_CFG_SCALE),
    DemoCase("(d) (c) + CFG rescale 0.7", "v", True, "trailing", DEMO_CFG_SCALE, DEMO_RESCALE_PHI),
)


@dataclass(frozen=True)
class DemoResult:
    """Samples of one case and their statistics."""

    case: DemoCase
    samples: torch.Tensor
    brightness_ratio: float
    brightness_spread: float
    saturation: float


def antithetic_noise(n: int, shape, seed: int) -> torch.Tensor:
    """n unit-variance noise tensors in (z, -z) pairs (antithetic variates; n must be even)."""
    if n < 2 or n % 2:
        raise ValueError(f"the number of samples must be even and >= 2, got {n}")
    half = torch.randn(n // 2, *shape, generator=torch.Generator().manual_seed(seed))
    return torch.cat([half, -half])


def sample_case(case: DemoCase, noise: torch.Tensor, steps: int, sampler, class_index: int = BRIGHT_CLASS,
                dtype: torch.dtype | None = None, first_step: str = "auto"):
    """Sample the oracle (model dtype ``dtype``, default float32) for one case with a k-diffusion sampler."""
    alphas_cumprod = ScheduleSpec(ztsnr=case.ztsnr, terminal=case.terminal).alphas_cumprod()
    model = OracleModel(alphas_cumprod, case.prediction, shape=tuple(noise.shape[1:]), dtype=dtype or torch.float32)
    denoiser = DiscreteDenoiser(model, alphas_cumprod, case.prediction)
    batch = noise.shape[0]
    guided = GuidedDenoiser(denoiser, {"cond": torch.full((batch,), class_index)},
                            {"cond": torch.full((batch,), UNCONDITIONAL)}, case.cond_scale, case.phi)
    sigmas = denoiser.get_sigmas(steps, case.spacing)
    return sample_from_schedule(sampler, guided, noise, sigmas, first_step=first_step, disable=True)


def summarize(case: DemoCase, samples: torch.Tensor, class_mean: float) -> DemoResult:
    """Brightness ratio (mean image mean / mu_c), spread (std of image means), saturation (mean pixel std)."""
    brightness = samples.flatten(1).mean(1)
    return DemoResult(case, samples, float(brightness.mean() / class_mean), float(brightness.std()),
                      float(samples.flatten(1).std(1).mean()))


def run_demo(samples: int = 16, steps: int = 20, seed: int = 0, sampler_name: str = "euler",
             shape=(4, 64, 64), cases=DEMO_CASES) -> list[DemoResult]:
    """Run every demo case on the same antithetic noise; returns one DemoResult per case."""
    sampling, _ = load_kdiffusion()
    sampler = getattr(sampling, f"sample_{sampler_name}")
    noise = antithetic_noise(samples, shape, seed)
    class_mean = DEFAULT_CLASSES[BRIGHT_CLASS].brightness_mean
    return [summarize(case, sample_case(case, noise, steps, sampler), class_mean) for case in cases]


def format_table(results: list[DemoResult]) -> str:
    """Plain-text table of the demo statistics."""
    head = f"{'case':<36} {'brightness/mu':>13} {'spread':>8} {'saturation':>10}"
    rows = [f"{r.case.label:<36} {r.brightness_ratio:>13.3f} {r.brightness_spread:>8.3f} {r.saturation:>10.3f}"
            for r in results]
    return "\n".join([head, "-" * len(head), *rows])


DISPLAY_RANGE = 5.0  # latent values in [-5, 5] map to black..white; beyond is clipped ("burnt")
TILE_SCALE = 2
LABEL_WIDTH = 250
PADDING = 4
BACKGROUND = (32, 32, 32)
TEXT_COLOUR = (235, 235, 235)


def to_gray_image(sample: torch.Tensor):
    """One latent (C, H, W) as a grayscale PIL image of its channel mean, [-5, 5] -> [0, 255]."""
    from PIL import Image

    mean = sample.float().mean(0)
    pixels = ((mean / DISPLAY_RANGE + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    image = Image.fromarray(pixels.numpy(), mode="L")
    return image.resize((image.width * TILE_SCALE, image.height * TILE_SCALE)).convert("RGB")


def render_grid(results, path, per_row: int = 8) -> None:
    """Write a PNG with one labelled row of ``per_row`` samples per demo case."""
    from PIL import Image, ImageDraw

    tiles = [[to_gray_image(s) for s in r.samples[:per_row]] for r in results]
    tile_w, tile_h = tiles[0][0].size
    width = LABEL_WIDTH + per_row * (tile_w + PADDING)
    canvas = Image.new("RGB", (width, len(results) * (tile_h + PADDING) + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, (result, row_tiles) in enumerate(zip(results, tiles, strict=True)):
        top = PADDING + row * (tile_h + PADDING)
        text = f"{result.case.label}\nbrightness/mu {result.brightness_ratio:.2f}\nsaturation {result.saturation:.2f}"
        draw.multiline_text((PADDING, top + PADDING), text, fill=TEXT_COLOUR)
        for col, tile in enumerate(row_tiles):
            canvas.paste(tile, (LABEL_WIDTH + col * (tile_w + PADDING), top))
    canvas.save(path)
