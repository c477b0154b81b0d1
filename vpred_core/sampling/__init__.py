"""Sampling maths, host-free and float64 where it matters.

- :mod:`.schedules`: betas, alphas_cumprod, VE sigmas, ZTSNR (Lin et al. Alg. 1), ScheduleSpec, timestep spacings.
- :mod:`.prediction`: eps / v / x0 conversions, k-diffusion scalings, closed forms at SNR 0.
- :mod:`.cfg`: classifier-free guidance and CFG rescale (Lin et al. Alg. 2) in a named space.
- :mod:`.denoiser`: k-diffusion compatible denoisers, guidance, terminal-safe first step.
- :mod:`.uncond`: what an empty negative prompt becomes.
- :mod:`.probe`: prediction type (eps / v / x0 / rectified flow) and a ZTSNR hint from three network evaluations.
"""
