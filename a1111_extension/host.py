"""Host detection by feature probing (never by version strings)."""

from __future__ import annotations

A1111 = "a1111"
REFORGE = "reforge"
FORGE = "forge"
HOST_IDS = (A1111, REFORGE, FORGE)


def classify_host(has_forge_objects: bool, has_model_sampling: bool, has_predictor: bool) -> str:
    """reForge patches ``model_sampling``, Forge a ``predictor``; no patcher objects means A1111."""
    if not has_forge_objects:
        return A1111
    if has_predictor and not has_model_sampling:
        return FORGE
    return REFORGE


def detect_host(sd_model) -> str:
    """Host id for a loaded webui model object."""
    forge_objects = getattr(sd_model, "forge_objects", None)
    unet_model = getattr(getattr(forge_objects, "unet", None), "model", None)
    return classify_host(
        forge_objects is not None, hasattr(unet_model, "model_sampling"), hasattr(unet_model, "predictor")
    )


def host_global_ztsnr(opts, sd_model) -> bool:
    """The webui's own ZTSNR decision: the global setting, or a model flag (A1111 dev, reForge, Forge)."""
    if getattr(opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR":
        return True
    config = getattr(sd_model, "model_config", None)
    return bool(getattr(sd_model, "ztsnr", False) or getattr(config, "ztsnr", False))
