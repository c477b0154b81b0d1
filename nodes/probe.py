"""The weight probe in ComfyUI: what a MODEL's UNet says about its prediction type when its file states nothing
(merges, conversions, TensorRT or other loaders drop the markers), through the core's
:func:`vpred_core.sampling.probe.probe_prediction_type`.

The probe calls the raw network (``model.model.diffusion_model``, below ComfyUI's model sampling) with the encoding of
an empty prompt (the CLIP of the checkpoint when there is one, else zeros of the network's widths; SDXL's ``y`` from
ComfyUI's own ``encode_adm``), a few forward passes on ComfyUI's load device and compute dtype. Results are cached
per checkpoint file state (the loader's source fingerprint), so re-running a workflow does not probe again.
"""

from __future__ import annotations

import logging

import torch

from ..vpred_core.sampling.probe import ProbeResultCache, with_extra_input_channels
from ..vpred_core.settings import Detected, detected_from_probe

logger = logging.getLogger(__name__)
PROBE_MODES = ("off", "when_unstated", "always")
DEFAULT_PROBE_MODE = "when_unstated"
PROBE_CACHE_SIZE = 32
EMPTY_PROMPT = ""
CONTEXT_TOKENS = 77
LATENT_CHANNELS = 4
PROBE_IMAGE_SIZE = 512  # pixels: the size embeddings of SDXL's y for the probe's 64x64 latent
_results = ProbeResultCache(PROBE_CACHE_SIZE)  # source fingerprint -> ProbeResult


def cached(key):
    return _results.get(key)


def remember(key, result) -> None:
    _results.put(key, result)


def wants_probe(mode: str, stated: Detected) -> bool:
    """``always``, or ``when_unstated`` and the file states no prediction type."""
    if mode not in PROBE_MODES:
        raise ValueError(f"probe must be one of {PROBE_MODES}, got {mode!r}")
    return mode == "always" or (mode == DEFAULT_PROBE_MODE and stated.prediction is None)


def combine(stated: Detected, probed: Detected, mode: str) -> Detected:
    """The file's statements and the probe's: the file wins, except with ``always`` where the probe's verdict
    (when it is eps or v) overrides a stated prediction type (a merge that kept another model's markers)."""
    if mode == "always" and probed.prediction is not None:
        return probed.over(stated)
    return stated.over(probed)


def _conditioning(model, clip):
    """(context, y) of an empty prompt for the raw network."""
    base = model.model
    pooled = None
    if clip is not None:
        context, pooled = clip.encode_from_tokens(clip.tokenize(EMPTY_PROMPT), return_pooled=True)
    else:
        width = (getattr(base, "model_config", None) and base.model_config.unet_config.get("context_dim")) or 768
        context = torch.zeros(1, CONTEXT_TOKENS, width)
    y = None
    adm = int(getattr(base, "adm_channels", 0) or 0)
    if adm:
        try:
            y = base.encode_adm(pooled_output=pooled, width=PROBE_IMAGE_SIZE, height=PROBE_IMAGE_SIZE, crop_w=0,
                                crop_h=0, target_width=PROBE_IMAGE_SIZE, target_height=PROBE_IMAGE_SIZE)
        except Exception as exc:  # noqa: BLE001 - a model whose encode_adm needs more: zeros of the ADM width
            logger.debug("V-Pred ZTSNR probe: zero y (%s)", exc)
        if y is None:
            y = torch.zeros(1, adm)
    return context, y


def unet_callable(model, clip=None):
    """(unet(x_in, t), dtype, device): the raw network of a ComfyUI MODEL, loaded where ComfyUI computes, with the
    empty-prompt conditioning closed over."""
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    base = model.model
    net = base.diffusion_model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    device = model.load_device
    context, y = _conditioning(model, clip)
    extra = int(getattr(net, "in_channels", LATENT_CHANNELS)) - LATENT_CHANNELS

    def unet(x_in, t):
        batch = x_in.shape[0]
        kwargs = {"context": context.to(device=device, dtype=dtype).expand(batch, *context.shape[1:])}
        if y is not None:
            kwargs["y"] = y.to(device=device, dtype=dtype).expand(batch, -1)
        return net(with_extra_input_channels(x_in, extra), t.to(device=device, dtype=dtype), **kwargs)

    return unet, dtype, device


def probe_model(model, clip=None, key=None):
    """The core's probe of ``model`` (cached under ``key``, e.g. the checkpoint's source fingerprint)."""
    from ..vpred_core.sampling.probe import probe_prediction_type

    result = cached(key)
    if result is None:
        unet, dtype, device = unet_callable(model, clip)
        result = probe_prediction_type(unet, LATENT_CHANNELS, dtype=dtype, device=device)
        remember(key, result)
    return result


def report_lines(result, used: bool) -> list[str]:
    if result is None:
        return []
    verdict = "used" if used else ("not applicable to a discrete eps/v schedule" if detected_from_probe(result)
                                   .prediction is None else "not used: the file states the prediction type")
    return [f"weight probe: {result.summary()} ({verdict})"]
