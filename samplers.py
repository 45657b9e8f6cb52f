"""Fast guided samplers: diffusers' multistep ODE solvers run on our own schedule and guided eps.

A thin layer in the spirit of improved-diffusion's respace.py: the network, the guidance
((1 + omega) eps(x, y) - omega eps(x)) and the batching stay in GaussianDiffusionSampler; this
module only builds a diffusers scheduler from our betas and runs its loop on an eps predictor.

Conventions (checked against the Gaussian oracle, tests/test_fast_samplers.py): diffusers'
timesteps are 0-based indices into the same alphas_cumprod as our training, so the network is
called with them unchanged; the scheduler's betas are ours (`trained_betas`), predictions are
epsilon, nothing is clipped or thresholded inside the loop, and the last step lands on sigma = 0
(the clean image). With karras, lu and exponential spacing diffusers places the sigmas on a
continuous grid and hands the network the nearest (rounded; for exponential, truncated) integer
timestep; making each sigma that of the integer timestep instead changed the oracle's errors by
less than their step-to-step spread, so diffusers' grid is kept as it is.

diffusers is imported on first use: it takes seconds to import and only these samplers need it.
Nothing is downloaded: schedulers are built from arguments, without weights or config files.
"""
import torch

# spacing name -> diffusers scheduler flags, per solver
SOLVER_SPACINGS = {
    'dpm++2m': {
        'default': {},  # diffusers' 'linspace' timesteps
        'karras': {'use_karras_sigmas': True},
        'lu': {'use_lu_lambdas': True},  # uniform in log-SNR (Lu et al.)
        'exponential': {'use_exponential_sigmas': True},
    },
    'unipc': {
        'default': {},
        'karras': {'use_karras_sigmas': True},
        'exponential': {'use_exponential_sigmas': True},  # uniform in log sigma
    },
}
# the best spacing of each sampler on the Gaussian oracle (README, "Fast samplers")
AUTO_SPACING = {'ddpm': 'all', 'ddim': 'quad', 'dpm++2m': 'lu', 'unipc': 'exponential'}
# valid --spacing values per sampler; 'auto' is valid everywhere
SPACINGS = {
    'ddpm': ('auto',),
    'ddim': ('auto', 'quad', 'uniform'),
    'dpm++2m': ('auto',) + tuple(SOLVER_SPACINGS['dpm++2m']),
    'unipc': ('auto',) + tuple(SOLVER_SPACINGS['unipc']),
}
SAMPLERS = tuple(SPACINGS)


def resolve_spacing(sampler, spacing, skip_type='quad'):
    """The concrete spacing of `sampler` for the `spacing` argument.

    'auto' picks AUTO_SPACING, except for DDIM where it keeps the older `skip_type` (whose default
    'quad' is DDIM's best), so that flagfiles written before `spacing` existed sample as before.
    Raises ValueError for an unknown sampler or a spacing the sampler does not support.
    """
    if sampler not in SPACINGS:
        raise ValueError(f'unknown sampler {sampler!r}; one of {", ".join(SAMPLERS)}')
    if spacing not in SPACINGS[sampler]:
        raise ValueError(f'spacing {spacing!r} is not valid for sampler {sampler!r}; one of '
                         f'{", ".join(SPACINGS[sampler])}')
    if spacing != 'auto':
        return spacing
    return skip_type if sampler == 'ddim' else AUTO_SPACING[sampler]


def make_scheduler(solver, betas, spacing):
    """A diffusers scheduler for `solver` ('dpm++2m', 'unipc') on exactly `betas` (T, the
    training schedule), epsilon prediction, no clipping or thresholding, final sigma 0."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.double().numpy(),
                  prediction_type='epsilon', thresholding=False, solver_order=2,
                  final_sigmas_type='zero', **SOLVER_SPACINGS[solver][spacing])
    if solver == 'dpm++2m':
        return DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', **common)
    return UniPCMultistepScheduler(**common)


def set_timesteps(scheduler, steps):
    """Set `scheduler` up for `steps` steps; returns its timesteps (ints, non-increasing).

    A step of zero length (the sigma of the previous step again: 'default' spacing at steps = T
    rounds two steps onto one timestep) is dropped, as the multistep formulas would divide by
    zero. Karras, lu and exponential spacing may also put several steps on one integer timestep
    when `steps` is a sizeable part of T (lu from 50 steps at T = 1000), but with distinct sigmas:
    those are kept, as the solver still resolves the low-noise end better with them (measured on
    the oracle: dropping them nearly tripled the error of lu at 1000 steps).
    """
    scheduler.set_timesteps(steps)  # also resets the solver's history of earlier runs
    sigmas = scheduler.sigmas[:-1]  # the last entry is the final sigma, 0
    keep = torch.ones(len(sigmas), dtype=torch.bool)
    keep[1:] = sigmas[1:] != sigmas[:-1]
    if not keep.all():
        scheduler.timesteps = scheduler.timesteps[keep.to(scheduler.timesteps.device)]
        scheduler.sigmas = torch.cat([sigmas[keep], scheduler.sigmas[-1:]])
        scheduler.num_inference_steps = int(keep.sum())
    return scheduler.timesteps.tolist()


def solve(scheduler, steps, predict_eps, x_T, y, omega, method):
    """Run the scheduler's loop from x_T (B x C x H x W, standard normal) in `steps` steps.

    predict_eps(x_t, t, y, omega, method) -> eps (B x C x H x W float32), t a B int64 tensor of
    0-based timesteps in [0, T). Returns x_0, not clipped (B x C x H x W float32).
    """
    timesteps = set_timesteps(scheduler, steps)
    x_t = x_T * scheduler.init_noise_sigma
    for time_step in timesteps:
        t = torch.full((x_T.shape[0],), time_step, dtype=torch.long, device=x_T.device)
        eps = predict_eps(x_t, t, y, omega, method)
        x_t = scheduler.step(eps, time_step, x_t).prev_sample
    return x_t
