"""ComfyUI side of the v-pred / ZTSNR pack.

- :mod:`.comfy_nodes`: the node classes on ComfyUI's V3 schema (``comfy_api.v0_0_2``) and the extension the root
  ``comfy_entrypoint`` returns; imported only inside ComfyUI.
- Host-free glue, importable (and tested) without ComfyUI, which each node's ``execute`` calls; ComfyUI is imported
  lazily inside functions: :mod:`.model_sampling` (what a MODEL is, the core's resolution, the model_sampling
  objects incl. the exact terminal), :mod:`.first_step` (the terminal-safe first step as a sampler wrapper),
  :mod:`.trailing_schedule`, :mod:`.cfg_rescale`, :mod:`.uncond`, :mod:`.loader`.
"""
