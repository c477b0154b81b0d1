"""Uncond modes and settings/infotext round trip."""

import math

import pytest
import torch

from vpred_core.sampling.uncond import (
    SDXL_POOLED_DIM,
    UNCOND_MODE_IDS,
    negative_text_for_mode,
    should_zero_uncond,
    zero_sdxl_vector,
)
from vpred_core.settings import (
    CfgRescaleSettings,
    ModelSamplingSettings,
    PackSettings,
    SamplingSettings,
    UncondSettings,
    from_infotext,
    to_infotext,
)

SDXL_VECTOR_DIM = 2816  # 1280 pooled CLIP-G + 6 * 256 size/crop/target embeddings


def test_mode_ids_are_stable():
    assert UNCOND_MODE_IDS == ("host_default", "zero", "comma")


@pytest.mark.parametrize("text,mode,expected,zero", [
    ("", "comma", ",", False), ("  ", "comma", ",", False), ("", "zero", "", True), ("", "host_default", "", False),
    ("blurry", "comma", "blurry", False), ("blurry", "zero", "blurry", False), (None, "host_default", "", False),
])
def test_negative_text(text, mode, expected, zero):
    assert negative_text_for_mode(text, mode) == expected
    assert should_zero_uncond(text, mode) is zero


def test_zero_sdxl_vector_keeps_size_embeddings():
    vector = torch.randn(2, SDXL_VECTOR_DIM)
    out = zero_sdxl_vector(vector)
    assert bool((out[:, :SDXL_POOLED_DIM] == 0).all())
    assert torch.equal(out[:, SDXL_POOLED_DIM:], vector[:, SDXL_POOLED_DIM:])
    assert not bool((vector[:, :SDXL_POOLED_DIM] == 0).all())  # input untouched
    with pytest.raises(ValueError):
        zero_sdxl_vector(torch.zeros(1, 768))


def test_infotext_round_trip_all_fields():
    settings = PackSettings(
        ModelSamplingSettings("v", "on", "scaled_linear", 0.00085, 0.024, 1000, "exact"),
        SamplingSettings("linspace", "ddim"),
        CfgRescaleSettings(0.7, "x0", 14.6, 0.5),
        UncondSettings("comma"),
    )
    text = to_infotext(settings)
    assert all(key.startswith("VPred ") for key in text)
    assert from_infotext(text) == settings
    assert from_infotext({}) == PackSettings()
    assert math.isinf(from_infotext(to_infotext(PackSettings())).cfg_rescale.sigma_high)


@pytest.mark.parametrize("key,value", [("VPred CFG rescale", "1.5"), ("VPred CFG rescale", "lots"),
                                       ("VPred uncond", "empty"), ("VPred ZTSNR", "yes"), ("VPred timesteps", "1e3")])
def test_infotext_bad_values_name_the_problem(key, value):
    with pytest.raises(ValueError, match="infotext"):
        from_infotext({key: value})


def test_frozen():
    with pytest.raises(AttributeError):
        PackSettings().uncond.mode = "zero"
