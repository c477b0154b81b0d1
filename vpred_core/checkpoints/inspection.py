"""What a checkpoint states about its inference settings, read from its header alone, with the source of each.

Entry point: :func:`inspect_checkpoint`. One reader per source turns what it finds into :class:`Claim` s ("field F
has value X according to source S"); the claims are resolved with :data:`SOURCE_PRECEDENCE` (highest first):
override file > state-dict marker keys > ``modelspec.prediction_type`` > kohya ``ss_*`` > ComfyUI
``modelspec.predict_key`` > the toolkit's ``vpred_toolkit.linear_end`` > sidecar ``<checkpoint>.yaml`` > defaults.
Every lower source that disagrees with the winner is reported in ``conflicts`` and ``warnings``.

The sidecar YAML is read safely (bounded size, ``yaml`` safe loader). No webui YAML field expresses zero terminal
SNR, so the toolkit's own generated files carry a top-level ``vpred_toolkit:`` record (see ``yaml_configs/README.md``),
which the webuis ignore (they instantiate ``config.model``) and which is read back here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import yaml

from ..sampling.schedules import NUM_TRAIN_TIMESTEPS, SD_LINEAR_END, SD_LINEAR_START
from . import open_regular_file
from .architecture import Architecture, detect_architecture
from .host_keys import (
    KOHYA_V_PARAM,
    KOHYA_ZTSNR,
    MARKER_V_PRED,
    MARKER_ZTSNR,
    MODELSPEC_PREDICT_KEY,
    MODELSPEC_PREDICTION_TYPE,
    TOOLKIT_LINEAR_END,
    sidecar_yaml_path,
)
from .safetensors_header import HeaderError, read_header
from .torch_pickle import PickleListingError, list_torch_checkpoint

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


def file_state(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None when it does not exist (a missing file is a state of a source too)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def sources_state(path: str | os.PathLike) -> tuple:
    """The state of everything :func:`inspect_checkpoint` reads for ``path`` (without an override file): the
    checkpoint and the YAML beside it. A cache keyed on it sees a YAML added, edited or removed later."""
    return file_state(path), file_state(sidecar_yaml_path(path))


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


FIELDS = ("prediction", "ztsnr", "beta_schedule", "linear_start", "linear_end")
SRC_OVERRIDE = "override"
SRC_KEYS = "state_dict_keys"
SRC_MODELSPEC = "modelspec.prediction_type"
SRC_KOHYA = "kohya_metadata"
SRC_PREDICT_KEY = "modelspec.predict_key"
SRC_TOOLKIT_METADATA = "toolkit_metadata"  # vpred_toolkit.* metadata written by ``stamp --beta-end``
SRC_YAML = "sidecar_yaml"
SRC_DEFAULT = "default"
SRC_NONE = "none"  # no source states the field (no default either)
UNSTATED_SOURCES = (SRC_DEFAULT, SRC_NONE)
# Highest first. Explicit user intent, then what the weights carry (marker keys, then metadata written by
# trainers, then ComfyUI's save-time note), then the sidecar YAML (a derived, often copied, file), then defaults.
SOURCE_PRECEDENCE = (SRC_OVERRIDE, SRC_KEYS, SRC_MODELSPEC, SRC_KOHYA, SRC_PREDICT_KEY, SRC_TOOLKIT_METADATA,
                     SRC_YAML, SRC_DEFAULT)

VSCALING_SUFFIX = ".VScaling"
EPSSCALING_SUFFIX = ".EpsScaling"
# ldm's make_beta_schedule names -> our BETA_SCHEDULE_IDS ("linear" in ldm is sqrt-linear squared).
LDM_BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
OVERRIDE_BETA_SCHEDULES = ("scaled_linear", "linear", "cosine")


@dataclass(frozen=True)
class Claim:
    field: str
    value: object
    source: str
    detail: str


def claims_from_keys(has_key) -> list[Claim]:
    """Marker tensors ``v_pred`` / ``ztsnr`` (empty tensors added by ComfyUI and trainers)."""
    claims = []
    if has_key(MARKER_V_PRED):
        claims.append(Claim("prediction", "v", SRC_KEYS, f"tensor '{MARKER_V_PRED}' present"))
    if has_key(MARKER_ZTSNR):
        claims.append(Claim("ztsnr", True, SRC_KEYS, f"tensor '{MARKER_ZTSNR}' present"))
    return claims


def claims_from_metadata(meta: dict[str, str]) -> tuple[list[Claim], list[str]]:
    """``modelspec.prediction_type``, kohya ``ss_*``, ComfyUI ``modelspec.predict_key`` and the toolkit's
    ``vpred_toolkit.linear_end``; returns warnings too."""
    claims: list[Claim] = []
    warnings: list[str] = []
    for key, source in ((MODELSPEC_PREDICTION_TYPE, SRC_MODELSPEC), (MODELSPEC_PREDICT_KEY, SRC_PREDICT_KEY)):
        if key in meta:
            _prediction_claim(claims, warnings, meta[key], source, f"__metadata__['{key}'] = {meta[key]!r}")
    for key, field_name in ((KOHYA_V_PARAM, "prediction"), (KOHYA_ZTSNR, "ztsnr")):
        if key not in meta:
            continue
        flag = parse_bool(meta[key])
        detail = f"__metadata__['{key}'] = {meta[key]!r}"
        if flag is None:
            warnings.append(f"ignored {detail}: not a boolean")
        elif field_name == "prediction":
            claims.append(Claim("prediction", "v" if flag else "eps", SRC_KOHYA, detail))
        else:
            claims.append(Claim("ztsnr", flag, SRC_KOHYA, detail))
    if TOOLKIT_LINEAR_END in meta:
        _linear_end_claim(claims, warnings, meta[TOOLKIT_LINEAR_END])
    return claims, warnings


def _linear_end_claim(claims: list[Claim], warnings: list[str], value: str) -> None:
    detail = f"__metadata__['{TOOLKIT_LINEAR_END}'] = {value!r}"
    try:
        linear_end = float(value)
    except ValueError:
        linear_end = math.nan
    if not 0.0 < linear_end < 1.0:
        warnings.append(f"ignored {detail}: not a number in (0, 1)")
        return
    claims.append(Claim("linear_end", linear_end, SRC_TOOLKIT_METADATA, detail))


def _prediction_claim(claims: list[Claim], warnings: list[str], value: str, source: str, detail: str) -> None:
    parsed = parse_prediction(value)
    if parsed is None:
        warnings.append(f"ignored {detail}: unknown prediction type")
        return
    prediction, ztsnr = parsed
    claims.append(Claim("prediction", prediction, source, detail))
    if ztsnr is not None:
        claims.append(Claim("ztsnr", ztsnr, source, detail))


PROBE_RECORD_PREFIX = "probe"  # vpred_core.settings.PROBE_SOURCE, as the webui records it in the YAML's sources


def claims_from_yaml(path: str | os.PathLike) -> tuple[list[Claim], list[str]]:
    """A webui config beside the checkpoint: parameterization / VScaling, betas, and our ``vpred_toolkit`` record."""
    try:
        config = load_yaml_mapping(path)
    except YamlReadError as exc:
        return [], [f"sidecar YAML ignored: {exc}"]
    where = os.path.basename(os.fspath(path))
    params = _mapping(_mapping(config.get("model")).get("params"))
    claims: list[Claim] = []
    scaling = _mapping(_mapping(_mapping(params.get("denoiser_config")).get("params")).get("scaling_config"))
    target = scaling.get("target")
    if isinstance(target, str) and target.endswith((VSCALING_SUFFIX, EPSSCALING_SUFFIX)):
        value = "v" if target.endswith(VSCALING_SUFFIX) else "eps"
        claims.append(Claim("prediction", value, SRC_YAML, f"{where}: scaling_config.target {target}"))
    elif "parameterization" in params:
        parsed = parse_prediction(params["parameterization"])
        if parsed is not None:
            claims.append(Claim("prediction", parsed[0], SRC_YAML, f"{where}: parameterization {parsed[0]!r}"))
    elif params.get("unet_config") is not None:
        claims.append(Claim("prediction", "eps", SRC_YAML, f"{where}: no parameterization (ldm default eps)"))
    _schedule_claims(claims, params, where)
    record = config.get(RECORD_KEY)
    if isinstance(record, dict) and parse_bool(record.get("ztsnr")) is not None:
        claims.append(Claim("ztsnr", parse_bool(record["ztsnr"]), SRC_YAML, f"{where}: {RECORD_KEY}.ztsnr"))
    return [_with_recorded_origin(claim, record) for claim in claims], []


def _with_recorded_origin(claim: Claim, record: object) -> Claim:
    """A claim of a YAML this toolkit wrote from a weight probe says so (its record keeps each field's source), so
    ``inspect`` shows that a probe result is cached in that file."""
    sources = _mapping(_mapping(record).get("sources"))
    origin = sources.get(claim.field)
    if isinstance(origin, str) and origin.startswith(PROBE_RECORD_PREFIX):
        return Claim(claim.field, claim.value, claim.source, f"{claim.detail} (recorded from a weight {origin})")
    return claim


def _schedule_claims(claims: list[Claim], params: dict, where: str) -> None:
    discretization = _mapping(_mapping(_mapping(params.get("denoiser_config")).get("params"))
                              .get("discretization_config")).get("params")
    for holder, label in ((params, "model.params"), (_mapping(discretization), "discretization_config.params")):
        for key in ("linear_start", "linear_end"):
            value = as_float(holder.get(key))
            if value is not None:
                claims.append(Claim(key, value, SRC_YAML, f"{where}: {label}.{key}"))
    schedule = params.get("beta_schedule")
    if schedule in LDM_BETA_SCHEDULES:
        claims.append(Claim("beta_schedule", LDM_BETA_SCHEDULES[schedule], SRC_YAML, f"{where}: beta_schedule"))


def as_float(value: object) -> float | None:
    """A YAML/JSON number as a float; None for anything else (bools, strings, ints too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def load_override(path: str | os.PathLike) -> list[Claim]:
    """User override file (YAML or JSON mapping of FIELDS); ValueError naming the file on any bad entry."""
    path = os.fspath(path)
    doc = load_yaml_mapping(path)
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown override keys {unknown}; allowed: {list(FIELDS)}")
    claims = []
    detail = os.path.basename(path)
    for key, raw in doc.items():
        claims.extend(_override_claims(path, key, raw, detail))
    return claims


def _override_claims(path: str, key: str, raw: object, detail: str) -> list[Claim]:
    if key == "prediction":
        parsed = parse_prediction(raw)
        if parsed is None:
            raise ValueError(f"{path}: prediction must be eps/epsilon/v/v-zsnr, got {raw!r}")
        ztsnr = [] if parsed[1] is None else [Claim("ztsnr", True, SRC_OVERRIDE, f"{detail}: prediction {raw}")]
        return [Claim("prediction", parsed[0], SRC_OVERRIDE, f"{detail}: prediction"), *ztsnr]
    if key == "ztsnr":
        flag = parse_bool(raw)
        if flag is None:
            raise ValueError(f"{path}: ztsnr must be true or false, got {raw!r}")
        return [Claim("ztsnr", flag, SRC_OVERRIDE, f"{detail}: ztsnr")]
    if key == "beta_schedule":
        if raw not in OVERRIDE_BETA_SCHEDULES:
            raise ValueError(f"{path}: beta_schedule must be one of {OVERRIDE_BETA_SCHEDULES}, got {raw!r}")
        return [Claim(key, raw, SRC_OVERRIDE, f"{detail}: beta_schedule")]
    value = as_float(raw)
    if value is None or not 0.0 < value < 1.0:
        raise ValueError(f"{path}: {key} must be a number in (0, 1), got {raw!r}")
    return [Claim(key, value, SRC_OVERRIDE, f"{detail}: {key}")]


RECORD_KEY = "vpred_toolkit"
RECORD_FORMAT = 1
# Ours for SDXL: 3,750 bytes (the largest config in the hosts' trees: 5,520). 32 KiB = 8.7x (5.9x). YAML costs
# up to ~230 bytes of memory and ~4 us of CPU per byte (a flow list of empty lists, measured): <= ~8 MiB, ~0.2 s.
MAX_YAML_BYTES = 32 * 2**10
PREDICTION_ALIASES = {
    "eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v", "v-prediction": "v", "vpred": "v",
    "v-zsnr": "v", "v_zsnr": "v",
}
ZTSNR_PREDICTIONS = frozenset({"v-zsnr", "v_zsnr"})
TRUE_STRINGS = frozenset({"true", "1", "yes", "on"})
FALSE_STRINGS = frozenset({"false", "0", "no", "off"})
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when available (10x faster)


class YamlReadError(ValueError):
    """A YAML file could not be read or is not a mapping."""


def load_yaml_mapping(path: str | os.PathLike, max_bytes: int = MAX_YAML_BYTES) -> dict:
    """``yaml.safe_load`` a bounded-size file that must hold a mapping; YamlReadError names file and problem."""
    path = os.fspath(path)
    try:
        with open_regular_file(path) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise YamlReadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise YamlReadError(f"{path}: larger than {max_bytes} bytes (MAX_YAML_BYTES), not read")
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise YamlReadError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
    except RecursionError:  # PyYAML's pure-Python composer when libyaml is missing
        raise YamlReadError(f"{path}: YAML nested too deeply") from None
    if not isinstance(doc, dict):
        raise YamlReadError(f"{path}: top level is not a mapping")
    return doc


def read_record(config: dict | str | os.PathLike) -> dict | None:
    """The ``vpred_toolkit`` mapping of a loaded config or YAML path, or None when absent/invalid."""
    if not isinstance(config, dict):
        try:
            config = load_yaml_mapping(config)
        except YamlReadError:
            return None
    record = config.get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def read_ztsnr_from_yaml(config: dict | str | os.PathLike) -> bool | None:
    """ZTSNR flag recorded by this toolkit in a YAML (path or loaded mapping); None when not recorded."""
    record = read_record(config)
    return None if record is None else parse_bool(record.get("ztsnr"))


def parse_bool(value: object) -> bool | None:
    """Lenient bool from YAML/metadata values (``True``, ``"true"``, ``"1"``...); None when not a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_STRINGS:
            return True
        if lowered in FALSE_STRINGS:
            return False
    return None


def parse_prediction(value: object) -> tuple[str, bool | None] | None:
    """``"v-zsnr"`` -> ("v", True); ``"epsilon"`` -> ("eps", None); unknown -> None."""
    if not isinstance(value, str):
        return None
    lowered = value.strip().lower()
    if lowered not in PREDICTION_ALIASES:
        return None
    return PREDICTION_ALIASES[lowered], (True if lowered in ZTSNR_PREDICTIONS else None)
