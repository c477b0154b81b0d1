"""reForge model objects built the way ``modules_forge.forge_loader.load_model_for_a1111`` builds them (minus the
weights), and sampling passes driven in the host's order (``WEBUI_PATH`` = a reForge tree).

- Model: the crafted YAML is found by the host's ``find_checkpoint_config_near_filename``, instantiated with
  forge_loader's ``FakeObject`` targets inside ``no_clip()``; the unet is a real ``UnetPatcher`` around an
  ``ldm_patched`` SD15 ``BaseModel`` (1-level UNet, seeded weights, or the exact oracle as its ``diffusion_model``)
  whose ``model_sampling`` is replaced the way forge_loader does for ``parameterization == "v"``.
- A request (``process_images_inner``'s order): ``before_process``, ``process``, per batch ``forge_objects`` reset from
  ``forge_objects_after_applying_lora``, ``process_batch``, the host's own ZTSNR step (global option or the model's
  ``ztsnr`` flag), ``Txt2Img.sample``: ``create_sampler``, ``process_before_every_sampling``, the host's own
  ``sampler.sample``; the host's ZTSNR undo, ``postprocess``.
"""

from __future__ import annotations

import contextlib
import types

import torch
from webui_host_env import host_import, load_vpred_script, pack
from webui_oracle import AntitheticRNG, OracleUNet, antithetic, antithetic_noise

STEPS = 20
SEED = 1234
INIT_STD = 0.02
TINY_CONTEXT = 32
TOKENS = 77
TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1, "context_dim": TINY_CONTEXT, "num_heads": 4, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_spatial_transformer": True, "legacy": False,
}
FAKE_TARGET = "modules_forge.forge_loader.FakeObject"
HOST_ZTSNR_LABEL = "Zero Terminal SNR"


def reforge_env():
    """reForge modules (None on A1111 and on Forge, whose backend has no ldm_patched model_sampling patch)."""
    if host_import("importlib.util").find_spec("modules_forge") is None:
        return None
    _, data = load_vpred_script()  # initialises the backend (--always-cpu) before forge_loader is imported
    loader = host_import("modules_forge.forge_loader")
    if not hasattr(loader, "ForgeSD") or not hasattr(loader, "no_clip"):
        return None
    return types.SimpleNamespace(
        loader=loader, data=data, ms=host_import("ldm_patched.modules.model_sampling"),
        samplers=host_import("ldm_patched.modules.samplers"), sd_models=host_import("modules.sd_models"),
        sd_samplers=host_import("modules.sd_samplers"), forge_sampler=host_import("modules_forge.forge_sampler"),
        processing=host_import("modules.processing"), shared=host_import("modules.shared"),
    )


def tiny_unet_patcher(diffusion_model=None):
    """A UnetPatcher around an SD15 BaseModel (seeded 1-level UNet, or ``diffusion_model`` in its place)."""
    supported = host_import("ldm_patched.modules.supported_models")
    unet_patcher = host_import("modules_forge.unet_patcher")
    config = supported.SD15(dict(TINY_UNET))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for param in base.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
    if diffusion_model is not None:
        base.diffusion_model = diffusion_model
    cpu = torch.device("cpu")
    return unet_patcher.UnetPatcher(base, load_device=cpu, offload_device=cpu)


def reforge_model(env, directory, name="tiny_v", markers=("v_pred", "ztsnr"), host_prediction=None,
                  diffusion_model=None):
    """sd_model as load_model_for_a1111 leaves it (config steps are forge_loader's own; weights left out).
    ``host_prediction`` "eps" = a v-pred checkpoint loaded with a stock (eps) config."""
    ckpt_factory = host_import("ckpt_factory")
    omegaconf = host_import("omegaconf")
    ldm_util = host_import("ldm.util")
    config_mod = host_import("modules.sd_models_config")
    model_base = host_import("ldm_patched.modules.model_base")
    checkpoint = str(directory / f"{name}.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=markers)
    pack("a1111_extension.checkpoints").write_yaml_if_needed(checkpoint)
    info = types.SimpleNamespace(filename=checkpoint, name_for_extra=name, title=name)
    config_path = config_mod.find_checkpoint_config_near_filename(info) or config_mod.config_default
    config = omegaconf.OmegaConf.load(config_path)
    for part in ("unet_config", "first_stage_config"):
        config.model.params[part].target = FAKE_TARGET
    with env.loader.no_clip():
        sd_model = ldm_util.instantiate_from_config(config.model)
    if host_prediction is not None:
        sd_model.parameterization = host_prediction
    unet = tiny_unet_patcher(diffusion_model)
    sd_model.forge_objects = env.loader.ForgeSD(unet, None, None, None)
    sd_model.forge_objects_original = sd_model.forge_objects.shallow_copy()
    sd_model.forge_objects_after_applying_lora = sd_model.forge_objects.shallow_copy()
    if getattr(sd_model, "parameterization", None) == "v":
        v_type = model_base.ModelType.V_PREDICTION
        unet.model.model_sampling = model_base.model_sampling(unet.model.model_config, v_type)
    sd_model.ztsnr = "ztsnr" in markers
    sd_model.sd_checkpoint_info = info
    for flag in ("is_sdxl", "is_sd2", "is_ssd", "is_sd3", "is_sdxl_inpaint"):
        setattr(sd_model, flag, False)
    sd_model.is_sd1 = True
    sd_model.sd_model_hash = None
    env.sd_models.model_data.set_sd_model(sd_model)
    return sd_model


class P:
    """The attributes of a reForge StableDiffusionProcessing that the Script and the sampler objects read."""

    def __init__(self, model, steps=STEPS, cfg_scale=7.0):
        self.sd_model = model
        self.override_settings, self.extra_generation_params = {}, {}
        self.sampler_noise_scheduler_override = None
        self.negative_prompts = self.all_negative_prompts = [""]
        self.cfg_scale, self.steps = cfg_scale, steps
        self.is_hr_pass, self.scheduler, self.hr_scheduler = False, "Automatic", None
        self.seeds = [0]


def start(script, p, args):
    """before_process, process, process_batch (the host's order before its ZTSNR step)."""
    script.before_process(p, *args)
    script.process(p, *args)
    script.process_batch(p, *args, batch_number=0, prompts=[""], seeds=[0], subseeds=[0])


def host_ztsnr_step(env, p):
    """process_images_inner's own ZTSNR application (when the model or the setting asks for it)."""
    sd_model = p.sd_model
    ms = sd_model.forge_objects.unet.model.model_sampling
    sd_model.sigmas_original = ms.sigmas
    sd_model.alphas_cumprod_original = sd_model.alphas_cumprod
    env.sd_models.apply_alpha_schedule_override(sd_model, p)
    ms.set_sigmas(env.ms.rescale_zero_terminal_snr_sigmas(ms.sigmas))


def host_ztsnr_undo(p):
    p.sd_model.forge_objects.unet.model.model_sampling.set_sigmas(p.sd_model.sigmas_original)
    p.sd_model.alphas_cumprod = p.sd_model.alphas_cumprod_original


def host_applies_ztsnr(env, p) -> bool:
    return env.shared.opts.sd_noise_schedule == HOST_ZTSNR_LABEL or bool(getattr(p.sd_model, "ztsnr", False))


def sampling_pass(env, script, p, args, sampler_name="Euler", latent_shape=(1, 4, 8, 8)):
    """StableDiffusionProcessingTxt2Img.sample up to the sampler call; returns the pass's unet patcher."""
    p.sampler = env.sd_samplers.create_sampler(sampler_name, p.sd_model)
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    x = torch.randn(latent_shape)
    script.process_before_every_sampling(p, *args, x=x, noise=x, c=None, uc=None)
    return p.sd_model.forge_objects.unet


# ---- the oracle through reForge's own samplers


def cond_batch(n: int, steps: int = STEPS):
    prompt_parser = host_import("modules.prompt_parser")
    tensors = torch.zeros(n, 1, TINY_CONTEXT)
    scheduled = [[prompt_parser.ScheduledPromptConditioning(steps, t)] for t in tensors]
    batch = [[prompt_parser.ComposableScheduledPromptConditioning(s)] for s in scheduled]
    return prompt_parser.MulticondLearnedConditioning(shape=(n,), batch=batch), scheduled


def txt2img_processing(env, model, sampler_name, n, steps=STEPS, cfg_scale=1.0):
    p = env.processing.StableDiffusionProcessingTxt2Img(
        sd_model=model, prompt="", negative_prompt="", width=512, height=512, steps=steps, cfg_scale=cfg_scale,
        sampler_name=sampler_name, seed=SEED, batch_size=n, do_not_save_samples=True, do_not_save_grid=True)
    if hasattr(p, "scheduler"):
        p.scheduler = "Automatic"
    return p


@contextlib.contextmanager
def host_option(env, name, value):
    saved = env.shared.opts.data.get(name, None)
    env.shared.opts.data[name] = value
    try:
        yield
    finally:
        if saved is None:
            env.shared.opts.data.pop(name, None)
        else:
            env.shared.opts.data[name] = saved


def request(env, script, p, args, n):
    """One txt2img batch in process_images_inner's order with the host's own ``sampler.sample`` (see module
    docstring); ``script`` None = no extension. Returns the latents."""
    return run_batch(env, script, p, args, n, reforge_ztsnr)


@contextlib.contextmanager
def reforge_ztsnr(env, p):
    """reForge's own ZTSNR step for the batch (global option or the model's ``ztsnr`` flag) and its undo."""
    ztsnr = host_applies_ztsnr(env, p)
    if ztsnr:
        host_ztsnr_step(env, p)
    try:
        yield
    finally:
        if ztsnr:
            host_ztsnr_undo(p)


def run_batch(env, script, p, args, n, host_ztsnr):
    """One txt2img batch in process_images_inner's order, shared by reForge and Forge: prompts and seeds, the Script's
    hooks (``script`` None = no extension), ``forge_objects`` reset, antithetic ``p.rng``, the host's own ZTSNR step
    (``host_ztsnr(env, p)``: a context manager, undone after the batch), ``create_sampler``,
    ``process_before_every_sampling`` and the host's own ``sampler.sample``. Returns the latents."""
    if hasattr(p, "fill_fields_from_opts"):
        p.fill_fields_from_opts()  # process_images_inner (reForge's A1111 sampling mode)
    p.setup_prompts()
    p.all_seeds, p.all_subseeds = [SEED + i for i in range(n)], [SEED + i for i in range(n)]
    p.seeds, p.subseeds = p.all_seeds, p.all_subseeds
    p.prompts, p.negative_prompts = p.all_prompts, p.all_negative_prompts
    p.iteration = 0
    if script is not None:
        script.before_process(p, *args)
    try:
        if script is not None:
            script.process(p, *args)
        p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        p.rng = AntitheticRNG(n)
        if script is not None:
            script.process_batch(p, *args, batch_number=0, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        with host_ztsnr(env, p):
            c, _ = cond_batch(n)
            _, uc = cond_batch(n)
            p.sampler = env.sd_samplers.create_sampler(p.sampler_name, p.sd_model)
            x = antithetic(n)
            if script is not None:
                script.process_before_every_sampling(p, *args, x=x, noise=x, c=c, uc=uc)
            with torch.inference_mode(), antithetic_noise():
                return p.sampler.sample(p, x, c, uc, image_conditioning=p.txt2img_image_conditioning(x))
    finally:
        if script is not None:
            script.postprocess(p, None, *args)


def sweep_reforge(env, directory, modes, n_images: int, steps: int = STEPS, only=None):
    """Every entry of reForge's ``sd_samplers.all_samplers`` in every mode (see webui_a1111.sweep_mode_args)."""
    models = {
        "before": reforge_model(env, directory, "oracle_v", ("v_pred",), diffusion_model=OracleUNet()),
        "pack": reforge_model(env, directory, "oracle_plain", (), diffusion_model=OracleUNet()),
    }
    return sweep_registry(env, models, request, modes, n_images, steps, only)


def sweep_registry(env, models, run_request, modes, n_images: int, steps: int, only=None):
    """{sampler: {mode: Stats or error text}} over the host's ``sd_samplers.all_samplers``: ``models["before"]`` (a v
    model, the host's own ZTSNR option) for the webui alone, ``models["pack"]`` (a plain file) for the pack's modes;
    ``run_request(env, script, p, args, n_images)`` runs one request in the host's pass order."""
    from webui_a1111 import sweep_mode_args
    from webui_oracle import Row, stats

    rows = []
    for config in env.sd_samplers.all_samplers:
        if only and config.name not in only:
            continue
        cells = {}
        for mode in modes:
            args = sweep_mode_args(mode)
            model = models["before" if args is False else "pack"]
            env.sd_models.model_data.set_sd_model(model)
            script = None if args is False else env.data.script_class()
            p = txt2img_processing(env, model, config.name, n_images, steps)
            try:
                with host_option(env, "sd_noise_schedule", HOST_ZTSNR_LABEL if args is False else "Default"):
                    cells[mode] = stats(run_request(env, script, p, args, n_images))
            except Exception as exc:  # noqa: BLE001 - a sampler that raises is a table entry
                cells[mode] = f"error: {type(exc).__name__}: {exc}"[:90]
        rows.append(Row(config.name, cells))
    return rows


# ---- Forge (backend KModel / UnetPatcher, predictor) ---------------------------------------------------------------


class ForgeOracle(OracleUNet):
    """The oracle with the attributes Forge's KModel / UnetPatcher read from a diffusion network."""

    storage_dtype = computation_dtype = torch.float32
    load_device = offload_device = initial_device = torch.device("cpu")


def forge_env():
    """Forge modules (None on A1111 / reForge)."""
    if host_import("importlib.util").find_spec("backend") is None:
        return None
    _, data = load_vpred_script()
    return types.SimpleNamespace(
        data=data, k_model=host_import("backend.modules.k_model"), unet=host_import("backend.patcher.unet"),
        engine=host_import("backend.diffusion_engine.base"), k_prediction=host_import("backend.modules.k_prediction"),
        diffusers=host_import("diffusers"), sd_models=host_import("modules.sd_models"),
        sd_samplers=host_import("modules.sd_samplers"), processing=host_import("modules.processing"),
        shared=host_import("modules.shared"),
    )


def forge_model(env, directory, name, markers=(), prediction="epsilon", network=None):
    """A Forge diffusion-engine stand-in: ForgeObjects around a real UnetPatcher / KModel whose predictor is built from
    the SD betas (``prediction`` "epsilon" or "v_prediction", as Forge's loader builds it from the config), the
    network the oracle; what processing, the samplers and the Script read."""
    ckpt_factory = host_import("ckpt_factory")
    checkpoint = str(directory / f"{name}.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=markers)
    scheduler = env.diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     prediction_type=prediction)
    network = network or ForgeOracle()
    k_model = env.k_model.KModel(model=network, diffusers_scheduler=scheduler)
    unet = env.unet.UnetPatcher.from_model(network, scheduler, None, k_predictor=k_model.predictor)
    model = types.SimpleNamespace(
        forge_objects=env.engine.ForgeObjects(unet, None, None, None), model_config=types.SimpleNamespace(ztsnr=False),
        sd_checkpoint_info=types.SimpleNamespace(filename=checkpoint, name_for_extra=name, title=name),
        extra_generation_params={}, comments=[], is_sdxl=False, is_sd2=False, is_sd3=False, is_sd1=True,
        is_inpaint=False, sd_model_hash=None)
    model.forge_objects_original = model.forge_objects.shallow_copy()
    model.forge_objects_after_applying_lora = model.forge_objects.shallow_copy()
    env.sd_models.model_data.set_sd_model(model)
    return model


def forge_request(env, script, p, args, n):
    """One txt2img batch in Forge's process_images_inner order with the host's own ``sampler.sample``."""
    return run_batch(env, script, p, args, n, forge_ztsnr)


@contextlib.contextmanager
def forge_ztsnr(env, p):
    """Forge's own ZTSNR step (the global option): the loaded predictor rescaled in place, restored after the batch."""
    predictor = p.sd_model.forge_objects.unet.model.predictor
    backup = None
    if env.shared.opts.sd_noise_schedule == HOST_ZTSNR_LABEL:
        backup = predictor.sigmas
        predictor.set_sigmas(env.k_prediction.rescale_zero_terminal_snr_sigmas(predictor.sigmas))
    try:
        yield
    finally:
        if backup is not None:
            predictor.set_sigmas(backup)


def sweep_forge(env, directory, modes, n_images: int, steps: int = STEPS, only=None):
    """Every entry of Forge's ``sd_samplers.all_samplers`` in every mode (see webui_a1111.sweep_mode_args)."""
    models = {"before": forge_model(env, directory, "oracle_v", ("v_pred",), "v_prediction"),
              "pack": forge_model(env, directory, "oracle_plain", (), "epsilon")}
    return sweep_registry(env, models, forge_request, modes, n_images, steps, only)
