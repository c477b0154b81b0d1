"""The request lifecycle: one generation, from the accordion's values to the patches and back.

Flow (every webui, in the host's order):
1. ``before_process``: undo anything an earlier request left (every kept model object, callbacks, hooks), read the
   request (:func:`.ui.request_from_args`), decide whether the webui's own global ZTSNR must yield to the pack.
2. ``process`` (after the host switched to the request's checkpoint): the core decides
   (:func:`vpred_core.settings.resolve_model_sampling`: forced > what the checkpoint states > the webui's own) and
   :func:`acts` says whether the pack does anything at all. When it does not, nothing is installed and nothing is
   written: the image is the webui's own, bit for bit. When it does, the applied values are written to the infotext
   (a paste forces exactly them), CFG callbacks are registered, the A1111 model object gets the plan.
3. every sampling pass (``process_before_every_sampling``; A1111 1.8: a sampler hook): the pass's model gets its own
   plan (a hires or refiner checkpoint is resolved from its own file), reForge / Forge patch a clone of the unet,
   and the pass's sampler gets the spacing and the terminal-safe first step (:mod:`.samplers`).
4. ``postprocess``: everything is undone (and again by the next request if this one raised).
Request state lives on ``p``; nothing is kept in module globals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from ..vpred_core.sampling.probe import with_extra_input_channels
from ..vpred_core.sampling.schedules import ScheduleSpec
from ..vpred_core.settings import (
    HOST,
    Detected,
    PackSettings,
    SamplingPlan,
    applied_settings,
    host_betas_from_alphas_cumprod,
    resolve_model_sampling,
    resolve_spacing,
)
from . import a1111, checkpoints, forge, samplers, ui
from .guidance import RequestCallbacks, remove_stale_callbacks, rewrite_negatives

logger = logging.getLogger(__name__)
STATE_ATTR = "vpred_request_state"
A1111 = "a1111"
HOSTS = (A1111, forge.REFORGE, forge.FORGE)
EXACT_TERMINAL = "exact"
TABLE_TERMINAL = "host_clamp"  # what the webuis' sigma tables hold for an exact terminal (they cannot hold inf)
BETA_ATTRS = ("linear_start", "linear_end")


def classify_host(has_forge_objects: bool, has_model_sampling: bool, has_predictor: bool) -> str:
    """reForge patches ``model_sampling``, Forge a ``predictor``; no patcher objects means A1111."""
    if not has_forge_objects:
        return A1111
    if has_predictor and not has_model_sampling:
        return forge.FORGE
    return forge.REFORGE


def detect_host(sd_model) -> str:
    """Host id for a loaded webui model object (by feature, never by version)."""
    unet = forge.unet_model(sd_model)
    return classify_host(getattr(sd_model, "forge_objects", None) is not None, hasattr(unet, "model_sampling"),
                         hasattr(unet, "predictor"))


def model_flag_ztsnr(sd_model) -> bool:
    """A1111 dev / reForge / Forge honour a ``ztsnr`` key of the checkpoint as a model flag."""
    config = getattr(sd_model, "model_config", None)
    return bool(getattr(sd_model, "ztsnr", False) or getattr(config, "ztsnr", False))


def host_abar(sd_model, host: str):
    return a1111.host_alphas_cumprod(sd_model) if host == A1111 else forge.host_abar(sd_model)


def _beta_candidates(sd_model) -> tuple[ScheduleSpec, ...]:
    """Schedules the host's tensor may come from: betas its objects carry (ldm models, ModelSamplingDiscrete,
    Forge's predictor), then the SD default (A1111 builds SDXL from it)."""
    unet = forge.unet_model(sd_model)
    holders = (sd_model, getattr(unet, "model_sampling", None), getattr(unet, "predictor", None))
    found = []
    for holder in holders:
        values = [getattr(holder, name, None) for name in BETA_ATTRS]
        if all(isinstance(v, float) for v in values):
            try:
                found.append(ScheduleSpec(linear_start=values[0], linear_end=values[1]))
            except ValueError:
                continue
    return (*found, ScheduleSpec())


def host_detected(sd_model, host: str, host_ztsnr: bool) -> Detected:
    """What the webui itself does with this model: its prediction type, its ZTSNR decision and, when its schedule
    tensor is a known beta schedule, those betas."""
    prediction = a1111.host_prediction(sd_model) if host == A1111 else forge.host_prediction(sd_model)
    spec = host_betas_from_alphas_cumprod(host_abar(sd_model, host), _beta_candidates(sd_model))
    betas = {} if spec is None else {"beta_schedule": spec.beta_schedule, "linear_start": spec.linear_start,
                                      "linear_end": spec.linear_end, "timesteps": spec.timesteps}
    return Detected(prediction=prediction, ztsnr=host_ztsnr, source="webui", **betas)


@dataclass
class RequestState:
    """What one generation asked for and what was applied, so that every pass and postprocess can act on it."""

    request: ui.UiRequest
    host: str
    host_ztsnr: bool  # the webui's own ZTSNR decision (global setting or model flag)
    ztsnr_option_yielded: bool = False  # A1111: "Zero Terminal SNR" set to Default for this request
    applied: PackSettings | None = None  # what the infotext records
    callbacks: RequestCallbacks | None = None
    pass_hook: bool = False
    patched: list = field(default_factory=list)  # model objects whose schedule this request changed

    @property
    def settings(self) -> PackSettings:
        return self.request.settings

    @property
    def token(self) -> int:
        return id(self)

    def effective_host(self, sd_model) -> Detected:
        """The webui's own behaviour for this request (no ZTSNR of its own once it yielded to the pack)."""
        host_ztsnr = self.host_ztsnr and not self.ztsnr_option_yielded
        return host_detected(sd_model, self.host, host_ztsnr)


def get_state(p) -> RequestState | None:
    return getattr(p, STATE_ATTR, None)


def set_state(p, state: RequestState | None) -> None:
    setattr(p, STATE_ATTR, state)


def plan_for(state: RequestState, sd_model) -> SamplingPlan:
    """The core's decision for ``sd_model`` (its own checkpoint's statements, the request's settings)."""
    ms = state.settings.model_sampling
    if ms.terminal == EXACT_TERMINAL:
        ms = replace(ms, terminal=TABLE_TERMINAL)  # the first step is taken as at SNR 0 (samplers.prepare_pass)
    host = host_detected(sd_model, state.host, state.host_ztsnr)
    stated = checkpoints.stated(checkpoints.checkpoint_filename(sd_model))
    return resolve_model_sampling(ms, stated, host, state.request.betas_auto)


def installs(state: RequestState, plan: SamplingPlan, sd_model) -> bool:
    """True when the plan differs from what the webui does on its own for this request."""
    return plan.changes_host(state.effective_host(sd_model))


def acts(settings: PackSettings, plan: SamplingPlan, installed: bool) -> bool:
    """Whether the pack does anything for this request: model sampling the webui would not use, v / ZTSNR that the
    checkpoint states (trailing start), CFG rescale, a non-default empty-negative mode, or a forced spacing."""
    spacing = resolve_spacing(settings.sampling.spacing, plan)
    return (installed or spacing != HOST or settings.cfg_rescale.enabled
            or settings.uncond.mode != "host_default")


def loaded_models() -> list:
    """Every model object the webui keeps (the current one and the ``sd_checkpoints_limit`` cache)."""
    from modules import sd_models

    model_data = getattr(sd_models, "model_data", None)
    models = list(getattr(model_data, "loaded_sd_models", None) or [])
    current = getattr(model_data, "sd_model", None)
    if current is not None and all(current is not m for m in models):
        models.append(current)
    return models


def repair_leftovers(p) -> None:
    """Undo what a generation that raised (no postprocess) left behind: CFG callbacks, the A1111 1.8 sampler hook, and
    the schedule on every model object the webui keeps. Runs at the start of every request, enabled or not."""
    remove_stale_callbacks()
    samplers.uninstall_pass_hook()
    models = loaded_models()
    if all(p.sd_model is not m for m in models):
        models.append(p.sd_model)
    a1111.repair(models)
    forge.repair(models)


def cleanup(p) -> None:
    """Undo everything this request installed (also safe to call twice)."""
    state = get_state(p)
    if state is None:
        return
    if state.callbacks is not None:
        state.callbacks.remove()
    if state.pass_hook:
        samplers.uninstall_pass_hook()
    samplers.clear_trailing_override(p)
    for model in state.patched:
        a1111.restore_model(model)
        forge.restore(model)
    set_state(p, None)


def ensure_model_plan(p, state: RequestState, sd_model) -> bool:
    """A1111: install this request's plan on ``sd_model`` unless already there; True when something changed."""
    if state.host != A1111 or a1111.is_applied_for(sd_model, state.token):
        return False
    plan = plan_for(state, sd_model)
    if not installs(state, plan, sd_model):
        return False
    a1111.apply_plan(sd_model, plan, state.token)
    if all(sd_model is not m for m in state.patched):
        state.patched.append(sd_model)
    return True


def prepare_pass(p, sampler) -> None:
    """One sampling pass of a request this pack acts on (called by the host's hook or A1111 1.8's sampler hook)."""
    state = get_state(p)
    if state is None or state.applied is None:
        return
    if state.host == A1111:
        if ensure_model_plan(p, state, p.sd_model):
            a1111.refresh_sampler(sampler, p.sd_model)
    else:
        plan = plan_for(state, p.sd_model)
        installed = installs(state, plan, p.sd_model)
        if installed or state.settings.cfg_rescale.enabled:
            forge.patch_unet(p, state.host, plan if installed else None, plan.sigmas(host_abar(p.sd_model, state.host)),
                             state.settings)
            if installed and all(p.sd_model is not m for m in state.patched):
                state.patched.append(p.sd_model)
    sampling = state.applied.sampling
    exact = state.settings.model_sampling.terminal == EXACT_TERMINAL
    samplers.prepare_pass(p, sampler, sampling.spacing, sampling.first_step, exact)


def _on_denoiser_step(p, denoiser) -> None:
    """A1111: the refiner switched models inside sampling (no callback tells): give the new model its plan before its
    denoiser wrapper is rebuilt from it."""
    state = get_state(p)
    if state is not None:
        ensure_model_plan(p, state, p.sd_model)


def describe_detection(plan: SamplingPlan, installed: bool) -> str:
    where = plan.describe_sources()
    return where if installed else f"{where} (the webui's own)"


class VPredHooks:
    """The Script's hooks; ``scripts/vpred_ztsnr.py`` combines them with the webui's ``scripts.Script``."""

    def title(self):
        return ui.TITLE

    def show(self, is_img2img):
        from modules import scripts

        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        components = ui.build_components(self.elem_id, ui.defaults_from_options(ui.get_option),
                                         checkpoints.write_all_status, checkpoints.detection_status)
        self.infotext_fields = ui.infotext_fields(components)
        return components

    def before_process(self, p, *args):
        from modules import shared

        cleanup(p)
        repair_leftovers(p)
        try:
            request = ui.request_from_args(args, getattr(p, ui.XYZ_ATTR, None), ui.defaults_from_options(ui.get_option))
        except ValueError as exc:
            logger.error("V-Pred: %s; the pack is off for this image", exc)
            p.extra_generation_params[ui.ERROR_KEY] = str(exc)
            return
        if not request.enabled:
            return
        host = detect_host(p.sd_model)
        state = RequestState(request, host, a1111.host_forces_ztsnr(shared.opts) or model_flag_ztsnr(p.sd_model))
        if host == A1111 and a1111.host_forces_ztsnr(shared.opts) and self._may_change_model_sampling(p, request):
            p.override_settings[a1111.NOISE_SCHEDULE_OPTION] = a1111.HOST_DEFAULT_SCHEDULE_LABEL  # host restores it
            state.ztsnr_option_yielded = True
        set_state(p, state)

    @staticmethod
    def _may_change_model_sampling(p, request: ui.UiRequest) -> bool:
        """Before the checkpoint switch: does the request force model sampling, or does the checkpoint it will use
        state any? (Then the pack, not the webui's global setting, applies ZTSNR.)"""
        ms = request.settings.model_sampling
        if ms.prediction != "auto" or ms.ztsnr != "auto" or not request.betas_auto:
            return True
        return checkpoints.stated(_request_checkpoint(p)).states_anything

    def process(self, p, *args):
        state = get_state(p)
        if state is None:
            return
        settings = state.settings
        ensure_probed(p.sd_model)
        plan = plan_for(state, p.sd_model)
        installed = installs(state, plan, p.sd_model)
        if not acts(settings, plan, installed):
            set_state(p, None)  # invisible: the webui alone decides this image
            return
        spacing = resolve_spacing(settings.sampling.spacing, plan)
        state.applied = applied_settings(settings, plan, state.effective_host(p.sd_model), spacing)
        if settings.uncond.mode == "comma":
            p.all_negative_prompts = rewrite_negatives(p.all_negative_prompts, "comma")
            if getattr(p, "all_hr_negative_prompts", None):
                p.all_hr_negative_prompts = rewrite_negatives(p.all_hr_negative_prompts, "comma")
        callbacks = RequestCallbacks(p, settings, rescale_here=state.host == A1111,
                                     on_step=_on_denoiser_step if state.host == A1111 else None)
        if callbacks.needed:
            callbacks.register()
            state.callbacks = callbacks
        if state.host == A1111:
            ensure_model_plan(p, state, p.sd_model)
        if not samplers.host_has_pass_hook():
            state.pass_hook = samplers.install_pass_hook(prepare_pass)
        p.extra_generation_params.update(ui.infotext_for(state.applied, describe_detection(plan, installed)))

    def before_hr(self, p, *args):
        state = get_state(p)
        if state is not None and state.applied is not None and ensure_model_plan(p, state, p.sd_model):
            a1111.refresh_sampler(getattr(p, "sampler", None), p.sd_model)

    def process_before_every_sampling(self, p, *args, **kwargs):
        prepare_pass(p, getattr(p, "sampler", None))

    def postprocess(self, p, processed, *args):
        cleanup(p)


def _request_checkpoint(p) -> str | None:
    """The checkpoint file the request will use: its ``sd_model_checkpoint`` override, else the loaded one."""
    name = (getattr(p, "override_settings", None) or {}).get("sd_model_checkpoint")
    if name:
        from modules import sd_models

        info = sd_models.get_closet_checkpoint_match(name)
        if info is not None:
            return info.filename
    return checkpoints.checkpoint_filename(p.sd_model)


LATENT_CHANNELS = 4


def diffusion_network(sd_model):
    """The raw UNet: A1111 ``sd_model.model.diffusion_model``; reForge / Forge the loaded unet patcher's model."""
    unet = forge.unet_model(sd_model)
    holder = unet if unet is not None else getattr(sd_model, "model", None)
    return getattr(holder, "diffusion_model", None)


def _empty_prompt_conditioning(sd_model, net):
    """(context, y) for the probe: the webui's own encoding of "" (as for an empty negative), else zeros of the
    network's widths (cross-attention width from the first attn2, ADM width from label_emb)."""
    try:
        with torch.no_grad():
            cond = sd_model.get_learned_conditioning([""])
        if isinstance(cond, dict):
            return cond["crossattn"], cond.get("vector")
        return cond, None
    except Exception as exc:  # noqa: BLE001 - any failure of the host's encoder: probe with zeroed conditioning
        logger.debug("V-Pred: probe conditioning from zeros (%s)", exc)
    width = next((m.in_features for name, m in net.named_modules() if name.endswith("attn2.to_k")), None)
    label = getattr(net, "label_emb", None)
    adm = next((m.in_features for m in label.modules() if isinstance(m, torch.nn.Linear)), None) if label else None
    context = torch.zeros(1, 77, width) if width else None
    return context, (torch.zeros(1, adm) if adm else None)


def probe_callable(sd_model):
    """(unet(x_in, t), channels, dtype, device) for :func:`vpred_core.sampling.probe.probe_prediction_type`: the raw
    network with the empty-prompt conditioning closed over, extra input channels of inpainting / instruct-pix2pix
    models appended."""
    net = diffusion_network(sd_model)
    parameter = next(net.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(net).__name__} has no parameters (not a UNet the probe can run)")
    dtype, device = parameter.dtype, parameter.device
    context, y = _empty_prompt_conditioning(sd_model, net)
    extra = int(getattr(net, "in_channels", LATENT_CHANNELS)) - LATENT_CHANNELS

    def unet(x_in, t):
        batch = x_in.shape[0]
        kwargs = {}
        if context is not None:
            kwargs["context"] = context.to(device=device, dtype=dtype).expand(batch, *context.shape[1:])
        if y is not None:
            kwargs["y"] = y.to(device=device, dtype=dtype).expand(batch, -1)
        return net(with_extra_input_channels(x_in, extra), t.to(device), **kwargs)

    return unet, LATENT_CHANNELS, dtype, device


def ensure_probed(sd_model) -> None:
    """Probe the loaded checkpoint's weights when its file states no prediction type (once per file state); a probe
    that fails is logged and never breaks loading or sampling. Also the ``model_loaded`` callback."""
    path = checkpoints.checkpoint_filename(sd_model)
    if not checkpoints.needs_probe(path) or diffusion_network(sd_model) is None:
        return
    try:
        checkpoints.probe_loaded_model(path, *probe_callable(sd_model))
    except Exception as exc:  # noqa: BLE001 - a foreign network the probe cannot call: report, sample as the host
        problem = f"{type(exc).__name__}: {exc}"
        logger.warning("V-Pred: could not probe %s: %s", path, problem)
        checkpoints.remember_probe(path, checkpoints.ProbeFailure(problem))


def register_callbacks() -> None:
    """The extension's webui callbacks; called by ``scripts/vpred_ztsnr.py`` every time the webui loads it (the
    webui clears all callbacks before (re)loading scripts)."""
    from modules import script_callbacks

    script_callbacks.on_ui_settings(ui.on_ui_settings)
    script_callbacks.on_before_ui(ui.add_xyz_axes)
    script_callbacks.on_model_loaded(a1111.on_model_loaded)
    script_callbacks.on_model_loaded(ensure_probed)
    script_callbacks.on_model_loaded(checkpoints.on_model_loaded)
    script_callbacks.on_app_started(checkpoints.on_app_started)
