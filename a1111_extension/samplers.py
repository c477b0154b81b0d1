"""Per sampling pass: the webui's sampler object gets the request's spacing and a terminal-safe first step.

Every webui creates a fresh sampler per pass (txt2img, hires, img2img); :func:`prepare_pass` adjusts that object
only (instance attributes), so nothing global changes:
- k-diffusion samplers: ``func`` is wrapped with the core's :func:`with_ddim_first_step` (a schedule that starts at
  SNR ~0 takes one first-order DDIM step, then the sampler runs on the rest: Heun, DPM2 a and every other second-order
  or ancestral step across sigma 4518 -> sigma_1 diverges otherwise); schedulers that do not start at sigma_max
  (DDIM, Align Your Steps, Turbo) get the core's trailing sigmas through ``p.sampler_noise_scheduler_override``, set or
  removed per pass (A1111 calls it in both passes) and never replacing another extension's override.
- DDIM / PLMS (timestep samplers, leading+1 in the host: 20 steps walk 951 .. 1): trailing timesteps with t = 0
  appended, ``[0, 49, 99, ..., 999]`` ascending, so the loop (which returns the latent at ``timesteps[0]``) starts at
  t = T and ends at t = 0; PLMS's pseudo-improved-Euler first step is replaced by a DDIM step when it starts at SNR ~0
  (DDIM's too with the exact terminal: x0 = -v there). UniPC only reads the number of timesteps (it walks its own grid
  from t = T) and is left to the host, also with the exact terminal (its first update from the clamped table).
- A1111's LCM denoiser reads every model output as eps: for a v model (this pass's ``parameterization``) its
  ``get_eps`` converts v to eps (:func:`lcm_reads_v`).

Where the host has ``process_before_every_sampling`` (A1111 1.10+, reForge, Forge) it calls :func:`prepare_pass`;
A1111 1.8 has no hook between creating the txt2img sampler and running it, so for the duration of a request that
needs it :func:`install_pass_hook` wraps the two sampler classes' ``sample`` / ``sample_img2img`` (inert for other
requests, removed in postprocess and by the next request after a crash).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch

from ..vpred_core.sampling.denoiser import FIRST_STEP_IDS, uses_ddim_first_step, with_ddim_first_step
from ..vpred_core.sampling.prediction import append_dims, eps_from_v, x0_from_eps
from ..vpred_core.sampling.schedules import sigma_schedule, timesteps_for_spacing
from ..vpred_core.settings import TRAILING

logger = logging.getLogger(__name__)
ORIGINAL_ATTR = "vpred_original"
WRAPPED_FLAG = "vpred_first_step"
SAME_SCHEDULER_LABEL = "Use same scheduler"  # A1111 1.9+ hires scheduler choice meaning "as the first pass"
# k-diffusion schedulers (webui names and labels, lower case) whose first sigma is below the model's sigma_max.
SCHEDULERS_NOT_STARTING_AT_SIGMA_MAX = frozenset({
    "ddim", "align_your_steps", "align your steps", "align_your_steps_custom", "align your steps custom",
    "align_your_steps_gits", "align your steps gits", "align_your_steps_11", "align your steps 11",
    "align_your_steps_32", "align your steps 32", "turbo",
})
# Timestep samplers whose loop walks the timesteps list (UniPC only reads its length).
LOOP_TIMESTEP_SAMPLERS = frozenset({"ddim", "ddim_cfgpp", "plms", "plms_cfgpp"})
# ... and whose first step is of higher order (a DDIM first step is needed from SNR ~0).
HIGHER_ORDER_FIRST_TIMESTEP_SAMPLERS = frozenset({"plms", "plms_cfgpp"})
FINAL_TIMESTEP = 0
SAMPLE_METHODS = ("sample", "sample_img2img")


# ---- pure parts (tested without a host)


def scheduler_needs_trailing_override(scheduler_name: str | None) -> bool:
    """True for k-diffusion schedulers that do not start at sigma_max (the others already start at t = T)."""
    return bool(scheduler_name) and scheduler_name.strip().lower() in SCHEDULERS_NOT_STARTING_AT_SIGMA_MAX


def trailing_sigmas(sigmas_table: torch.Tensor, steps: int) -> torch.Tensor:
    """Trailing-spaced k-diffusion sigmas (steps + 1, first = sigma_max, last 0) from the model's own table."""
    table = sigmas_table.detach().cpu().double()  # MPS has no float64: do the maths on the CPU
    return sigma_schedule(table, int(steps), TRAILING).to(device=sigmas_table.device, dtype=sigmas_table.dtype)


def webui_timesteps(spacing: str, steps: int, timesteps: int = 1000) -> torch.Tensor:
    """Ascending timesteps in the layout the webui's DDIM/PLMS loops walk (they return the latent at
    ``timesteps[0]``): the spacing's ``steps`` timesteps with t = 0 appended, so the last step ends clean."""
    ascending = torch.flip(timesteps_for_spacing(spacing, int(steps), timesteps), dims=[0])
    return torch.cat([ascending.new_tensor([FINAL_TIMESTEP]), ascending])


def sigma_at_timestep(alphas_cumprod: torch.Tensor, timestep) -> float:
    """VE sigma = sqrt((1 - abar) / abar) at ``timestep`` (inf where abar is 0), for the core's first-step decision."""
    abar = float(alphas_cumprod[int(timestep)])
    return math.inf if abar <= 0.0 else math.sqrt((1.0 - abar) / abar)


def with_ddim_first_timestep(func, first_step: str = "auto", exact_terminal: bool = False):
    """A webui timestep-sampler function ``func(model, x, timesteps, extra_args, callback, disable, **kw)`` (eps
    model at integer timesteps, VP x, ascending timesteps, latent returned at timesteps[0]) whose first step from
    SNR ~0 is the deterministic DDIM step (Song et al. 2021 eq. 12): x0 = (x - s_t eps) / alpha_t,
    x = alpha_prev x0 + s_prev eps; ``func`` then runs on timesteps[:-1]. Callbacks keep the host's numbering.

    ``exact_terminal`` (a v model whose schedule ends at abar_T = 0, sampled from the host's clamped table): the first
    step is taken as at SNR 0: x0 = -v = (s_t x - eps) / alpha_t (eps = alpha_t v + s_t x) and eps_hat = x (z is
    pure noise there), as :func:`vpred_core.sampling.denoiser.exact_terminal_x0` does for k-diffusion samplers."""
    if first_step not in FIRST_STEP_IDS:
        raise ValueError(f"first_step must be one of {FIRST_STEP_IDS}, got {first_step!r}")

    @functools.wraps(func)
    @torch.no_grad()  # as the webuis' timestep samplers are
    def sample(model, x, timesteps, extra_args=None, callback=None, disable=None, **kwargs):
        abar = model.inner_model.inner_model.alphas_cumprod
        if len(timesteps) < 3 or not uses_ddim_first_step(sigma_at_timestep(abar, timesteps[-1]), first_step):
            return func(model, x, timesteps, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
        extra_args = {} if extra_args is None else extra_args
        t, t_prev = int(timesteps[-1]), int(timesteps[-2])
        eps = model(x, t * x.new_ones([x.shape[0]]), **extra_args)
        a_t, a_prev = (abar[i].detach().cpu().to(torch.float64).item() for i in (t, t_prev))
        wide = torch.promote_types(x.dtype, torch.float32)
        if exact_terminal:
            x0, eps_hat = ((1 - a_t) ** 0.5 * x.to(wide) - eps.to(wide)) / a_t**0.5, x.to(wide)
        else:
            x0, eps_hat = x0_from_eps(x.to(wide), eps.to(wide), a_t**0.5, (1 - a_t) ** 0.5), eps.to(wide)
        x_prev = (a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps_hat).to(x.dtype)
        if callback is not None:
            callback({"x": x_prev, "i": 0, "sigma": 0, "sigma_hat": 0, "denoised": x0.to(x.dtype)})
        shifted = None if callback is None else (lambda info: callback({**info, "i": info["i"] + 1}))
        return func(model, x_prev, timesteps[:-1], extra_args=extra_args, callback=shifted, disable=disable, **kwargs)

    return sample


def is_lcm_denoiser(model_wrap) -> bool:
    """A1111's ``LCMCompVisDenoiser``: a k-diffusion ``DiscreteEpsDDPMDenoiser`` over 50 of the 1000 timesteps."""
    return hasattr(model_wrap, "skip_steps") and hasattr(model_wrap, "get_eps") and hasattr(model_wrap, "inner_model")


def lcm_reads_v(model_wrap) -> None:
    """A1111's LCM denoiser reads every model output as eps (``get_eps`` is ``apply_model``, whatever the
    ``parameterization``): for this pass's v model its ``get_eps`` returns eps = alpha_t v + s_t z (z = the VP input
    it is called with, t its timestep) so that the LCM update sees eps."""
    original = model_wrap.get_eps

    @functools.wraps(original)
    def get_eps(z, t, **kwargs):
        v = original(z, t, **kwargs)
        abar = model_wrap.inner_model.alphas_cumprod.to(z.device)[t.long()].to(torch.float64)
        alpha, s = append_dims(abar.sqrt(), z.ndim), append_dims((1 - abar).sqrt(), z.ndim)
        return eps_from_v(z.to(torch.float64), v.to(torch.float64), alpha, s).to(v.dtype)

    model_wrap.get_eps = get_eps


def takes_sigmas(func) -> bool:
    """k-diffusion sampler functions take ``sigmas``; DPM fast / adaptive take sigma_min / sigma_max / n instead."""
    try:
        return "sigmas" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def hires_scheduler(p) -> str | None:
    """The hires pass's scheduler (A1111 1.9+ ``hr_scheduler``; None/"Use same scheduler" = the first pass's)."""
    name = getattr(p, "hr_scheduler", None)
    return getattr(p, "scheduler", None) if name in (None, "", SAME_SCHEDULER_LABEL) else name


def pass_scheduler(p) -> str | None:
    return hires_scheduler(p) if getattr(p, "is_hr_pass", False) else getattr(p, "scheduler", None)


class TrailingSigmas:
    """``p.sampler_noise_scheduler_override`` for schedulers that do not start at sigma_max."""

    def __init__(self, p):
        self.p = p

    def __call__(self, steps):
        return trailing_sigmas(self.p.sampler.model_wrap.sigmas.cpu(), steps)


def set_trailing_override(p, spacing: str, scheduler_name: str | None) -> None:
    """Install the trailing sigmas for a pass whose scheduler does not start at sigma_max; remove ours for a pass
    whose scheduler does. Another extension's override is kept."""
    needed = spacing == TRAILING and scheduler_needs_trailing_override(scheduler_name)
    current = getattr(p, "sampler_noise_scheduler_override", None)
    if needed and current is None:
        p.sampler_noise_scheduler_override = TrailingSigmas(p)
    elif not needed and isinstance(current, TrailingSigmas):
        p.sampler_noise_scheduler_override = None


def clear_trailing_override(p) -> None:
    if isinstance(getattr(p, "sampler_noise_scheduler_override", None), TrailingSigmas):
        p.sampler_noise_scheduler_override = None


# ---- one pass


def _func_name(func) -> str:
    return getattr(inspect.unwrap(func), "__name__", "")


def _trailing_timesteps(original):
    @functools.wraps(original)
    def get_timesteps(p, steps):
        return webui_timesteps(TRAILING, steps, 1000).to(original(p, steps).device)

    return get_timesteps


def prepare_pass(p, sampler, spacing: str, first_step: str, exact_terminal: bool) -> None:
    """Adjust this pass's sampler object (see module docstring); idempotent for one sampler object.
    Call it only for passes of a request the pack acts on, after the pass's model has its plan."""
    if sampler is None or getattr(sampler, WRAPPED_FLAG, False):
        return
    func = getattr(sampler, "func", None)
    if func is None:
        return
    if hasattr(sampler, "get_timesteps"):  # webui CompVis timestep sampler (DDIM / PLMS / UniPC)
        name = _func_name(func)
        if spacing == TRAILING and name in LOOP_TIMESTEP_SAMPLERS:
            sampler.get_timesteps = _trailing_timesteps(sampler.get_timesteps)
        first_order_loop = name in LOOP_TIMESTEP_SAMPLERS and name not in HIGHER_ORDER_FIRST_TIMESTEP_SAMPLERS
        if first_step != "sampler" and (name in HIGHER_ORDER_FIRST_TIMESTEP_SAMPLERS or
                                        (exact_terminal and first_order_loop)):
            sampler.func = with_ddim_first_timestep(func, first_step, exact_terminal)
    else:
        set_trailing_override(p, spacing, pass_scheduler(p))
        if takes_sigmas(func) and first_step != "sampler":
            sampler.func = with_ddim_first_step(func, first_step, exact_terminal)
        wrap = getattr(sampler, "model_wrap", None)
        if is_lcm_denoiser(wrap) and getattr(getattr(p, "sd_model", None), "parameterization", None) == "v":
            lcm_reads_v(wrap)
    setattr(sampler, WRAPPED_FLAG, True)


# ---- A1111 1.8: no process_before_every_sampling


def _sampler_classes() -> list:
    classes = []
    for module_name, class_name in (("modules.sd_samplers_kdiffusion", "KDiffusionSampler"),
                                    ("modules.sd_samplers_timesteps", "CompVisSampler")):
        try:
            module = __import__(module_name, fromlist=[class_name])
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            classes.append(cls)
    return classes


def install_pass_hook(prepare) -> bool:
    """Wrap ``sample`` / ``sample_img2img`` of the webui's sampler classes so that ``prepare(p, sampler)`` runs first
    (for hosts without ``process_before_every_sampling``). ``prepare`` must ignore requests it does not own."""
    installed = False
    for cls in _sampler_classes():
        for method_name in SAMPLE_METHODS:
            method = getattr(cls, method_name, None)
            if method is None or hasattr(method, ORIGINAL_ATTR):
                continue

            def hooked(self, p, *args, _original=method, **kwargs):
                prepare(p, self)
                return _original(self, p, *args, **kwargs)

            functools.update_wrapper(hooked, method)
            setattr(hooked, ORIGINAL_ATTR, method)
            setattr(cls, method_name, hooked)
            installed = True
    return installed


def uninstall_pass_hook() -> None:
    for cls in _sampler_classes():
        for method_name in SAMPLE_METHODS:
            method = getattr(cls, method_name, None)
            if method is not None and hasattr(method, ORIGINAL_ATTR):
                setattr(cls, method_name, getattr(method, ORIGINAL_ATTR))


def host_has_pass_hook() -> bool:
    """A1111 1.10+, reForge and Forge call ``process_before_every_sampling`` after creating each pass's sampler."""
    from modules import scripts

    return hasattr(scripts.Script, "process_before_every_sampling")
