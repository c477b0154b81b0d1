"""A1111 model object reused for another checkpoint mid-request (host-free part of a1111_model)."""

import types

import torch

from a1111_extension import a1111_model

HOST_ABAR = torch.linspace(0.99, 0.01, 5)
PLAN_ABAR = torch.linspace(0.99, 0.0, 5)
OWN_ABAR = torch.linspace(0.98, 0.02, 5)


def _patched_model(current_abar):
    model = types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename="second"),
                                  alphas_cumprod=current_abar, alphas_cumprod_original=current_abar,
                                  parameterization="v")
    saved = a1111_model.SavedSchedule("first", HOST_ABAR, HOST_ABAR, "eps", installed=PLAN_ABAR.clone())
    setattr(model, a1111_model.SAVED_ATTR, saved)
    return model


def test_leaked_plan_is_put_back():
    model = _patched_model(PLAN_ABAR.clone())
    a1111_model.on_model_loaded(model)
    assert model.parameterization == "eps" and torch.equal(model.alphas_cumprod_original, HOST_ABAR)
    assert not hasattr(model, a1111_model.SAVED_ATTR)


def test_state_dict_alphas_are_kept():
    model = _patched_model(OWN_ABAR)
    a1111_model.on_model_loaded(model)
    assert model.parameterization == "eps" and torch.equal(model.alphas_cumprod_original, OWN_ABAR)


def test_same_checkpoint_is_left_alone():
    model = _patched_model(PLAN_ABAR.clone())
    model.sd_checkpoint_info.filename = "first"  # e.g. a VAE reload fires the same callback
    a1111_model.on_model_loaded(model)
    assert model.parameterization == "v" and hasattr(model, a1111_model.SAVED_ATTR)
