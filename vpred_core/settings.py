"""User-facing settings as frozen dataclasses with stable ids, validation and infotext (de)serialisation.

Infotext keys are prefixed with ``INFOTEXT_PREFIX`` ("VPred ") so they never clash with host keys. Every field
is written; reading tolerates missing keys (defaults) and rejects malformed values with a ValueError that names
the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from .sampling.cfg import RESCALE_SPACE_IDS, SigmaWindow, validate_phi
from .sampling.prediction import PREDICTION_IDS
from .sampling.schedules import NUM_TRAIN_TIMESTEPS, SD_LINEAR_END, SD_LINEAR_START, SPACING_IDS, ScheduleSpec
from .sampling.uncond import UNCOND_MODE_IDS

INFOTEXT_PREFIX = "VPred "
AUTO = "auto"
PREDICTION_SETTING_IDS = (AUTO, "v", "eps")
ZTSNR_SETTING_IDS = (AUTO, "on", "off")
SPACING_SETTING_IDS = ("host",) + SPACING_IDS


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class ModelSamplingSettings:
    """Prediction type, ZTSNR and beta schedule; ``auto`` defers to the checkpoint's detected settings."""

    prediction: str = AUTO
    ztsnr: str = AUTO
    beta_schedule: str = "scaled_linear"
    linear_start: float = SD_LINEAR_START
    linear_end: float = SD_LINEAR_END
    timesteps: int = NUM_TRAIN_TIMESTEPS
    terminal: str = "host_clamp"

    def __post_init__(self):
        _check_choice("prediction", self.prediction, PREDICTION_SETTING_IDS)
        _check_choice("ztsnr", self.ztsnr, ZTSNR_SETTING_IDS)
        self.schedule_spec(False)

    def resolve_prediction(self, detected: str | None) -> str | None:
        """Forced id, or the detected one for ``auto`` (None when nothing was detected: keep the host's)."""
        if self.prediction != AUTO:
            return self.prediction
        return detected if detected in PREDICTION_IDS else None

    def resolve_ztsnr(self, detected: bool | None) -> bool:
        """on/off as forced, else the detected flag (False when unknown)."""
        if self.ztsnr != AUTO:
            return self.ztsnr == "on"
        return bool(detected)

    def schedule_spec(self, ztsnr: bool) -> ScheduleSpec:
        """The training schedule these settings describe, with ZTSNR decided by the caller."""
        return ScheduleSpec(
            self.beta_schedule, self.linear_start, self.linear_end, self.timesteps, ztsnr, self.terminal
        )


@dataclass(frozen=True)
class CfgRescaleSettings:
    """CFG rescale phi (0 = off), the space it works in and the sigma window it applies in."""

    phi: float = 0.0
    space: str = "v"
    sigma_high: float = math.inf
    sigma_low: float = 0.0

    def __post_init__(self):
        validate_phi(self.phi)
        _check_choice("rescale space", self.space, RESCALE_SPACE_IDS)
        self.window()

    @property
    def enabled(self) -> bool:
        return self.phi > 0.0

    def window(self) -> SigmaWindow:
        return SigmaWindow(self.sigma_high, self.sigma_low)


@dataclass(frozen=True)
class UncondSettings:
    """What an empty negative prompt becomes: one of UNCOND_MODE_IDS."""

    mode: str = "host_default"

    def __post_init__(self):
        _check_choice("uncond mode", self.mode, UNCOND_MODE_IDS)


@dataclass(frozen=True)
class SamplingSettings:
    """Timestep spacing of the sampling schedule (``host`` keeps the host's own)."""

    spacing: str = "trailing"

    def __post_init__(self):
        _check_choice("spacing", self.spacing, SPACING_SETTING_IDS)


@dataclass(frozen=True)
class PackSettings:
    """All per-generation settings of the pack."""

    model_sampling: ModelSamplingSettings = field(default_factory=ModelSamplingSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    cfg_rescale: CfgRescaleSettings = field(default_factory=CfgRescaleSettings)
    uncond: UncondSettings = field(default_factory=UncondSettings)


# (infotext key suffix, group attribute, field name, parser)
INFOTEXT_FIELDS = (
    ("prediction", "model_sampling", "prediction", str),
    ("ZTSNR", "model_sampling", "ztsnr", str),
    ("beta schedule", "model_sampling", "beta_schedule", str),
    ("linear start", "model_sampling", "linear_start", float),
    ("linear end", "model_sampling", "linear_end", float),
    ("timesteps", "model_sampling", "timesteps", int),
    ("terminal", "model_sampling", "terminal", str),
    ("spacing", "sampling", "spacing", str),
    ("CFG rescale", "cfg_rescale", "phi", float),
    ("rescale space", "cfg_rescale", "space", str),
    ("rescale sigma high", "cfg_rescale", "sigma_high", float),
    ("rescale sigma low", "cfg_rescale", "sigma_low", float),
    ("uncond", "uncond", "mode", str),
)


def infotext_key(suffix: str) -> str:
    """Prefixed infotext key, e.g. "VPred CFG rescale"."""
    return INFOTEXT_PREFIX + suffix


def format_infotext_value(value) -> str:
    """repr-free text for an infotext value (floats round-trip exactly, inf as "inf")."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_infotext(settings: PackSettings) -> dict[str, str]:
    """Every setting as {prefixed key: text}."""
    return {
        infotext_key(suffix): format_infotext_value(getattr(getattr(settings, group), name))
        for suffix, group, name, _ in INFOTEXT_FIELDS
    }


def _parse(key: str, text, parser):
    try:
        return parser(str(text).strip())
    except ValueError as exc:
        raise ValueError(f"infotext key {key!r}: cannot parse {text!r} ({exc})") from None


def from_infotext(params: dict, base: PackSettings | None = None) -> PackSettings:
    """PackSettings from prefixed infotext keys; missing keys keep ``base`` (defaults); bad values raise."""
    groups = {f.name: {} for f in fields(PackSettings)}
    for suffix, group, name, parser in INFOTEXT_FIELDS:
        key = infotext_key(suffix)
        if key in params:
            groups[group][name] = _parse(key, params[key], parser)
    base = base or PackSettings()
    try:
        return PackSettings(**{g: replace(getattr(base, g), **vals) for g, vals in groups.items()})
    except ValueError as exc:
        raise ValueError(f"infotext: {exc}") from None
