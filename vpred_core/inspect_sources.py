"""Claims about a checkpoint's inference settings, one reader per source.

A :class:`Claim` says "field F has value X according to source S (detail)". :mod:`.inspection` resolves the
claims with :data:`SOURCE_PRECEDENCE` and reports the disagreements.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .yaml_record import RECORD_KEY, YamlReadError, load_yaml_mapping, parse_bool, parse_prediction

FIELDS = ("prediction", "ztsnr", "beta_schedule", "linear_start", "linear_end")
SRC_OVERRIDE = "override"
SRC_KEYS = "state_dict_keys"
SRC_MODELSPEC = "modelspec.prediction_type"
SRC_KOHYA = "kohya_metadata"
SRC_PREDICT_KEY = "modelspec.predict_key"
SRC_YAML = "sidecar_yaml"
SRC_DEFAULT = "default"
SRC_NONE = "none"  # no source states the field (no default either)
UNSTATED_SOURCES = (SRC_DEFAULT, SRC_NONE)
# Highest first. Explicit user intent, then what the weights carry (marker keys, then metadata written by
# trainers, then ComfyUI's save-time note), then the sidecar YAML (a derived, often copied, file), then defaults.
SOURCE_PRECEDENCE = (SRC_OVERRIDE, SRC_KEYS, SRC_MODELSPEC, SRC_KOHYA, SRC_PREDICT_KEY, SRC_YAML, SRC_DEFAULT)

MARKER_V_PRED = "v_pred"
MARKER_ZTSNR = "ztsnr"
KOHYA_V_PARAM = "ss_v_parameterization"
KOHYA_ZTSNR = "ss_zero_terminal_snr"
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
    """``modelspec.prediction_type``, kohya ``ss_*`` and ComfyUI ``modelspec.predict_key``; returns warnings too."""
    claims: list[Claim] = []
    warnings: list[str] = []
    for key, source in ((SRC_MODELSPEC, SRC_MODELSPEC), (SRC_PREDICT_KEY, SRC_PREDICT_KEY)):
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
    return claims, warnings


def _prediction_claim(claims: list[Claim], warnings: list[str], value: str, source: str, detail: str) -> None:
    parsed = parse_prediction(value)
    if parsed is None:
        warnings.append(f"ignored {detail}: unknown prediction type")
        return
    prediction, ztsnr = parsed
    claims.append(Claim("prediction", prediction, source, detail))
    if ztsnr is not None:
        claims.append(Claim("ztsnr", ztsnr, source, detail))


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
    return claims, []


def _schedule_claims(claims: list[Claim], params: dict, where: str) -> None:
    discretization = _mapping(_mapping(_mapping(params.get("denoiser_config")).get("params"))
                              .get("discretization_config")).get("params")
    for holder, label in ((params, "model.params"), (_mapping(discretization), "discretization_config.params")):
        for key in ("linear_start", "linear_end"):
            value = holder.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                claims.append(Claim(key, float(value), SRC_YAML, f"{where}: {label}.{key}"))
    schedule = params.get("beta_schedule")
    if schedule in LDM_BETA_SCHEDULES:
        claims.append(Claim("beta_schedule", LDM_BETA_SCHEDULES[schedule], SRC_YAML, f"{where}: beta_schedule"))


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
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 < float(raw) < 1.0:
        raise ValueError(f"{path}: {key} must be a number in (0, 1), got {raw!r}")
    return [Claim(key, float(raw), SRC_OVERRIDE, f"{detail}: {key}")]
