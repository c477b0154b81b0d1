"""The always-visible webui Script: thin glue between the host's processing hooks and the host-free logic."""

from __future__ import annotations

import logging

from modules import scripts, shared

from vpred_core.settings import Detected, resolve_model_sampling

from . import a1111_callbacks, a1111_model, a1111_timesteps, model_files, pass_alphas, ui
from .host import A1111, detect_host, host_global_ztsnr
from .logic_sampling import host_schedule_setting_to_force
from .logic_ui import XYZ_ATTR, args_to_request, defaults_from_options, infotext_for
from .logic_uncond import rewrite_negatives
from .options import get_option
from .state import RequestState, get_state, set_state
from .trailing_override import TrailingSigmas, hires_scheduler, set_trailing_override

logger = logging.getLogger(__name__)


def compute_plan(p, state: RequestState):
    filename = a1111_model.checkpoint_filename(p.sd_model)
    settings = state.settings.model_sampling
    parameterization = getattr(p.sd_model, "parameterization", None)
    host = Detected(prediction=parameterization, ztsnr=state.host_ztsnr, source="webui")
    plan = resolve_model_sampling(settings, model_files.detect(filename), host, state.request.beta_end_auto)
    host_applies = state.host_ztsnr and state.host != A1111
    return plan if plan.changes_host(Detected(prediction=parameterization, ztsnr=host_applies)) else None


def ensure_a1111_model(p, state: RequestState) -> bool:
    """Install the plan on the current A1111 model unless already there; True when something changed."""
    if a1111_model.is_applied_to(p.sd_model):
        return False
    plan = compute_plan(p, state)
    if plan is None:
        return False
    a1111_model.apply_plan(p.sd_model, plan)
    state.plan = plan
    return True


def cleanup(p) -> None:
    """Undo everything this request installed (also safe to call twice)."""
    state = get_state(p)
    if state is None:
        return
    if state.callbacks is not None:
        state.callbacks.remove()
    if state.timesteps_patched:
        a1111_timesteps.uninstall()
    if isinstance(getattr(p, "sampler_noise_scheduler_override", None), TrailingSigmas):
        p.sampler_noise_scheduler_override = None
    if state.host == A1111:
        a1111_model.restore_model(p.sd_model)
    else:
        pass_alphas.restore(p.sd_model)
    set_state(p, None)


def repair_leftovers(p) -> None:
    """Undo what a generation that raised (no postprocess) left behind: CFG callbacks, the timesteps wrapper and,
    on A1111, the model's schedule. Runs at the start of every request, enabled or not (one request at a time)."""
    a1111_callbacks.remove_stale()
    a1111_timesteps.uninstall()
    if detect_host(p.sd_model) == A1111:
        a1111_model.restore_model(p.sd_model)
    else:
        pass_alphas.restore(p.sd_model)


class VPredScript(scripts.Script):
    def title(self):
        return ui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        components = ui.build_components(self, defaults_from_options(get_option))
        self.infotext_fields = ui.infotext_fields(components)
        return components

    def before_process(self, p, *args):
        cleanup(p)
        repair_leftovers(p)
        request = args_to_request(args, getattr(p, XYZ_ATTR, None))
        if not request.enabled:
            return
        host = detect_host(p.sd_model)
        state = RequestState(request, host, host_global_ztsnr(shared.opts, p.sd_model))
        set_state(p, state)
        force = host_schedule_setting_to_force(getattr(shared.opts, "sd_noise_schedule", ""))
        if host == A1111 and force is not None:
            p.override_settings["sd_noise_schedule"] = force  # restored by the host after the request

    def process(self, p, *args):
        a1111_callbacks.remove_stale()
        state = get_state(p)
        if state is None:
            return
        settings = state.settings
        if settings.uncond.mode == "comma":
            p.all_negative_prompts = rewrite_negatives(p.all_negative_prompts, "comma")
            if getattr(p, "all_hr_negative_prompts", None):
                p.all_hr_negative_prompts = rewrite_negatives(p.all_hr_negative_prompts, "comma")
        callbacks = a1111_callbacks.RequestCallbacks(p, settings, rescale_here=state.host == A1111)
        if callbacks.zero_uncond or callbacks.rescale_here:
            callbacks.register()
            state.callbacks = callbacks
        self._setup_trailing(p, state)
        if state.host == A1111:
            ensure_a1111_model(p, state)
        else:
            state.plan = compute_plan(p, state)
        resolved = state.plan.summary() if state.plan is not None else "host"
        p.extra_generation_params.update(infotext_for(settings, resolved))

    @staticmethod
    def _setup_trailing(p, state: RequestState) -> None:
        if state.settings.sampling.spacing != "host":
            state.timesteps_patched = a1111_timesteps.install()
        set_trailing_override(p, state, getattr(p, "scheduler", None))

    def process_batch(self, p, *args, **kwargs):
        state = get_state(p)
        if state is None:
            return
        set_trailing_override(p, state, getattr(p, "scheduler", None))  # first pass of this batch
        if state.host == A1111:
            ensure_a1111_model(p, state)  # the model may have been reloaded (refiner / hires checkpoint)

    def before_hr(self, p, *args):
        state = get_state(p)
        if state is None:
            return
        set_trailing_override(p, state, hires_scheduler(p))
        if state.host == A1111 and ensure_a1111_model(p, state):
            a1111_model.refresh_sampler(p.sampler, p.sd_model)

    def process_before_every_sampling(self, p, *args, **kwargs):
        state = get_state(p)
        if state is None or state.host == A1111:
            return
        from .patcher import patch_unet

        plan = compute_plan(p, state)
        if plan is not None or state.settings.cfg_rescale.enabled:
            patch_unet(p, state.host, plan, state.settings)

    def postprocess(self, p, processed, *args):
        cleanup(p)
