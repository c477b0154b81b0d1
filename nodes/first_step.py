"""Terminal-safe first step for whatever sampler the user picks, through ComfyUI's own sampler wrapper point.

A second-order, multistep or ancestral step from SNR ~0 (sigma_0 = 4518.76, or inf for the exact terminal) to
sigma_1 breaks (measured: heun and dpm_2_ancestral with a trailing or ``simple`` schedule diverge). The core's
:func:`vpred_core.sampling.denoiser.with_ddim_first_step` takes that step as a first-order DDIM step and runs the
chosen sampler on sigmas[1:] with the host's step numbering.

ComfyUI calls every sampler as ``Sampler.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image,
denoise_mask, disable_pbar)`` through the model patcher's ``WrappersMP.SAMPLER_SAMPLE`` wrappers (``CFGGuider.
inner_sample``), for KSampler / KSamplerAdvanced (a sampler made by name) and SamplerCustom / SamplerCustomAdvanced
(a SAMPLER object) alike. :class:`FirstStepWrapper` is installed there, on the MODEL clone the pack's Model Sampling
/ Setup / loader return. It hands the rest of the chain a KSAMPLER whose ``sampler_function`` is wrapped:
- everything a KSAMPLER does around the function is unchanged: initial noise scaling, ``KSamplerX0Inpaint`` (which
  blends inpainting masks inside each model call, so the DDIM step sees them too), the step callback (latent
  previews, progress; the core keeps the host's numbering and total), ``inverse_noise_scaling``;
- a schedule that does not start at SNR ~0 (img2img, denoise < 1, KSamplerAdvanced start_at_step > 0) is passed
  through untouched under ``auto``; add_noise off only changes the input; return_with_leftover_noise only ends the
  schedule early (a 2-sigma schedule is the DDIM step alone);
- a sampler that is not a KSAMPLER (a custom Sampler subclass) has no sampler function to wrap: it is passed through
  with a log line (an error at sigma = inf, where it could only produce NaN).
"""

from __future__ import annotations

import copy
import logging
import math
import types

from ..vpred_core.sampling.denoiser import FIRST_STEP_IDS, uses_ddim_first_step, with_ddim_first_step

logger = logging.getLogger(__name__)

AUTO = "auto"
DDIM = "ddim"
SAMPLER = "sampler"
WRAPPER_KEY = "vpred_ztsnr_first_step"


def validate_first_step(first_step: str) -> str:
    if first_step not in FIRST_STEP_IDS:
        raise ValueError(f"first_step must be one of {FIRST_STEP_IDS}, got {first_step!r}")
    return first_step


def first_step_to_install(ztsnr: bool, exact_terminal: bool, first_step: str) -> str | None:
    """The wrapper mode to install on a patched model, or None for no wrapper.

    ``auto``: when ZTSNR is in effect (it then acts only where the schedule starts at SNR ~0); ``ddim``: always (the
    user asks for a DDIM first step on every schedule); ``sampler``: never, except with the exact terminal, where
    no sampler can step from sigma = inf (the wrapper then still leaves finite starts to the sampler)."""
    validate_first_step(first_step)
    if exact_terminal or first_step == DDIM:
        return first_step
    if first_step == SAMPLER or not ztsnr:
        return None
    return AUTO


def install_first_step(model, first_step: str | None) -> None:
    """Put (or, for None, take off) the pack's SAMPLER_SAMPLE wrapper on a ModelPatcher clone; replaces an earlier
    one, so patching twice never stacks two first steps."""
    from comfy.patcher_extension import WrappersMP

    model.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
    if first_step is not None:
        model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, FirstStepWrapper(first_step))


def installed_first_step(model) -> str | None:
    """The mode of the pack's wrapper on a ModelPatcher, None when there is none."""
    from comfy.patcher_extension import WrappersMP

    wrappers = model.get_wrappers(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
    return wrappers[-1].first_step if wrappers else None


class FirstStepWrapper:
    """``WrappersMP.SAMPLER_SAMPLE`` wrapper: ``(executor, model_wrap, sigmas, extra_args, callback, noise, ...)``."""

    __slots__ = ("first_step",)

    def __init__(self, first_step: str = AUTO):
        self.first_step = validate_first_step(first_step)

    def __repr__(self) -> str:
        return f"FirstStepWrapper({self.first_step!r})"

    def __call__(self, executor, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
        call = (model_wrap, sigmas, extra_args, callback, noise, *args)
        sigma_0 = float(sigmas[0]) if len(sigmas) else 0.0
        if len(sigmas) < 2 or not uses_ddim_first_step(sigma_0, self.first_step):
            return executor(*call, **kwargs)
        import comfy.patcher_extension
        import comfy.samplers

        sampler = executor.class_obj
        original = executor.original
        if not isinstance(sampler, comfy.samplers.KSAMPLER) or getattr(original, "__self__", None) is not sampler:
            if math.isinf(sigma_0):
                raise ValueError(f"the exact terminal (sigma = inf) needs a KSAMPLER-based sampler for its first "
                                 f"step; {type(sampler).__name__} cannot take it")
            logger.info("V-Pred ZTSNR first step: %s is not a KSAMPLER, so its first step from sigma %.2f is its "
                        "own (no DDIM step)", type(sampler).__name__, sigma_0)
            return executor(*call, **kwargs)
        # A shallow copy carries the wrapped function; the SAMPLER object itself is never changed. It can be the
        # cached output of a KSamplerSelect node shared by several sampler nodes, so even a swap restored in a
        # `finally` would be visible to them while this one runs. The copy continues the executor chain where this
        # wrapper sits (idx + 1), so wrappers after this one see it as their class_obj.
        stepped = copy.copy(sampler)
        stepped.sampler_function = with_ddim_first_step(sampler.sampler_function, self.first_step)
        logger.debug("V-Pred ZTSNR first step: DDIM from sigma %g to %g, then the sampler", sigma_0, float(sigmas[1]))
        chain = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            types.MethodType(original.__func__, stepped), stepped, executor.wrappers, idx=executor.idx + 1)
        return chain.execute(*call, **kwargs)
