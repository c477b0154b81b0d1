"""Command line and demo: ``python -m vpred_core`` (:mod:`.main`), the oracle demo (:mod:`.demo`, :mod:`.oracle`) and
the loader of k-diffusion's real samplers (:mod:`.kdiffusion`). Neither host imports this package."""
