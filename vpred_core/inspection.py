"""Inspect a checkpoint's inference settings from its header alone, and say where each setting came from.

Entry point: :func:`inspect_checkpoint`. Precedence (highest first) is :data:`SOURCE_PRECEDENCE`:
override file > state-dict marker keys > ``modelspec.prediction_type`` > kohya ``ss_*`` >
ComfyUI ``modelspec.predict_key`` > sidecar ``<checkpoint>.yaml`` > defaults. Every lower source that
disagrees with the winner is reported in ``conflicts`` and ``warnings``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

from .architecture import Architecture, detect_architecture
from .inspect_sources import (
    FIELDS,
    SOURCE_PRECEDENCE,
    SRC_DEFAULT,
    SRC_NONE,
    UNSTATED_SOURCES,
    Claim,
    claims_from_keys,
    claims_from_metadata,
    claims_from_yaml,
    load_override,
)
from .pickle_listing import PickleListingError, list_torch_checkpoint
from .safetensors_header import HeaderError, read_header
from .schedules import NUM_TRAIN_TIMESTEPS, SD_LINEAR_END, SD_LINEAR_START
from .yaml_record import sidecar_yaml_path

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
STATUS_OK, STATUS_UNSUPPORTED, STATUS_ERROR = "ok", "unsupported", "error"
PREDICTION_UNKNOWN = "unknown"
STATED_PREDICTIONS = ("v", "eps")
PICKLE_LISTING_FORMAT = "torch zip (listed from the pickle opcodes, never unpickled)"
DEFAULT_BETA_SCHEDULE = "scaled_linear"
FLOAT_REL_TOL = 1e-9
# Families whose weights say nothing about the prediction type: no default is guessed for them.
NO_PREDICTION_DEFAULT = frozenset({"sd2", "unknown"})


@dataclass(frozen=True)
class SourceRef:
    source: str
    detail: str


@dataclass
class InspectionResult:
    """Inference settings of one checkpoint; ``sources[field]`` says which source decided each field."""

    path: str
    status: str = STATUS_OK
    file_format: str = "safetensors"
    prediction: str = PREDICTION_UNKNOWN
    ztsnr: bool = False
    beta_schedule: str = DEFAULT_BETA_SCHEDULE
    linear_start: float = SD_LINEAR_START
    linear_end: float = SD_LINEAR_END
    timesteps: int = NUM_TRAIN_TIMESTEPS
    architecture: Architecture = field(default_factory=Architecture)
    sources: dict[str, SourceRef] = field(default_factory=dict)
    conflicts: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    tensor_count: int = 0
    sidecar_yaml: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def is_vpred(self) -> bool:
        return self.prediction == "v"

    def stated_fields(self) -> dict[str, object]:
        """{field: value} for the fields the file itself (or an override / sidecar YAML) states; fields decided
        only by defaults, and everything of a file that could not be inspected, are left out."""
        if not self.ok:
            return {}
        stated = {name: getattr(self, name) for name, ref in self.sources.items()
                  if ref.source not in UNSTATED_SOURCES}
        if stated.get("prediction") not in STATED_PREDICTIONS:
            stated.pop("prediction", None)
        return stated

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["architecture"] = self.architecture.to_dict()
        data["sources"] = {name: {"source": ref.source, "detail": ref.detail} for name, ref in self.sources.items()}
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


def inspect_checkpoint(
    path: str | os.PathLike, override_path: str | os.PathLike | None = None, use_sidecar_yaml: bool = True
) -> InspectionResult:
    """Inspect ``path`` without loading tensors. Never raises for a bad checkpoint: ``status``/``error`` say why.

    ``override_path`` is a YAML/JSON file of fields (prediction, ztsnr, beta_schedule, linear_start, linear_end)
    that win over everything; a malformed override raises ValueError (it is the caller's own input).
    ``use_sidecar_yaml=False`` ignores an existing ``<checkpoint>.yaml`` (used when regenerating it).
    """
    path = os.fspath(path)
    override = load_override(override_path) if override_path is not None else []
    result = InspectionResult(path)
    tensors = _read_tensor_listing(path, result)
    if tensors is None:
        return result
    result.tensor_count = len(tensors)
    result.architecture = detect_architecture(tensors.shape, tensors.names)
    claims = [*override, *claims_from_keys(tensors.__contains__)]
    meta_claims, warnings = claims_from_metadata(getattr(tensors, "metadata", {}))
    claims += meta_claims
    result.warnings += warnings
    yaml_path = sidecar_yaml_path(path)
    if use_sidecar_yaml and os.path.isfile(yaml_path):
        result.sidecar_yaml = yaml_path
        yaml_claims, warnings = claims_from_yaml(yaml_path)
        claims += yaml_claims
        result.warnings += warnings
    claims += _default_claims(result.architecture)
    _resolve(result, claims)
    _sanity_warnings(result)
    return result


def _read_tensor_listing(path: str, result: InspectionResult):
    """Safetensors header, or a torch zip pickle listed without unpickling; None (status set) on failure."""
    if path.lower().endswith(PICKLE_SUFFIXES):
        result.file_format = PICKLE_LISTING_FORMAT
        try:
            return list_torch_checkpoint(path)
        except PickleListingError as exc:
            result.status, result.file_format = STATUS_UNSUPPORTED, "pickle"
            result.error = f"pickle checkpoint: cannot inspect safely ({exc.problem}); it is never unpickled"
            return None
    try:
        return read_header(path)
    except HeaderError as exc:
        result.status, result.error = STATUS_ERROR, str(exc)
        return None


def _default_claims(arch: Architecture) -> list[Claim]:
    claims = [
        Claim("ztsnr", False, SRC_DEFAULT, "no source states ZTSNR"),
        Claim("beta_schedule", DEFAULT_BETA_SCHEDULE, SRC_DEFAULT, "Stable Diffusion default"),
        Claim("linear_start", SD_LINEAR_START, SRC_DEFAULT, "Stable Diffusion default"),
        Claim("linear_end", SD_LINEAR_END, SRC_DEFAULT, "Stable Diffusion default"),
    ]
    if arch.family not in NO_PREDICTION_DEFAULT:
        claims.append(Claim("prediction", "eps", SRC_DEFAULT, f"{arch.description}: host default eps"))
    return claims


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=FLOAT_REL_TOL)
    return a == b


def _resolve(result: InspectionResult, claims: list[Claim]) -> None:
    rank = {source: index for index, source in enumerate(SOURCE_PRECEDENCE)}
    for name in FIELDS:
        ranked = sorted((c for c in claims if c.field == name), key=lambda c: rank[c.source])
        if not ranked:
            result.sources[name] = SourceRef(SRC_NONE, "no source states it")
            continue
        winner = ranked[0]
        setattr(result, name, winner.value)
        result.sources[name] = SourceRef(winner.source, winner.detail)
        for loser in ranked[1:]:
            if loser.source != SRC_DEFAULT and not _same(loser.value, winner.value):
                result.conflicts.append({"field": name, "used": winner.value, "used_source": winner.source,
                                         "ignored": loser.value, "ignored_source": loser.source,
                                         "ignored_detail": loser.detail})
                result.warnings.append(f"{name}: {loser.detail} says {loser.value!r}; using {winner.value!r} "
                                       f"from {winner.detail}")


def _sanity_warnings(result: InspectionResult) -> None:
    arch = result.architecture
    if not arch.known:
        result.warnings.append(f"architecture unknown: {arch.reason}")
    elif arch.reason:
        result.warnings.append(arch.reason)
    if result.prediction == PREDICTION_UNKNOWN and arch.family == "sd2":
        result.warnings.append("SD2.x weights do not tell 512 eps from 768-v; give an override or a YAML")
    if result.ztsnr and result.prediction == "eps":
        result.warnings.append("ZTSNR with eps prediction cannot be sampled at the terminal timestep")
    if not 0.0 < result.linear_start < result.linear_end < 1.0:
        result.warnings.append(f"implausible betas linear_start={result.linear_start} linear_end={result.linear_end}")
