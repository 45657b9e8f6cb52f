"""Sampler settings, per-image noise and diffusers' multistep solvers on our schedule.

What the sampler of diffusion.py builds on:

- Settings: which sampler, steps, spacing, eta and clipping a use gets. `USE_DEFAULTS` holds the
  default of each use (--eval, the training grids, --sample, --classify's generated sets) for an
  unset --sampler / --clip_denoised; `--sampler auto` stands for `RECOMMENDED` (images to look
  at and to score) or `RECOMMENDED_SYNTHETIC` (generated training sets), `recommended(use)`
  says which; `resolve` turns the flags and a use into one `SamplerSettings`,
  `default_settings(use)` is what a use draws with when no sampler flag is given. This is the
  only place that decides a use's default: factory.sampler_settings and evaluation's file names
  read it from here.
- Noise: `ImageNoise` draws x_T and every step's noise image by image, each image from its own
  torch.Generator seeded from (seed, global image index), so that a sample is a pure function of
  (seed, index, label, settings), whatever the batch size or the batch it falls in.
- Timesteps: every run starts at the noise level of its x: a full run at T - 1 (where x_T is
  drawn), an SDEdit start at t (a translation) at t, with the sampler's schedule over [0, t] in
  the same number of steps: the full run of a model of t + 1 steps whose noise levels are our
  first t + 1 (`ddim_timesteps`, `respaced_scheduler`).
- Solvers: a thin layer in the spirit of improved-diffusion's respace.py. The network, the
  guidance ((1 + omega) eps(x, y) - omega eps(x)) and the batching stay in
  GaussianDiffusionSampler; this module builds a diffusers scheduler from our betas and runs its
  loop on an eps predictor.

Solver conventions (checked against the Gaussian oracle, tests/test_fast_samplers.py):
diffusers' timesteps are 0-based indices into the same alphas_cumprod as our training, so the
network is called with them unchanged; the scheduler's betas are ours (`trained_betas`),
predictions are epsilon, and the last step lands on sigma = 0 (the clean image). With karras, lu
and exponential spacing diffusers places the sigmas on a continuous grid and hands the network
the nearest (rounded; for exponential, truncated) integer timestep; making each sigma that of the
integer timestep instead changed the oracle's errors by less than their step-to-step spread, so
diffusers' grid is kept as it is.

Clipping (`clip_denoised`) uses diffusers' `thresholding=True, sample_max_value=1.0`. In diffusers
0.42 `_threshold_sample` computes s = quantile(|x0|, 0.995) per image, clamps s to
[1, sample_max_value] = [1, 1], so s = 1, and returns clamp(x0, -s, s) / s: exactly x0 clipped to
[-1, 1]. DPM-Solver++ ('dpmsolver++' and 'sde-dpmsolver++') applies it to its data prediction
x0 in `convert_model_output`; UniPC does so only in its x0-prediction mode (`predict_x0=True`,
which we set), where both its predictor and its corrector use that clipped x0.

diffusers is imported on first use: it takes seconds to import and only these solvers need it.
Nothing is downloaded: schedulers are built from arguments, without weights or config files.
"""
import dataclasses

import numpy as np
import torch

# spacing name -> diffusers scheduler flags
_DPM_SPACINGS = {
    'default': {},  # diffusers' 'linspace' timesteps
    'karras': {'use_karras_sigmas': True},
    'lu': {'use_lu_lambdas': True},  # uniform in log-SNR (Lu et al.)
    'exponential': {'use_exponential_sigmas': True},
}
# per solver; the SDE variant of DPM-Solver++ takes every spacing of the ODE one (diffusers'
# set_timesteps does not depend on the algorithm type)
SOLVER_SPACINGS = {
    'dpm++2m': _DPM_SPACINGS,
    'dpm++2m-sde': _DPM_SPACINGS,
    'unipc': {
        'default': {},
        'karras': {'use_karras_sigmas': True},
        'exponential': {'use_exponential_sigmas': True},  # uniform in log sigma
    },
}
# the best spacing of each sampler on the Gaussian oracle (README, "Fast samplers")
AUTO_SPACING = {'ddpm': 'all', 'ddim': 'quad', 'dpm++2m': 'lu', 'dpm++2m-sde': 'lu',
                'unipc': 'exponential'}
# valid --spacing values per sampler; 'auto' is valid everywhere
SPACINGS = {
    'ddpm': ('auto',),
    'ddim': ('auto', 'quad', 'uniform'),
    **{name: ('auto',) + tuple(spacings) for name, spacings in SOLVER_SPACINGS.items()},
}
SAMPLERS = tuple(SPACINGS)
# samplers that take --eta (DDPM ignores it); the solvers need eta 0 (dpm++2m-sde draws its own
# noise, as DDPM does)
ETA_SAMPLERS = ('ddpm', 'ddim')

# What `--sampler auto` stands for. RECOMMENDED, for images to look at and to score (grids,
# --sample, --eval with auto): the cheapest setting within twice DDPM 1000's seed std on class
# accuracy, precision, recall and FID on both learned models (scripts/sampler_table.py on the
# digits demo model and the MNIST-LT CBDM model; README "Fast samplers"): DPM-Solver++(2M) SDE
# in 20 log-SNR-uniform steps, 40 network evaluations per image with guidance (DDPM: 2,000).
# Clipped: as good as unclipped by that test on both models, and grids must not show noise a
# clip removes.
RECOMMENDED = {'sampler': 'dpm++2m-sde', 'sample_steps': 20, 'spacing': 'lu', 'eta': 0.0,
               'clip_denoised': True}
# RECOMMENDED_SYNTHETIC, for --classify's generated training sets, is chosen by what the
# classifier learns from them, not by their look: on MNIST-LT (scripts/mnistlt_tdfa.py
# --experiment sampler_choice, 3 classifier seeds) classifiers trained with unclipped stochastic
# DDIM 50 sets beat those trained with clipped ones for DDPM and CBDM alike, although the clipped
# images look cleaner.
RECOMMENDED_SYNTHETIC = {'sampler': 'ddim', 'sample_steps': 50, 'spacing': 'quad', 'eta': 1.0,
                         'clip_denoised': False}
# What an unset --sampler / --clip_denoised means for each use. --eval keeps the paper's sampler
# (DDPM over all T steps, unclipped x0) so the seed's commands reproduce it; grids and --sample
# take RECOMMENDED (DDPM's quality at 1/50 of its cost, the x0 prediction clipped: a small
# model's guided ODE drifts off [-1, 1] and a clip removes that noise); --classify's generated
# sets take RECOMMENDED_SYNTHETIC.
USE_DEFAULTS = {
    'eval': {'sampler': 'ddpm', 'clip_denoised': False},
    'grid': {'sampler': 'auto', 'clip_denoised': RECOMMENDED['clip_denoised']},
    'sample': {'sampler': 'auto', 'clip_denoised': RECOMMENDED['clip_denoised']},
    'synthetic': {'sampler': 'auto', 'clip_denoised': RECOMMENDED_SYNTHETIC['clip_denoised']},
}


def recommended(use):
    """(name, settings dict) of what `--sampler auto` stands for in `use`."""
    if use == 'synthetic':
        return 'RECOMMENDED_SYNTHETIC', RECOMMENDED_SYNTHETIC
    return 'RECOMMENDED', RECOMMENDED


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """A resolved sampler setting: a concrete sampler (samplers.SAMPLERS), its steps (ignored by
    ddpm), concrete spacing (never 'auto'), eta, whether the x0 prediction is clipped, the use it
    was resolved for and whether it came from `--sampler auto`."""
    sampler: str
    sample_steps: int
    spacing: str
    eta: float
    clip_denoised: bool
    use: str = 'sample'
    auto: bool = False

    def describe(self):
        """One line: 'ddim, 50 steps, quad spacing, eta 1, clip_denoised on'."""
        steps = 'all T steps' if self.sampler == 'ddpm' else (
            f'{self.sample_steps} steps, {self.spacing} spacing')
        eta = f', eta {self.eta:g}' if self.sampler == 'ddim' else ''
        return (f'{self.sampler}, {steps}{eta}, clip_denoised '
                f'{"on" if self.clip_denoised else "off"}')

    def tag(self):
        """A file-name part: 'ddpm', 'ddpm_clip', 'ddim50quad_eta1_clip', 'dpm++2m-sde20lu'."""
        name = self.sampler
        if self.sampler != 'ddpm':
            name += f'{self.sample_steps}{self.spacing}'
        if self.sampler == 'ddim' and self.eta:
            name += f'_eta{self.eta:g}'
        return name + ('_clip' if self.clip_denoised else '')


# The values of the sampler flags that mean "not given" (main.py's defaults of --sampler,
# --sample_steps, --spacing, --eta, --clip_denoised; tests/test_sampling_clip.py checks that they
# agree): with them every use draws with its default, USE_DEFAULTS.
UNSET_FLAGS = {'sampler': None, 'sample_steps': 50, 'spacing': 'auto', 'eta': 0.0,
               'clip_denoised': None}


def default_settings(use, skip_type='quad', T=None):
    """The SamplerSettings of `use` when no sampler flag is given (UNSET_FLAGS): what a file name
    leaves out (evaluation.settings_suffix names only what differs from them)."""
    return resolve(**UNSET_FLAGS, use=use, skip_type=skip_type, T=T)


def use_defaults_text():
    """USE_DEFAULTS in words, for --help: 'eval: ddpm, grid: auto clipped, ...'."""
    return ', '.join(f'{use}: {d["sampler"]}{" clipped" if d["clip_denoised"] else ""}'
                     for use, d in USE_DEFAULTS.items())


def flag_samplers(sampler):
    """The concrete samplers that --sampler `sampler` may run, for the checks of --sample_steps,
    --spacing and --eta: the sampler itself; for None (unset) the default sampler of every use;
    none for 'auto', which takes all its settings from recommended(use)."""
    names = [d['sampler'] for d in USE_DEFAULTS.values()] if sampler is None else [sampler]
    return sorted({name for name in names if name != 'auto'})


def resolve(sampler, sample_steps, spacing, eta, clip_denoised, use, skip_type='quad', T=None):
    """The settings that the flags give `use` (a key of USE_DEFAULTS).

    sampler None means the use's default sampler; 'auto' takes sampler, steps (capped at T),
    spacing, eta and clipping from recommended(use) whatever the other arguments say;
    clip_denoised None means the use's default (under 'auto' recommended(use)'s), True / False
    are always honoured.
    spacing 'auto' becomes the sampler's concrete spacing (resolve_spacing). Raises ValueError
    for an unknown use, sampler or spacing.
    """
    if use not in USE_DEFAULTS:
        raise ValueError(f'unknown sampler use {use!r}; one of {", ".join(USE_DEFAULTS)}')
    default = USE_DEFAULTS[use]
    name = default['sampler'] if sampler is None else sampler
    auto = name == 'auto'
    if auto:
        rec = recommended(use)[1]
        name, sample_steps, spacing, eta = (rec[k] for k in ('sampler', 'sample_steps',
                                                             'spacing', 'eta'))
        if T is not None:
            sample_steps = min(sample_steps, T)
            if T < 2 and name in SOLVER_SPACINGS:
                # log-SNR and sigma grids need two distinct noise levels; say so in describe()
                spacing = 'default'
        clip_default = rec['clip_denoised']
    else:
        clip_default = default['clip_denoised']
    clip = clip_default if clip_denoised is None else bool(clip_denoised)
    return SamplerSettings(sampler=name, sample_steps=sample_steps,
                           spacing=resolve_spacing(name, spacing, skip_type), eta=float(eta),
                           clip_denoised=clip, use=use, auto=auto)


def resolve_spacing(sampler, spacing, skip_type='quad'):
    """The concrete spacing of `sampler` for the `spacing` argument.

    'auto' picks AUTO_SPACING, except for DDIM where it keeps the older `skip_type` (whose default
    'quad' is DDIM's best), so that flagfiles written before `spacing` existed sample as before.
    Raises ValueError for an unknown sampler or a spacing the sampler does not support.
    """
    if sampler not in SPACINGS:
        raise ValueError(f'unknown sampler {sampler!r}; one of {", ".join(SAMPLERS)}')
    if spacing == AUTO_SPACING[sampler]:
        return spacing  # already resolved (ddpm's 'all')
    if spacing not in SPACINGS[sampler]:
        raise ValueError(f'spacing {spacing!r} is not valid for sampler {sampler!r}; one of '
                         f'{", ".join(SPACINGS[sampler])}')
    if spacing != 'auto':
        return spacing
    return skip_type if sampler == 'ddim' else AUTO_SPACING[sampler]


# ---------------------------------------------------------------------------------------------
# DDIM's timesteps

def ddim_timesteps(top, steps, spacing):
    """The time indices a DDIM run from time index `top` calls the network at: min(steps, top + 1)
    distinct ints decreasing from top to 0 (one step: [top]).

    A full run has top = T - 1, where x_T is drawn; an SDEdit start at t has top = t, which is
    the full run of a model of t + 1 steps (the first t + 1 of ours), so every start gets the
    schedule's shape over its own range. 'uniform' spaces the steps evenly in t, 'quad' evenly in
    sqrt(t) (more steps at low noise: the DDIM paper's choice for CIFAR-10, whose code ends it at
    0.8 T instead of T - 1 and starts there from pure noise). Where rounding puts two low-noise
    steps on one index, the later ones move up by one; they stay <= top as steps <= top + 1.
    """
    if top < 0 or steps < 1:
        raise ValueError(f'a run needs top >= 0 and steps >= 1, got {top} and {steps}')
    n = min(steps, top + 1)
    if n == 1:
        return [top]
    if spacing == 'uniform':
        grid = np.linspace(0, top, n)
    elif spacing == 'quad':
        grid = np.linspace(0, np.sqrt(top), n) ** 2
    else:
        raise ValueError(f'unknown DDIM spacing {spacing!r}; quad or uniform')
    seq = np.rint(grid).astype(np.int64)
    seq[-1] = top
    for i in range(1, n):
        seq[i] = max(seq[i], seq[i - 1] + 1)
    return seq[::-1].tolist()


# ---------------------------------------------------------------------------------------------
# per-image noise

def image_seed(seed, index):
    """A 63-bit torch seed for image `index` (>= 0) of a run seeded with `seed` (>= 0), from
    numpy's SeedSequence, so that nearby (seed, index) pairs give unrelated streams."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ImageNoise:
    """Standard normal noise for a batch of images, each drawn from its own torch.Generator
    (on the CPU, so the numbers do not depend on the device) seeded by image_seed(seed, index).

    A sampler draws x_T first (`draw`) and then each step's noise (`like`) in a fixed order, so
    image i's sample depends on (seed, i) only, never on which other images share its batch.
    """

    def __init__(self, seed, indices):
        self.indices = [int(i) for i in indices]
        self.generators = [torch.Generator().manual_seed(image_seed(seed, i))
                           for i in self.indices]

    def __len__(self):
        return len(self.generators)

    def draw(self, shape, device='cpu'):
        """len(self) x *shape float32 standard normal, one image per generator."""
        out = torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators])
        return out.to(device)

    def like(self, x):
        """Noise shaped like the batch x (B = len(self)), on x's device and dtype."""
        if x.shape[0] != len(self):
            raise ValueError(f'ImageNoise holds {len(self)} images, the batch has {x.shape[0]}')
        return self.draw(x.shape[1:], x.device).to(x.dtype)


def standard_noise(noise, x):
    """Step noise shaped like x: from the ImageNoise `noise`, else from torch's global RNG."""
    return torch.randn_like(x) if noise is None else noise.like(x)


# ---------------------------------------------------------------------------------------------
# diffusers' solvers

def make_scheduler(solver, betas, spacing, clip_denoised=False):
    """A diffusers scheduler for `solver` ('dpm++2m', 'dpm++2m-sde', 'unipc') on exactly `betas`
    (T, the training schedule), epsilon prediction, order 2, final sigma 0; with clip_denoised the
    x0 prediction is clipped to [-1, 1] at every step (the module docstring says why
    thresholding with sample_max_value 1 is exactly that clip)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.double().numpy(),
                  prediction_type='epsilon', thresholding=bool(clip_denoised),
                  sample_max_value=1.0, solver_order=2, final_sigmas_type='zero',
                  **SOLVER_SPACINGS[solver][spacing])
    if solver == 'dpm++2m':
        return DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', **common)
    if solver == 'dpm++2m-sde':
        return DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', **common)
    return UniPCMultistepScheduler(predict_x0=True, **common)


def respaced_scheduler(solver, betas, spacing, clip_denoised, top):
    """The scheduler of a run from time index `top` (an SDEdit start): make_scheduler on the
    first top + 1 betas, the full run of a model of top + 1 steps whose noise levels are ours,
    so the spacing keeps its shape over [0, top] and the first step is at top's own sigma. At
    top = 0 every spacing is the single step at t = 0, built with 'default' (log-SNR grids need
    two noise levels)."""
    return make_scheduler(solver, betas[:top + 1], spacing if top > 0 else 'default',
                          clip_denoised)


def is_stochastic(scheduler):
    return getattr(scheduler.config, 'algorithm_type', None) == 'sde-dpmsolver++'


def training_sigma(scheduler, time_step):
    """sqrt((1 - abar_t) / abar_t) at integer `time_step`, as diffusers computes its sigmas."""
    abar = scheduler.alphas_cumprod[time_step]
    return float(((1 - abar) / abar) ** 0.5)


def set_timesteps(scheduler, steps):
    """Set `scheduler` up for `steps` steps over its whole schedule; returns its timesteps (ints,
    non-increasing, the first T - 1 of its T = len(alphas_cumprod)).

    A step of zero length (the sigma of the previous step again: 'default' spacing at steps = T
    rounds two steps onto one timestep) is dropped, as the multistep formulas would divide by
    zero. Karras, lu and exponential spacing may also put several steps on one integer timestep
    when `steps` is a sizeable part of T (lu from 50 steps at T = 1000), but with distinct sigmas:
    those are kept, as the solver still resolves the low-noise end better with them (measured on
    the oracle: dropping them nearly tripled the error of lu at 1000 steps). The first sigma is
    always the training sigma of T - 1, so the first timestep is T - 1 (diffusers' exponential
    grid truncates an interpolated timestep that can fall a rounding error below it). The
    solver's history of an earlier run is reset.
    """
    scheduler.set_timesteps(steps)  # also resets the solver's history of earlier runs
    sigmas = scheduler.sigmas[:-1]  # the last entry is the final sigma, 0
    timesteps = scheduler.timesteps
    T = len(scheduler.alphas_cumprod)
    keep = torch.ones(len(sigmas), dtype=torch.bool)
    keep[1:] = sigmas[1:] != sigmas[:-1]
    if not keep.all() or int(timesteps[0]) != T - 1:
        timesteps = timesteps[keep.to(timesteps.device)].clone()
        timesteps[0] = T - 1
        scheduler.timesteps = timesteps
        scheduler.sigmas = torch.cat([sigmas[keep], scheduler.sigmas[-1:]])
        scheduler.num_inference_steps = len(timesteps)
    # step i uses sigmas[i]: never let a repeated first timestep pick a later index
    scheduler.set_begin_index(0)
    out = scheduler.timesteps.tolist()
    if not all(0 <= t < T for t in out):   # lu at T = 1: a log-SNR range of zero width
        raise ValueError(f'this spacing gives no valid timesteps at T = {T}; use --spacing '
                         f'default')
    return out


def solve(scheduler, steps, predict_eps, x_T, y, omega, method, noise=None):
    """Run the scheduler's loop from x_T (B x C x H x W) in `steps` steps.

    x_T is the state at the scheduler's last time index T - 1: standard normal for a full run,
    x_t for an SDEdit start at t on a scheduler of the first t + 1 betas (respaced_scheduler).
    predict_eps(x_t, t, y, omega, method) -> eps (B x C x H x W float32), t a B int64 tensor of
    0-based timesteps in [0, T). The SDE solver's step noise comes from `noise` (an ImageNoise
    for the batch) or torch's global RNG. Returns x_0, not clipped (B x C x H x W float32).
    """
    timesteps = set_timesteps(scheduler, steps)
    x_t = x_T * scheduler.init_noise_sigma
    for time_step in timesteps:
        t = torch.full((x_T.shape[0],), time_step, dtype=torch.long, device=x_T.device)
        eps = predict_eps(x_t, t, y, omega, method)
        if is_stochastic(scheduler):
            x_t = scheduler.step(eps, time_step, x_t,
                                 variance_noise=standard_noise(noise, eps)).prev_sample
        else:
            x_t = scheduler.step(eps, time_step, x_t).prev_sample
    return x_t
