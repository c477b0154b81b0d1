"""Sample a plain eps model with every sampler x scheduler ComfyUI lists, for the bit-identity host test.

Run as a script (``python host_alone_run.py OUT.pt`` with COMFYUI_PATH set) it starts ComfyUI's node registry
without any custom node and saves {"sampler/scheduler": latent}; the test imports :func:`sample_all` and runs the
same sampling in its own process, where the pack is loaded, then compares bit for bit.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import torch

STEPS = 3
CFG = 5.0
SEED = 11
LATENT_SHAPE = (1, 4, 8, 8)
THREADS = 1  # the same in both processes: reductions then run in the same order


def sample_all(nodes, schedulers=None) -> dict[str, torch.Tensor]:
    """{"sampler/scheduler": samples} for every sampler and (given or host-listed) scheduler, tiny eps SD1.5 model."""
    import comfy.samplers
    import tiny_model

    torch.set_num_threads(THREADS)
    model = tiny_model.tiny_sd15_model()
    positive, negative = tiny_model.tiny_conditioning(seed=1), tiny_model.tiny_conditioning(seed=2)
    latent = {"samples": torch.zeros(LATENT_SHAPE)}
    out = {}
    for scheduler in schedulers or list(comfy.samplers.KSampler.SCHEDULERS):
        for sampler in comfy.samplers.KSampler.SAMPLERS:
            out[f"{sampler}/{scheduler}"] = nodes.common_ksampler(model, SEED, STEPS, CFG, sampler, scheduler,
                                                                  positive, negative, latent)[0]["samples"].clone()
    return out


def main(path: str) -> None:
    root = os.environ["COMFYUI_PATH"]
    sys.path.insert(0, root)
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    from comfy.cli_args import args

    args.cpu = True
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    torch.save(sample_all(nodes), path)


if __name__ == "__main__":
    main(sys.argv[1])
