"""Issue 8 acceptance in the webuis: the exact posterior-mean oracle (v-prediction trained on the SD betas with ZTSNR,
bright class mu = 1.5, 4x64x64) as the UNet of the host's own model object, sampled by the host's own sampler for
EVERY entry of ``sd_samplers.all_samplers`` (20 steps, cfg 1), in three columns:

- ``before``: no extension; the host's own "Zero Terminal SNR" option on the model its v YAML gives;
- ``pack``: the extension forcing v + ZTSNR (spacing auto -> trailing);
- ``exact``: the same with ``terminal: exact``.

A1111 through ``process_images`` (webui_a1111.py), reForge and Forge through their passes (webui_forge.py).
Noise: antithetic pairs for the initial latent, for every ``p.rng`` draw and for the noise the samplers draw
themselves (``torch.randn``, Brownian trees: webui_oracle.antithetic_noise), so the brightness ratio is exact for the
affine single-class oracle. Every pack / exact ratio must lie in [0.95, 1.05] (the
host limitations listed below excepted, with the reason), and DDIM / PLMS / UniPC must end at a clean latent: the
latent's std outside the oracle's two features no larger than after the host's own DDIM (which ends at t = 1).
Tables are printed (``-s``) and written to ``$VPRED_SWEEP_TABLE`` when set; ``$VPRED_SWEEP_IMAGES`` (default 8)
images per run. Slow: one host's registry x 3 columns takes 0.5-1.5 min on 2 shared CPU cores at 8 images
(``-m "not slow"`` skips)."""

from __future__ import annotations

import os

import pytest
import webui_a1111
import webui_forge
from webui_host_env import WEBUI_PATH, is_forge_family, load_vpred_script
from webui_oracle import RATIO_HIGH, RATIO_LOW, Row, format_table

pytestmark = [pytest.mark.host, pytest.mark.slow,
              pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

MODES = ("before", "pack", "exact")
N_IMAGES = int(os.environ.get("VPRED_SWEEP_IMAGES", "8"))
CLEAN_SAMPLERS = ("DDIM", "PLMS", "UniPC")
EXACT_DDIM_TOLERANCE = 0.003  # measured 0.999 (an analytic first step on an exact model)
LEFTOVER_TOLERANCE = 1.05  # residual std relative to the host's own DDIM (t = 1 at the end)
RF_HINT = "RF"  # reForge's rectified-flow samplers ("Euler A Comfy RF", ...): NaN in every column
FORGE, FORGE_CFGPP = "Forge", "DDIM CFG++"


def host_is_forge() -> bool:
    import importlib.util

    return importlib.util.find_spec("backend") is not None


def _limit(name: str, host: str) -> str | None:
    """Samplers a host ships that fail in EVERY column, the host's own included, for reasons of their own."""
    if RF_HINT in name.split():
        return ("reForge rectified-flow sampler: alpha = 1 - sigma assumes flow-matching sigmas in [0, 1]; with a "
                "discrete model's VE sigmas (> 1) its renoise coefficient is sqrt(negative): NaN in every column")
    if host == FORGE and name == FORGE_CFGPP:
        return ("Forge at cfg 1: its sampling_function_inner skips the uncond pass (cfg-1 optimisation, uncond_pred "
                "zeros), so ddim_cfgpp renoises with last_noise_uncond = x / sigma; Forge also ignores the 1/12.5 "
                "cond_scale_miltiplier A1111 applies: diverges in every column, the webui's own included")
    return None


def _write(rows, host_label) -> str:
    lines = [f"## {host_label} ({N_IMAGES} images per run: ratio (per-image spread; within-image std))",
             format_table(rows, MODES), "",
             "leftover noise (within-image std / residual std outside the oracle's features):", ""]
    lines += ["| sampler | " + " | ".join(MODES) + " |", "|" + "---|" * (len(MODES) + 1)]
    for row in rows:
        if row.sampler in CLEAN_SAMPLERS:
            cells = [c if isinstance(c, str) else f"{c.within:.3f} / {c.residual:.4f}" for c in
                     (row.cells[m] for m in MODES)]
            lines.append(f"| {row.sampler} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    target = os.environ.get("VPRED_SWEEP_TABLE")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text + "\n\n")
    return text


def _check(rows: list[Row], host: str) -> None:
    failures = []
    by_name = {row.sampler: row for row in rows}
    for row in rows:
        limit = _limit(row.sampler, host)
        if limit is not None:  # a listed host limitation fails in the host's own column too (else it is ours)
            before = row.cells["before"]
            assert isinstance(before, str) or not before.passes, (row.sampler, limit)
            continue
        for mode in ("pack", "exact"):
            cell = row.cells[mode]
            ok = not isinstance(cell, str) and cell.finite and RATIO_LOW <= cell.ratio <= RATIO_HIGH
            if not ok:
                failures.append((row.sampler, mode, cell))
    assert not failures, failures
    host_ddim = by_name["DDIM"].cells["before"]
    for name in CLEAN_SAMPLERS:
        for mode in ("pack", "exact"):
            assert by_name[name].cells[mode].residual <= host_ddim.residual * LEFTOVER_TOLERANCE, (name, mode)
    # the exact terminal reaches DDIM / PLMS too (their first step takes x0 = -v; host clamp: 0.992)
    for name in ("DDIM", "PLMS"):
        assert abs(by_name[name].cells["exact"].ratio - 1.0) < EXACT_DDIM_TOLERANCE, name
    # the first step across sigma 4518 is what the pack fixes: the host's own Heun diverges there
    heun = by_name["Heun"].cells["before"]
    assert isinstance(heun, str) or not RATIO_LOW <= heun.ratio <= RATIO_HIGH or heun.spread > 1.0


def test_every_a1111_sampler_on_the_oracle(tmp_path):
    if is_forge_family():
        pytest.skip("A1111 model object (reForge: the next test)")
    _, data = load_vpred_script()
    models = webui_a1111.Models(str(tmp_path))
    try:
        model = models.make("oracle", ())
        webui_a1111.use_model(model)
        rows = webui_a1111.sweep(data, model, MODES, N_IMAGES)
    finally:
        models.close()
    _write(rows, f"A1111 ({os.path.basename(WEBUI_PATH)})")
    _check(rows, "A1111")


def test_every_reforge_sampler_on_the_oracle(tmp_path):
    if host_is_forge():
        pytest.skip("not a reForge tree")
    env = webui_forge.reforge_env()
    if env is None:
        pytest.skip("not a reForge tree")
    rows = webui_forge.sweep_reforge(env, tmp_path, MODES, N_IMAGES)
    _write(rows, "reForge")
    _check(rows, "reForge")



def test_every_forge_sampler_on_the_oracle(tmp_path):
    env = webui_forge.forge_env()
    if env is None:
        pytest.skip("not a Forge tree")
    rows = webui_forge.sweep_forge(env, tmp_path, MODES, N_IMAGES)
    _write(rows, FORGE)
    _check(rows, FORGE)
