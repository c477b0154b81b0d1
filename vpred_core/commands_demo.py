"""``python -m vpred_core demo``: the built-in demonstration (see :mod:`vpred_core.demo`)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT = "vpred_demo.png"


def register(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser("demo", help="sample the oracle model: flawed vs v-pred + ZTSNR + trailing")
    parser.add_argument("--samples", type=int, default=16, help="samples per case (even; antithetic pairs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="euler", help="k-diffusion sampler name without 'sample_'")
    parser.add_argument("--out", default=DEFAULT_OUTPUT, help="PNG path for the labelled sample grid")
    parser.set_defaults(handler=run)


def run(args) -> int:
    """Run the demo, print the table, write the PNG."""
    from .demo import format_table, run_demo
    from .demo_image import render_grid

    results = run_demo(args.samples, args.steps, args.seed, args.sampler)
    print(format_table(results))
    render_grid(results, Path(args.out))
    print(f"wrote {Path(args.out).resolve()}")
    return 0
