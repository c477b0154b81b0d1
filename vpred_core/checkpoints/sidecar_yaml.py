"""Write the crafted ``<checkpoint>.yaml`` a webui loads beside a checkpoint.

Templates (``yaml_configs/``) are v-prediction configs with the structure the webuis instantiate (``config.model``).
A template is loaded once, then patched per checkpoint: prediction (``parameterization`` for ldm, scaling/weighting
targets for sgm), beta schedule and ``linear_start``/``linear_end``; the toolkit's ``vpred_toolkit`` record is
appended.

Entry point: :func:`write_yaml_for_checkpoint`. An existing YAML (or anything else with its name, a dangling
symbolic link included) is never replaced unless ``force``; then a regular file is first copied to
``<name>.yaml.bak`` and a symbolic link is refused. Files are created exclusively (:mod:`.file_writes`): a YAML
that appears while ours is being written is kept. Every problem is reported in the returned :class:`WriteOutcome`,
never raised, so a folder run carries on with the other files.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import asdict, dataclass

import yaml

from .. import __version__
from .file_writes import create_exclusive, replace_with_backup
from .inspection import (
    RECORD_FORMAT,
    RECORD_KEY,
    InspectionResult,
    inspect_checkpoint,
    sidecar_yaml_path,
)

# The repository root's yaml_configs/ (the pack is used from its clone: custom_nodes/ or extensions/).
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE_DIR = os.path.join(REPOSITORY_ROOT, "yaml_configs")
LDM, SGM = "ldm", "sgm"

# (family, variant) -> (template file, config style)
TEMPLATES = {
    ("sd1", "base"): ("sd1_v.yaml", LDM),
    ("sd1", "inpaint"): ("sd1_inpaint_v.yaml", LDM),
    ("sd2", "base"): ("sd2_v.yaml", LDM),
    ("sd2", "inpaint"): ("sd2_inpaint_v.yaml", LDM),
    ("sdxl", "base"): ("sdxl_v.yaml", SGM),
    ("sdxl", "inpaint"): ("sdxl_inpaint_v.yaml", SGM),
    ("sdxl_refiner", "base"): ("sdxl_refiner_v.yaml", SGM),
}
NO_TEMPLATE_REASONS = {
    "instruct_pix2pix": "instruct-pix2pix: A1111's model class accepts only eps/x0 "
                        "(modules/models/diffusion/ddpm_edit.py:85), so no v config exists; eps needs none",
}
SGM_MODULE = "sgm.modules.diffusionmodules."
SGM_TARGETS = {
    "v": (SGM_MODULE + "denoiser_scaling.VScaling", SGM_MODULE + "denoiser_weighting.VWeighting"),
    "eps": (SGM_MODULE + "denoiser_scaling.EpsScaling", SGM_MODULE + "denoiser_weighting.EpsWeighting"),
}
# Our beta schedule ids -> ldm make_beta_schedule names ("linear" there means sqrt-linear squared).
LDM_BETA_NAMES = {"scaled_linear": "linear", "linear": "sqrt_linear", "cosine": "cosine"}
SGM_BETA_SCHEDULES = ("scaled_linear",)  # LegacyDDPMDiscretization only knows this one


class TemplateError(ValueError):
    """No template fits, or the settings cannot be expressed in the host's config."""


def template_for(family: str, variant: str) -> tuple[str, str]:
    """(file name, style) for an architecture; TemplateError with the reason when there is none."""
    if (family, variant) in TEMPLATES:
        return TEMPLATES[(family, variant)]
    reason = NO_TEMPLATE_REASONS.get(variant, f"no template for {family} {variant}")
    raise TemplateError(reason)


@functools.cache
def load_template(name: str, template_dir: str = TEMPLATE_DIR) -> dict:
    """Parsed template (cached; callers get deep copies through :func:`build_config`)."""
    with open(os.path.join(template_dir, name), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def build_config(family: str, variant: str, prediction: str, beta_schedule: str, linear_start: float,
                 linear_end: float) -> tuple[dict, str]:
    """The patched ``{"model": ...}`` mapping and the template name."""
    name, style = template_for(family, variant)
    config = copy.deepcopy(load_template(name))
    params = config["model"]["params"]
    if style == LDM:
        _patch_ldm(params, prediction, beta_schedule, linear_start, linear_end)
    else:
        _patch_sgm(params, prediction, beta_schedule, linear_start, linear_end)
    return config, name


def _patch_ldm(params: dict, prediction: str, beta_schedule: str, start: float, end: float) -> None:
    if prediction == "v":
        params["parameterization"] = "v"
    else:
        params.pop("parameterization", None)
    params["linear_start"], params["linear_end"] = start, end
    if beta_schedule not in LDM_BETA_NAMES:
        raise TemplateError(f"beta schedule {beta_schedule!r} has no ldm equivalent")
    if beta_schedule != "scaled_linear":
        params["beta_schedule"] = LDM_BETA_NAMES[beta_schedule]


def _patch_sgm(params: dict, prediction: str, beta_schedule: str, start: float, end: float) -> None:
    if beta_schedule not in SGM_BETA_SCHEDULES:
        raise TemplateError(f"beta schedule {beta_schedule!r} cannot be expressed in an SDXL webui config")
    denoiser = params["denoiser_config"]["params"]
    scaling, weighting = SGM_TARGETS[prediction]
    denoiser["scaling_config"]["target"] = scaling
    denoiser["weighting_config"]["target"] = weighting
    discretization = denoiser["discretization_config"].setdefault("params", {})
    discretization["linear_start"], discretization["linear_end"] = start, end



logger = logging.getLogger(__name__)

WRITTEN, WOULD_WRITE, EXISTS, SKIPPED, ERROR = "written", "would_write", "exists", "skipped", "error"
KEPT_REASON = "already present, left as it is; --force replaces a regular file (keeping a .bak copy)"
NOT_REPLACEABLE = "a symbolic link or not a regular file: never followed or replaced"
GENERATOR = f"vpred-ztsnr-toolkit {__version__}"
HEADER = ("# Generated by {generator} for {checkpoint} from template {template}.\n"
          "# The webuis read 'model'; '{record}' is this toolkit's own record (ZTSNR etc.), ignored by them.\n")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Block mappings, flow-style lists of scalars (``[1, 2, 4]``), like the hosts' own configs."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
OMEGACONF_INTERPOLATION = "${"


@dataclass(frozen=True)
class WriteOutcome:
    """What happened to one checkpoint's YAML."""

    checkpoint: str
    yaml_path: str
    status: str
    reason: str = ""
    template: str | None = None
    backup_path: str | None = None

    @property
    def is_error(self) -> bool:
        return self.status == ERROR

    def to_dict(self) -> dict:
        return asdict(self)


def write_yaml_for_checkpoint(
    path: str | os.PathLike, result: InspectionResult | None = None, force: bool = False, dry_run: bool = False,
    only_vpred: bool = False, override_path: str | os.PathLike | None = None,
) -> WriteOutcome:
    """Inspect ``path`` (unless ``result`` is given) and write ``<stem>.yaml`` beside it.

    When forced, the existing YAML is not used as an inspection source, so regenerating follows the weights
    and the override. ``only_vpred`` skips checkpoints whose prediction is not v.
    """
    path = os.fspath(path)
    yaml_path = sidecar_yaml_path(path)
    exists = os.path.lexists(yaml_path)
    if exists and not force:
        return WriteOutcome(path, yaml_path, EXISTS, KEPT_REASON)
    if result is None:
        result = inspect_checkpoint(path, override_path, use_sidecar_yaml=False)
    skip = _skip_reason(result, only_vpred)
    if skip is not None:
        return WriteOutcome(path, yaml_path, ERROR if result.status == "error" else SKIPPED, skip)
    try:
        text, template = render_yaml(result)
    except TemplateError as exc:
        return WriteOutcome(path, yaml_path, SKIPPED, str(exc))
    if dry_run:
        if exists and (os.path.islink(yaml_path) or not os.path.isfile(yaml_path)):
            return WriteOutcome(path, yaml_path, ERROR, f"cannot replace {yaml_path}: {NOT_REPLACEABLE}", template)
        return WriteOutcome(path, yaml_path, WOULD_WRITE, "replace (backup kept)" if exists else "", template)
    return _write(path, yaml_path, text, template, force)


def _skip_reason(result: InspectionResult, only_vpred: bool) -> str | None:
    arch = result.architecture
    if not result.ok:
        return result.error or result.status
    if not arch.known:
        return f"architecture unknown: {arch.reason}"
    if arch.unet_only:
        return "UNet-only file: the webuis do not load it as a checkpoint with a YAML"
    if result.prediction not in ("v", "eps"):
        return "prediction type unknown (give an override file)"
    if only_vpred and not result.is_vpred:
        return "not a v-prediction checkpoint (--only-vpred)"
    return None


def _write(path: str, yaml_path: str, text: str, template: str, force: bool) -> WriteOutcome:
    backup = None
    try:
        if force:
            backup = replace_with_backup(yaml_path, text)
        elif not create_exclusive(yaml_path, text):
            return WriteOutcome(path, yaml_path, EXISTS, f"appeared while ours was written; {KEPT_REASON}")
    except OSError as exc:
        problem = exc.strerror or str(exc)
        logger.debug("writing %s failed: %s", yaml_path, problem)
        return WriteOutcome(path, yaml_path, ERROR, f"cannot write {yaml_path}: {problem}", template)
    return WriteOutcome(path, yaml_path, WRITTEN, "replaced (backup kept)" if backup else "", template, backup)


def render_yaml(result: InspectionResult) -> tuple[str, str]:
    """YAML text and template name for an inspected checkpoint (TemplateError when none fits)."""
    arch = result.architecture
    body, template = _render_model(arch.family, arch.variant, result.prediction, result.beta_schedule,
                                   result.linear_start, result.linear_end)
    record = {RECORD_KEY: _record(result, template)}
    name = "".join(ch if ch.isprintable() else "?" for ch in _clean(os.path.basename(result.path)))
    header = HEADER.format(generator=GENERATOR, checkpoint=name,
                           template=template, record=RECORD_KEY)
    return header + body + "\n" + _dump(record), template


@functools.lru_cache(maxsize=256)
def _render_model(family: str, variant: str, prediction: str, beta_schedule: str, start: float,
                  end: float) -> tuple[str, str]:
    config, template = build_config(family, variant, prediction, beta_schedule, start, end)
    return _dump(config), template


def _dump(data: dict) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def _record(result: InspectionResult, template: str) -> dict:
    sources = {name: _clean(f"{ref.source}: {ref.detail}") for name, ref in result.sources.items()}
    return {
        "format": RECORD_FORMAT, "generator": GENERATOR, "checkpoint": _clean(os.path.basename(result.path)),
        "architecture": result.architecture.id, "template": template, "prediction": result.prediction,
        "ztsnr": _stated_ztsnr(result), "beta_schedule": result.beta_schedule,
        "linear_start": float(result.linear_start), "linear_end": float(result.linear_end),
        "timesteps": int(result.timesteps), "sources": sources,
    }


def _stated_ztsnr(result: InspectionResult) -> bool | None:
    """The ZTSNR flag when a source states it; None (YAML null) when only the default decided it, so that reading
    the record back never turns "unknown" into "off" (the webui's own setting must still apply then)."""
    stated = result.stated_fields()
    return bool(stated["ztsnr"]) if "ztsnr" in stated else None


def _clean(text: str) -> str:
    """Keep OmegaConf from seeing an interpolation in free text taken from file names or metadata."""
    return text.replace(OMEGACONF_INTERPOLATION, "$ {")
