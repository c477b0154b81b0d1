"""A1111 (1.8, 1.10.1, dev) requests through the host's own ``processing.process_images`` on tiny model objects.

- Model objects: a ``LatentDiffusion`` instantiated from the host's own ``configs/v1-inference.yaml`` (or the crafted
  YAML beside the checkpoint), UNet / VAE shrunk for instantiation, no text encoder, the UNet replaced by the exact
  oracle (:class:`webui_oracle.OracleUNet`); the attributes ``sd_models.load_model`` adds (``--no-half``) are set,
  the checkpoint file is registered with the host (``CheckpointInfo.register``) and selected in
  ``opts.sd_model_checkpoint``, so the host's ``reload_model_weights`` / ``reuse_model_from_already_loaded`` find it.
  Text conditioning: ``get_learned_conditioning`` returns a small text-dependent tensor (the oracle ignores it).
- A request: a ``ScriptRunner`` holding the webui-loaded VPred Script and a recorder Script (after it), the host's
  ``process_images(p)``. The recorder keeps what the request sampled with: every denoiser call's sigma / timestep and
  the sampler's schedule (``on_cfg_denoiser``), ``shared.sd_model.alphas_cumprod`` and ``parameterization`` at the
  first call of each pass, and the latents handed to ``post_sample``; it can replace ``p.rng`` by antithetic noise
  and skip the VAE decode (sweeps measure latents).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os

import torch
from webui_host_env import TINY_UNET, WEBUI_PATH, host_import, pack, script_args
from webui_oracle import AntitheticRNG, OracleUNet, antithetic_noise

VAE_8X = {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": []}  # 8x down, as opt_f
COND_SHAPE = (1, 8)
SIZE = 512  # 64x64 latents: the oracle's shape
HOST_CONFIG = "configs/v1-inference.yaml"
PLAIN_BETAS = "plain"  # OracleUNet trained as eps on the SD betas (a plain checkpoint)


def text_conditioning(texts) -> torch.Tensor:
    """A stand-in text encoder: a deterministic small tensor per text (cond differs from uncond)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(str(text).encode()).digest()[:4], "little")
        rows.append(torch.randn(COND_SHAPE, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


def build_model(directory: str, name: str, markers=(), prediction: str = "v", ztsnr: bool = True,
                config_path: str | None = None, register: bool = True):
    """A tiny LatentDiffusion with the oracle as its UNet for a checkpoint ``name`` (written with ``markers``); its
    config is ``config_path`` (default: the host's own v1-inference.yaml; the host's loader would use a YAML beside
    the checkpoint). Not made current: see :func:`use_model`."""
    ckpt_factory = host_import("ckpt_factory")
    omegaconf = host_import("omegaconf")
    ldm_util = host_import("ldm.util")
    checkpoint = os.path.join(directory, f"{name}.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=tuple(markers))
    config = omegaconf.OmegaConf.load(config_path or os.path.join(WEBUI_PATH, HOST_CONFIG))
    params = config.model.params
    params.unet_config.params.update(TINY_UNET)
    params.first_stage_config.params.ddconfig.update(VAE_8X)
    params.cond_stage_config = "__is_unconditional__"
    model = ldm_util.instantiate_from_config(config.model)
    model.float()  # load_model_weights with --no-half (before the oracle: its buffers stay float64)
    model.model.diffusion_model = OracleUNet(prediction=prediction, ztsnr=ztsnr)
    model.model.conditioning_key = "crossattn"
    model.cond_stage_key = "txt"
    model.get_learned_conditioning = text_conditioning
    model.cond_stage_model_empty_prompt = text_conditioning([""])
    model.alphas_cumprod_original = model.alphas_cumprod
    model.is_sdxl, model.is_sd2, model.is_sd1, model.is_ssd = False, False, True, False
    model.is_sd3 = model.is_sdxl_inpaint = False
    model.lowvram = False
    model.sd_model_hash = None
    model.used_config = config_path or os.path.join(WEBUI_PATH, HOST_CONFIG)
    model.sd_checkpoint_info = checkpoint_info(checkpoint) if register else _bare_info(checkpoint)
    model.sd_model_checkpoint = checkpoint
    return model


def _bare_info(filename):
    import types

    return types.SimpleNamespace(filename=filename, title=os.path.basename(filename),
                                 name_for_extra=os.path.splitext(os.path.basename(filename))[0],
                                 short_title=os.path.basename(filename), sha256=None)


def checkpoint_info(filename: str):
    """The host's CheckpointInfo for ``filename``, registered in its checkpoint list (see :func:`unregister`)."""
    sd_models = host_import("modules.sd_models")
    info = sd_models.CheckpointInfo(filename)
    info.register()
    return info


def unregister(*models) -> None:
    sd_models = host_import("modules.sd_models")
    infos = [m.sd_checkpoint_info for m in models]
    for table in (sd_models.checkpoints_list, sd_models.checkpoint_aliases):
        for key in [k for k, v in table.items() if any(v is info for info in infos)]:
            del table[key]


def use_model(model, *, keep=()) -> None:
    """Make ``model`` the loaded one (``model_data.set_sd_model``, ``opts.sd_model_checkpoint``) with ``keep`` the
    other objects the host caches (``sd_checkpoints_limit``)."""
    shared = host_import("modules.shared")
    sd_models = host_import("modules.sd_models")
    devices = host_import("modules.devices")
    sd_models.model_data.loaded_sd_models[:] = list(keep)
    sd_models.model_data.set_sd_model(model)
    shared.opts.data["sd_model_checkpoint"] = model.sd_checkpoint_info.title
    devices.dtype_unet = torch.float32  # load_model with --no-half


@contextlib.contextmanager
def host_options(**values):
    """``shared.opts.data`` values for a block (restored after)."""
    shared = host_import("modules.shared")
    saved = {k: shared.opts.data[k] for k in values if k in shared.opts.data}
    shared.opts.data.update(values)
    try:
        yield shared.opts
    finally:
        for key in values:
            if key in saved:
                shared.opts.data[key] = saved[key]
            else:
                shared.opts.data.pop(key, None)


HARNESS_OPTIONS = {"live_previews_enable": False}
_MISSING = object()


@dataclasses.dataclass
class Pass:
    """What one sampling pass ran with: the denoiser's sigmas (timesteps for DDIM / PLMS / UniPC) per call, the
    sampler's schedule table, the model's alphas_cumprod and parameterization."""

    calls: list
    table: torch.Tensor | None  # k-diffusion: the wrapper's sigmas
    alphas_cumprod: torch.Tensor  # shared.sd_model's
    denoiser_alphas: torch.Tensor | None  # DDIM / PLMS / UniPC: CFGDenoiserTimesteps.alphas (taken at creation)
    parameterization: str
    model: object

    @property
    def first(self) -> float:
        return float(self.calls[0].flatten()[0])

    def call_values(self) -> list[float]:
        return [float(c.flatten()[0]) for c in self.calls]


@dataclasses.dataclass
class Result:
    processed: object
    p: object
    passes: list
    samples: list
    loaded_at_start: object = None  # the model object loaded when the request's scripts ran before_process

    @property
    def latents(self) -> torch.Tensor:
        return self.samples[-1]

    @property
    def infotext(self) -> str:
        return self.processed.infotexts[0]

    def params(self) -> dict:
        return host_import("modules.infotext_utils").parse_generation_parameters(self.infotext)

    def vpred_keys(self) -> dict:
        return {k: v for k, v in self.params().items() if str(k).startswith("VPred")}


def recorder_class():
    scripts = host_import("modules.scripts")
    script_callbacks = host_import("modules.script_callbacks")
    shared = host_import("modules.shared")

    class Recorder(scripts.Script):
        """Records what the request sampled with (see module docstring); registered after the VPred Script."""

        antithetic: int = 0
        skip_decode: bool = False

        def title(self):
            return "vpred test recorder"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def before_process(self, p, *args):
            self.loaded_at_start = host_import("modules.sd_models").model_data.sd_model

        def process(self, p, *args):
            self.passes, self.samples, self._p = [], [], p
            script_callbacks.on_cfg_denoiser(self.on_denoiser)

        def process_batch(self, p, *args, **kwargs):
            if self.antithetic:
                p.rng = AntitheticRNG(self.antithetic)

        def on_denoiser(self, params):
            denoiser = params.denoiser
            if getattr(denoiser, "p", None) is not self._p:
                return
            if not self.passes or self.passes[-1].calls is None or self._new_pass(denoiser):
                wrap = denoiser.inner_model
                table, alphas = getattr(wrap, "sigmas", None), getattr(denoiser, "alphas", None)
                model = shared.sd_model
                self.passes.append(Pass([], None if table is None else table.detach().clone(),
                                        model.alphas_cumprod.detach().clone(),
                                        None if alphas is None else alphas.detach().clone(),
                                        model.parameterization, model))
                self._denoiser = denoiser
            self.passes[-1].calls.append(params.sigma.detach().clone())

        def _new_pass(self, denoiser):
            return denoiser is not getattr(self, "_denoiser", None) or shared.sd_model is not self.passes[-1].model

        def post_sample(self, p, ps, *args):
            self.samples.append(ps.samples.detach().clone())
            if self.skip_decode and not getattr(ps.samples, "already_decoded", False):
                # the host's "already decoded" path: no VAE (sweeps measure latents)
                processing = host_import("modules.processing")
                ps.samples = processing.DecodedSamples(torch.zeros(3, 8, 8) for _ in range(ps.samples.shape[0]))

        def postprocess(self, p, processed, *args):
            script_callbacks.remove_callbacks_for_function(self.on_denoiser)

    return Recorder


def runner(vpred_script, recorder, is_img2img: bool = False):
    scripts = host_import("modules.scripts")
    run = scripts.ScriptRunner()
    width = len(pack("a1111_extension.ui").ARG_NAMES)
    for script, (start, stop) in ((vpred_script, (0, width)), (recorder, (width, width))):
        script.args_from, script.args_to = start, stop
        script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
        script.filename = getattr(script, "filename", None) or f"{type(script).__name__}.py"
        script.name = getattr(script, "name", None) or type(script).__name__.lower()
        run.alwayson_scripts.append(script)
        run.scripts.append(script)
    return run


def _host_fields(cls, values: dict) -> dict:
    """A1111 1.9+ has per-pass schedulers (``scheduler``); 1.8 has none."""
    fields = getattr(cls, "__dataclass_fields__", {})
    if "scheduler" in fields:
        values.setdefault("scheduler", "Automatic")
    return values


def txt2img(model, sampler_name: str = "Euler", steps: int = 20, batch_size: int = 1, **fields):
    processing = host_import("modules.processing")
    values = dict(prompt="a bright image", negative_prompt="", width=SIZE, height=SIZE, steps=steps, cfg_scale=7.0,
                  sampler_name=sampler_name, seed=1, batch_size=batch_size, do_not_save_samples=True,
                  do_not_save_grid=True, do_not_reload_embeddings=True, disable_extra_networks=True)
    values.update(fields)
    cls = processing.StableDiffusionProcessingTxt2Img
    return cls(sd_model=model, **_host_fields(cls, values))


def img2img(model, sampler_name: str = "Euler", steps: int = 20, denoising_strength: float = 0.6, **fields):
    processing = host_import("modules.processing")
    image = host_import("PIL.Image").new("RGB", (SIZE, SIZE), (180, 150, 120))
    values = dict(prompt="a bright image", negative_prompt="", width=SIZE, height=SIZE, steps=steps, cfg_scale=7.0,
                  sampler_name=sampler_name, seed=1, batch_size=1, do_not_save_samples=True,
                  do_not_save_grid=True, do_not_reload_embeddings=True, disable_extra_networks=True,
                  init_images=[image], denoising_strength=denoising_strength)
    values.update(fields)
    cls = processing.StableDiffusionProcessingImg2Img
    return cls(sd_model=model, **_host_fields(cls, values))


def generate(data, p, args=None, *, antithetic: int = 0, skip_decode: bool = False) -> Result:
    """One request through the host's ``process_images``; ``args`` None = the accordion at its defaults,
    ``False`` = the extension not installed (no VPred Script in the runner)."""
    processing = host_import("modules.processing")
    is_img2img = isinstance(p, processing.StableDiffusionProcessingImg2Img)
    recorder = recorder_class()()
    recorder.antithetic, recorder.skip_decode = antithetic, skip_decode
    if args is False:
        vpred, args = None, ()
        run = runner_without(recorder, is_img2img)
    else:
        vpred = data.script_class()
        args = script_args() if args is None else args
        run = runner(vpred, recorder, is_img2img)
    p.scripts = run
    p.script_args = tuple(args)
    torch.manual_seed(0)  # img2img's VAE encode samples its latent with the global RNG (same draw for every run)
    # process_images restores only the overridden options that were in opts.data before (a default value is not):
    # restore every one here so that one test's override does not reach the next
    shared = host_import("modules.shared")
    overridden = {key: shared.opts.data.get(key, _MISSING) for key in (p.override_settings or {})}
    try:
        with host_options(**HARNESS_OPTIONS), (antithetic_noise() if antithetic else contextlib.nullcontext()):
            processed = processing.process_images(p)
    finally:
        for key, value in overridden.items():
            if value is _MISSING:
                shared.opts.data.pop(key, None)
            else:
                shared.opts.data[key] = value
    return Result(processed, p, recorder.passes, recorder.samples, recorder.loaded_at_start)


def runner_without(recorder, is_img2img: bool):
    scripts = host_import("modules.scripts")
    run = scripts.ScriptRunner()
    recorder.args_from = recorder.args_to = 0
    recorder.is_txt2img, recorder.is_img2img = not is_img2img, is_img2img
    recorder.filename, recorder.name = "Recorder.py", "recorder"
    run.alwayson_scripts.append(recorder)
    run.scripts.append(recorder)
    return run


# ---- issue 8: every sampler of the host's registry on the oracle

HOST_ZTSNR = {"sd_noise_schedule": "Zero Terminal SNR"}


def sweep_mode_args(mode: str):
    """``before``: no extension, the host's own ZTSNR option on a v model; ``pack``: v + ZTSNR forced, spacing auto
    (-> trailing); ``exact``: the same with the exact terminal."""
    if mode == "before":
        return False
    return script_args(prediction="v", ztsnr="on", terminal="exact" if mode == "exact" else "host_clamp")


def sweep(data, model, modes, n_images: int, steps: int = 20, only=None):
    """{sampler name: {mode: Stats or error text}} over ``sd_samplers.all_samplers`` (cfg 1, antithetic noise)."""
    from webui_oracle import Row, stats

    sd_samplers = host_import("modules.sd_samplers")
    rows = []
    for config in sd_samplers.all_samplers:
        if only and config.name not in only:
            continue
        cells = {}
        for mode in modes:
            args = sweep_mode_args(mode)
            host_prediction = model.parameterization
            if args is False:
                model.parameterization = "v"  # what the model's v YAML gives a stock webui
            p = txt2img(model, config.name, steps=steps, batch_size=n_images, cfg_scale=1.0,
                        override_settings=dict(HOST_ZTSNR) if args is False else {})
            try:
                result = generate(data, p, args, antithetic=n_images, skip_decode=True)
                cells[mode] = stats(result.latents) if result.samples else "no samples"
            except Exception as exc:  # noqa: BLE001 - a sampler that raises is a table entry
                cells[mode] = f"error: {type(exc).__name__}: {exc}"[:90]
            finally:
                model.parameterization = host_prediction
        rows.append(Row(config.name, cells))
    return rows


class Models:
    """Builds model objects for one test and undoes the host registrations at the end (:meth:`close`)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.made = []
        sd_models = host_import("modules.sd_models")
        self.saved = (sd_models.model_data.sd_model, list(sd_models.model_data.loaded_sd_models))

    def make(self, name: str, markers=(), **kwargs):
        model = build_model(self.directory, name, markers, **kwargs)
        self.made.append(model)
        return model

    def close(self) -> None:
        sd_models = host_import("modules.sd_models")
        unregister(*[m for m in self.made if hasattr(m.sd_checkpoint_info, "register")])
        sd_models.model_data.sd_model, sd_models.model_data.loaded_sd_models[:] = self.saved[0], self.saved[1]


def pass_hooks_installed() -> bool:
    """True while the pack's A1111 1.8 sampler hook is on the host's sampler classes."""
    samplers = pack("a1111_extension.samplers")
    return any(hasattr(getattr(cls, name, None), samplers.ORIGINAL_ATTR)
               for cls in samplers._sampler_classes() for name in samplers.SAMPLE_METHODS)


def snapshot(model) -> tuple:
    return model.alphas_cumprod_original.clone(), model.parameterization


def assert_restored(model, before) -> None:
    torch.testing.assert_close(model.alphas_cumprod_original, before[0], rtol=0, atol=0)
    assert model.parameterization == before[1]
    saved_attr = pack("a1111_extension.a1111").SAVED_ATTR
    assert not hasattr(model, saved_attr)
    assert not pass_hooks_installed()
