"""Webui (A1111 1.8+ / reForge / Forge) glue of the v-pred / ZTSNR toolkit; decisions and maths come from
``vpred_core`` (one decision path: ``vpred_core.settings``).

- :mod:`.request`: the request lifecycle (the Script's hooks, per-request state on ``p``, undo, callbacks).
- :mod:`.ui`: the accordion, settings, infotext and paste-back, XYZ axes, API arguments.
- :mod:`.a1111`: A1111's ldm / sgm model objects (alphas_cumprod, parameterization, the global ZTSNR setting).
- :mod:`.forge`: reForge / Forge backends (unet patcher clone, model_sampling / predictor patch, post-cfg rescale).
- :mod:`.samplers`: each pass's sampler object: trailing spacing, terminal-safe first step.
- :mod:`.guidance`: CFG rescale on the webuis' CFG layouts and the empty-negative modes.
- :mod:`.checkpoints`: what the checkpoint files state (cached per source) and the crafted YAML beside them.

The package is loaded by ``scripts/vpred_ztsnr.py`` as part of the repository package ``vpred_ztsnr_toolkit``
(relative imports only); importing it never imports a host module (they are imported where used).
"""
