"""The one decision path of both hosts: what the user asked, what the model is said to be, what the pack applies.

- **Requested** settings: frozen dataclasses with stable ids (:class:`PackSettings` and its groups). ``auto`` defers
  to what is known about the checkpoint.
- **Detected**: what one source says about a model's training schedule (:class:`Detected`): the checkpoint's own
  statements (marker keys, metadata, a YAML beside it, an override file: :meth:`Detected.from_inspection`), the
  weight probe, or the host's own model objects. ``None`` means "this source does not say".
- **Applied**: :func:`resolve_model_sampling` decides each field as forced > stated (file, then probe) > host and
  returns a :class:`SamplingPlan` that names the source of every value. A plan that equals what the host does on
  its own (:meth:`SamplingPlan.changes_host`) is not installed: the pack stays invisible. Betas equal to the host's
  own are taken from the host (its tensor, bit for bit), so a pasted infotext reproduces the host's schedule exactly.
- **Record**: :func:`applied_settings` turns a plan into concrete requested settings (``v``, ``on``, 0.012...), and
  :func:`to_infotext` / :func:`from_infotext` write and read them as ``VPred ...`` keys, so pasting an image's
  parameters forces exactly what was applied.

Both hosts translate their objects into :class:`Detected` / requested settings and the plan back into patches;
nothing else decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch

from .sampling.cfg import RESCALE_SPACE_IDS, SigmaWindow, validate_phi
from .sampling.denoiser import FIRST_STEP_IDS
from .sampling.prediction import PREDICTION_IDS
from .sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    SCHEDULE_DTYPE,
    SD_LINEAR_END,
    SD_LINEAR_START,
    SPACING_IDS,
    ScheduleSpec,
    is_zero_terminal_snr,
    rescale_zero_terminal_snr,
    sigmas_from_alphas_cumprod,
)
from .sampling.uncond import UNCOND_MODE_IDS

INFOTEXT_PREFIX = "VPred "
AUTO = "auto"
HOST = "host"
PREDICTION_SETTING_IDS = (AUTO, "v", "eps")
ZTSNR_SETTING_IDS = (AUTO, "on", "off")
# auto: trailing where the pack puts v-prediction or ZTSNR in effect, the host's own spacing otherwise.
SPACING_SETTING_IDS = (AUTO, HOST) + SPACING_IDS
TRAILING = "trailing"
BETA_FIELDS = ("beta_schedule", "linear_start", "linear_end", "timesteps")
SCHEDULE_FIELDS = ("prediction", "ztsnr") + BETA_FIELDS
SRC_FORCED = "forced"
SRC_HOST = "host"
SRC_DEFAULT = "default"
BETAS = "betas"  # the plan's source key for the four beta fields together
FLOAT_REL_TOL = 1e-9
# Relative tolerance for "these alphas_cumprod are the host's": float32 storage of a float64 schedule differs by
# ~6e-8 relative; different beta_end values (0.012 vs 0.0125) differ by >1e-3 at the end of the schedule.
HOST_ABAR_RTOL = 1e-6
SD_SCHEDULE = ScheduleSpec()  # scaled_linear 0.00085..0.012 over 1000 steps


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---- requested settings


@dataclass(frozen=True)
class ModelSamplingSettings:
    """Prediction type, ZTSNR and beta schedule as asked; ``auto`` defers to what is known about the checkpoint."""

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
    """Timestep spacing of the sampling schedule (``auto``: trailing where the pack applies v or ZTSNR, ``host``:
    the host's own) and how the first step from SNR ~0 is taken (``auto``: a DDIM step when the schedule starts
    there, see :mod:`vpred_core.sampling.denoiser`)."""

    spacing: str = AUTO
    first_step: str = AUTO

    def __post_init__(self):
        _check_choice("spacing", self.spacing, SPACING_SETTING_IDS)
        _check_choice("first step", self.first_step, FIRST_STEP_IDS)


@dataclass(frozen=True)
class PackSettings:
    """All per-generation settings of the pack."""

    model_sampling: ModelSamplingSettings = field(default_factory=ModelSamplingSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    cfg_rescale: CfgRescaleSettings = field(default_factory=CfgRescaleSettings)
    uncond: UncondSettings = field(default_factory=UncondSettings)


# ---- what is known about a model


@dataclass(frozen=True)
class Detected:
    """What one source says about a model's training schedule; None fields are not stated by it.

    ``source`` names where the values came from; ``field_sources`` refines it per field (e.g. the prediction from
    a marker key, the betas from a YAML)."""

    prediction: str | None = None
    ztsnr: bool | None = None
    beta_schedule: str | None = None
    linear_start: float | None = None
    linear_end: float | None = None
    timesteps: int | None = None
    source: str = ""
    field_sources: tuple[tuple[str, str], ...] = ()

    def source_of(self, name: str) -> str:
        return dict(self.field_sources).get(name, self.source)

    def states(self, name: str) -> bool:
        return getattr(self, name) is not None

    @property
    def states_anything(self) -> bool:
        return any(self.states(name) for name in SCHEDULE_FIELDS)

    def over(self, fallback: Detected) -> Detected:
        """Per field: this source's value where it states one, else ``fallback``'s (sources kept with values)."""
        values, sources = {}, []
        for name in SCHEDULE_FIELDS:
            chosen = self if self.states(name) else fallback
            values[name] = getattr(chosen, name)
            if values[name] is not None:
                sources.append((name, chosen.source_of(name)))
        return Detected(**values, source=self.source or fallback.source, field_sources=tuple(sources))

    @classmethod
    def from_inspection(cls, result) -> Detected:
        """The fields a core InspectionResult says the file itself states (defaults are not statements)."""
        if result is None:
            return cls()
        stated = result.stated_fields()
        sources = tuple((name, _inspection_source(result, name)) for name in stated)
        return cls(**{name: stated.get(name) for name in SCHEDULE_FIELDS if name in stated},
                   source="checkpoint", field_sources=sources)


PROBE_SOURCE = "probe"
APPLICABLE_PROBE_PREDICTIONS = ("eps", "v")  # x0 / flow models are reported, never sampled as eps or v


def detected_from_probe(result) -> Detected:
    """What a weight probe (:mod:`vpred_core.sampling.probe`) found, as a stated source: eps / v (x0, flow and unknown
    state nothing the hosts' discrete samplers could use) and the ZTSNR hint when it was decisive."""
    if result is None or result.prediction not in APPLICABLE_PROBE_PREDICTIONS:
        return Detected()
    return Detected(prediction=result.prediction, ztsnr=result.ztsnr, source=f"{PROBE_SOURCE}: {result.summary()}")


def _inspection_source(result, name: str) -> str:
    ref = result.sources.get(name)
    if ref is None:
        return "checkpoint"
    return f"{ref.source}: {ref.detail}" if getattr(ref, "detail", "") else str(ref.source)


# ---- what the pack applies


@dataclass(frozen=True)
class SamplingPlan:
    """Resolved model sampling: prediction (None keeps the host's, unknown), ZTSNR, the training schedule, whether
    the betas are the host's own (its tensor is then the base), and the source of each decision."""

    prediction: str | None
    ztsnr: bool
    spec: ScheduleSpec
    betas_from_host: bool
    sources: tuple[tuple[str, str], ...] = ()

    def source_of(self, name: str) -> str:
        return dict(self.sources).get(name, SRC_HOST)

    def decided_by_pack(self, name: str) -> bool:
        """True when the value comes from the user or the checkpoint (or the probe), not from the host."""
        return self.source_of(name) != SRC_HOST

    def changes_host(self, host: Detected) -> bool:
        """False when the host would sample exactly like this on its own (the plan is then not installed)."""
        same_prediction = self.prediction is None or self.prediction == host.prediction
        return not (same_prediction and self.ztsnr == bool(host.ztsnr) and self.betas_from_host)

    @property
    def puts_vpred_or_ztsnr_in_effect(self) -> bool:
        """v-prediction or ZTSNR decided by the user or the checkpoint (not merely the host's own setting)."""
        return ((self.prediction == "v" and self.decided_by_pack("prediction"))
                or (self.ztsnr and self.decided_by_pack("ztsnr")))

    def summary(self) -> str:
        pred = self.prediction or "host"
        betas = "host betas" if self.betas_from_host else f"beta_end {self.spec.linear_end:g}"
        return f"{pred}, ZTSNR {'on' if self.ztsnr else 'off'}, {betas}"

    def describe_sources(self) -> str:
        """"prediction: <source>; ztsnr: <source>; betas: <source>" for reports."""
        return "; ".join(f"{name}: {self.source_of(name)}" for name in ("prediction", "ztsnr", BETAS))

    def alphas_cumprod(self, host_abar: torch.Tensor | None = None) -> torch.Tensor:
        """The plan's alphas_cumprod (float64 maths on the CPU) in the dtype/device of ``host_abar``.

        With the host's betas the host's own non-ZTSNR tensor is the base (ZTSNR-rescaled when the plan wants it),
        so the host's values are kept bit for bit; otherwise the plan's ScheduleSpec."""
        if self.betas_from_host and host_abar is not None and not is_zero_terminal_snr(host_abar):
            abar = host_abar.detach().cpu().to(SCHEDULE_DTYPE)  # MPS has no float64
            abar = rescale_zero_terminal_snr(abar, self.spec.terminal) if self.ztsnr else abar
        else:
            abar = self.spec.alphas_cumprod()
        if host_abar is None:
            return abar.float()
        return abar.to(device=host_abar.device, dtype=host_abar.dtype)

    def sigmas(self, host_abar: torch.Tensor | None = None) -> torch.Tensor:
        """float32 VE sigmas of the plan (ascending), as host model_sampling objects store them."""
        return sigmas_from_alphas_cumprod(self.alphas_cumprod(host_abar).cpu().double()).float()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=FLOAT_REL_TOL)
    return a == b


def _host_betas(host: Detected) -> dict | None:
    if not all(host.states(name) for name in BETA_FIELDS):
        return None
    return {name: getattr(host, name) for name in BETA_FIELDS}


def resolve_model_sampling(requested: ModelSamplingSettings, stated: Detected = Detected(),
                           host: Detected = Detected(), betas_auto: bool = True) -> SamplingPlan:
    """Each field: forced (a requested value other than ``auto``) > stated (checkpoint, probe) > the host's own.

    ``betas_auto`` False forces the requested beta_schedule / linear_start / linear_end / timesteps. Otherwise the
    stated beta fields win, the host's known ones fill the rest, defaults the remainder; with none stated the
    betas are the host's (``betas_from_host``). Betas equal to the host's known ones count as the host's too."""
    sources = {}
    if requested.prediction != AUTO:
        prediction, sources["prediction"] = requested.prediction, SRC_FORCED
    elif stated.prediction in PREDICTION_IDS:
        prediction, sources["prediction"] = stated.prediction, stated.source_of("prediction")
    else:
        prediction, sources["prediction"] = host.prediction, SRC_HOST
    if requested.ztsnr != AUTO:
        ztsnr, sources["ztsnr"] = requested.ztsnr == "on", SRC_FORCED
    elif stated.ztsnr is not None:
        ztsnr, sources["ztsnr"] = bool(stated.ztsnr), stated.source_of("ztsnr")
    else:
        ztsnr, sources["ztsnr"] = bool(host.ztsnr), SRC_HOST
    host_betas = _host_betas(host)
    if not betas_auto:
        betas = {name: getattr(requested, name) for name in BETA_FIELDS}
        sources[BETAS] = SRC_FORCED
    elif any(stated.states(name) for name in BETA_FIELDS):
        fallback = host.over(Detected(**{name: getattr(requested, name) for name in BETA_FIELDS}))
        merged = stated.over(fallback)
        betas = {name: getattr(merged, name) for name in BETA_FIELDS}
        sources[BETAS] = "; ".join(sorted({stated.source_of(n) for n in BETA_FIELDS if stated.states(n)}))
    else:
        betas = host_betas or {name: getattr(requested, name) for name in BETA_FIELDS}
        sources[BETAS] = SRC_HOST if host_betas else SRC_DEFAULT
    from_host = sources[BETAS] in (SRC_HOST, SRC_DEFAULT) or (
        host_betas is not None and all(_same(betas[n], host_betas[n]) for n in BETA_FIELDS))
    if sources[BETAS] == SRC_DEFAULT:
        sources[BETAS] = SRC_HOST
    spec = ScheduleSpec(betas["beta_schedule"], float(betas["linear_start"]), float(betas["linear_end"]),
                        int(betas["timesteps"]), ztsnr, requested.terminal)
    return SamplingPlan(prediction, ztsnr, spec, from_host, tuple(sources.items()))


def host_betas_from_alphas_cumprod(host_abar: torch.Tensor | None,
                                   candidates: tuple[ScheduleSpec, ...] = (SD_SCHEDULE,)) -> ScheduleSpec | None:
    """The candidate schedule whose alphas_cumprod equal the host's tensor (rtol HOST_ABAR_RTOL), else None; lets a
    host that keeps only a tensor report its betas (A1111's SDXL: the SD defaults)."""
    if host_abar is None or is_zero_terminal_snr(host_abar):
        return None
    abar = host_abar.detach().cpu().to(SCHEDULE_DTYPE)
    for spec in candidates:
        reference = spec.alphas_cumprod()
        if reference.shape == abar.shape and torch.allclose(abar, reference, rtol=HOST_ABAR_RTOL, atol=0.0):
            return spec
    return None


def resolve_spacing(requested: str, plan: SamplingPlan | None) -> str:
    """The spacing to apply: ``auto`` is trailing where the plan puts v or ZTSNR in effect, else the host's."""
    if requested != AUTO:
        return requested
    return TRAILING if plan is not None and plan.puts_vpred_or_ztsnr_in_effect else HOST


def applied_settings(requested: PackSettings, plan: SamplingPlan | None, host: Detected, spacing: str) -> PackSettings:
    """Concrete settings that reproduce what was applied (for the infotext): the plan's prediction, ZTSNR and betas
    (the host's where the plan keeps them) and the applied spacing; CFG rescale and uncond as requested."""
    ms = requested.model_sampling
    if plan is not None:
        prediction = plan.prediction or host.prediction or AUTO
        spec = plan.spec
        ms = replace(ms, prediction=prediction, ztsnr="on" if plan.ztsnr else "off", beta_schedule=spec.beta_schedule,
                     linear_start=spec.linear_start, linear_end=spec.linear_end, timesteps=spec.timesteps)
    return replace(requested, model_sampling=ms, sampling=replace(requested.sampling, spacing=spacing))


# ---- infotext

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
    ("first step", "sampling", "first_step", str),
    ("CFG rescale", "cfg_rescale", "phi", float),
    ("rescale space", "cfg_rescale", "space", str),
    ("rescale sigma high", "cfg_rescale", "sigma_high", float),
    ("rescale sigma low", "cfg_rescale", "sigma_low", float),
    ("uncond", "uncond", "mode", str),
)
BETA_INFOTEXT_SUFFIXES = ("beta schedule", "linear start", "linear end", "timesteps")


def infotext_key(suffix: str) -> str:
    """Prefixed infotext key, e.g. "VPred CFG rescale"."""
    return INFOTEXT_PREFIX + suffix


def format_infotext_value(value) -> str:
    """repr-free text for an infotext value (floats round-trip exactly, inf as "inf")."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_infotext(settings: PackSettings, omit: tuple[str, ...] = ()) -> dict[str, str]:
    """Every setting as {prefixed key: text}, except the key suffixes in ``omit``."""
    return {
        infotext_key(suffix): format_infotext_value(getattr(getattr(settings, group), name))
        for suffix, group, name, _ in INFOTEXT_FIELDS if suffix not in omit
    }


def has_pack_infotext(params: dict) -> bool:
    """True when parameters carry any of the pack's prefixed keys."""
    return any(str(key).startswith(INFOTEXT_PREFIX) for key in params)


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
