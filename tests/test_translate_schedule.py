"""Where a translation of strength s starts and which steps it takes, for every sampler, spacing
and step count a user can give (issue #22, item 6): it starts at its own time index
t = round(s T) - 1, with the schedule the sampler would run on a model of t + 1 steps (whose
noise levels are the first t + 1 of ours), so strength 1 is the sampler's full run, which starts
at T - 1, and two strengths give two starts and two translations. On Gaussian classes with the
exact eps, a translation follows the posterior (stochastic samplers) or the probability flow
(deterministic ones) from x_t at t."""
import numpy as np
import pytest
import torch

import recognition.translate as T
from diffusion import GaussianDiffusionSampler
from evaluation import generate
from oracle import GaussianOracle
from samplers import SAMPLERS, SPACINGS, training_sigma
from utils import UserError

BETA_1, BETA_T, STEPS_T = 1e-4, 0.02, 1000
# every concrete (sampler, spacing) a user can give
SAMPLER_SPACINGS = [(name, spacing) for name in SAMPLERS for spacing in SPACINGS[name]
                    if spacing != 'auto'] + [('ddpm', 'auto')]
MU, SIGMA = 0.2, 0.2
STRENGTHS = (1.0, 0.999, 0.97, 0.9, 0.81, 0.8, 0.5, 0.2, 0.05, 0.01, 0.002, 0.001)


def sampler(name, spacing, steps, T=STEPS_T, beta_T=BETA_T, model=None):
    """A sampler of `T` linear betas from BETA_1 to beta_T (eta 0; model: identity)."""
    return GaussianDiffusionSampler(model or torch.nn.Identity(), BETA_1, beta_T, T, 2,
                                    img_size=4, sampler=name, sample_steps=steps,
                                    spacing=spacing)


def short_model(name, spacing, steps, t):
    """The same sampler on a model of t + 1 steps whose betas are the first t + 1 of ours (a
    linear schedule's prefix is linear): the run that a start at t must take."""
    beta_t = BETA_1 + (BETA_T - BETA_1) * t / (STEPS_T - 1)
    return sampler(name, spacing, min(steps, t + 1), t + 1, beta_t)


def check_run(gds, steps, top):
    """The run of `gds` from time index `top` (its full run for top = T - 1): its first step is
    top, every step is in [0, top] and the steps are as many as asked (or the sampler's own)."""
    ts = gds.timesteps(None if top == gds.T - 1 else top)
    assert ts[0] == top and all(0 <= t <= top for t in ts)
    if gds.sampler == 'ddpm':
        assert ts == list(range(top, -1, -1))
    elif gds.sampler == 'ddim':
        # strictly decreasing to 0 (one step: top, then the clean image); fewer steps only when
        # [0, top] holds fewer time indices
        assert ts[-1] == (0 if steps > 1 else top) and all(a > b for a, b in zip(ts, ts[1:]))
        assert len(ts) == min(steps, top + 1)
    else:
        sigmas = gds.scheduler_from(top).sigmas.tolist()
        # x_t at top's own noise level, landing on sigma 0 (the clean image)
        assert sigmas[0] == pytest.approx(training_sigma(gds.scheduler, top), rel=1e-5)
        assert sigmas[-1] == 0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
        assert all(a >= b for a, b in zip(ts, ts[1:])) and len(ts) == len(sigmas) - 1
        n = min(steps, top + 1)
        if gds.spacing == 'default':  # diffusers' linspace: at n = top + 1 two steps share 0
            assert len(ts) == n or (n == top + 1 and len(ts) == top)
        else:  # sigma grids: distinct sigmas, several may share an integer timestep
            assert len(ts) == n
    return ts


@pytest.mark.parametrize('name, spacing', SAMPLER_SPACINGS)
def test_a_full_run_starts_at_T_minus_1_in_any_number_of_steps(name, spacing):
    # the noise level x_T is drawn at: DDIM 20 quad used to start at 800, 50 uniform at 980, and
    # DDIM in one step called the network at t = 0 on pure noise
    for steps in range(1, 51):
        check_run(sampler(name, spacing, steps), steps, STEPS_T - 1)


@pytest.mark.parametrize('name, spacing', SAMPLER_SPACINGS)
def test_each_strength_starts_at_its_own_step_with_the_respaced_schedule(name, spacing):
    # DDIM: every step count; the solvers (a diffusers scheduler per start): a sample of them
    all_steps = {'ddpm': (None,), 'ddim': range(1, 51)}.get(name, (1, 2, 5, 20, 49, 50))
    for steps in all_steps:
        gds = sampler(name, spacing, steps)
        starts = []
        for strength in STRENGTHS:
            t = T.start_step(gds, strength)
            assert t == round(strength * STEPS_T) - 1
            ts = check_run(gds, steps or STEPS_T, t)
            # respaced: the run of the same sampler on a model of t + 1 steps
            assert ts == short_model(name, spacing, steps or STEPS_T, t).timesteps()
            starts.append(t)
        assert len(set(starts)) == len(STRENGTHS)
        # strength 1 is the sampler's normal full run
        assert gds.timesteps(T.start_step(gds, 1.0)) == gds.timesteps()


def test_solver_noise_levels_of_a_start_are_those_of_the_shorter_model():
    # beyond the timesteps: every sigma of the run from t is the shorter model's (so karras,
    # lu and exponential keep their shape over [0, t])
    for name in ('dpm++2m', 'dpm++2m-sde', 'unipc'):
        for spacing in SPACINGS[name][1:]:
            for t in (1, 2, 37, 499, 998):
                gds, short = sampler(name, spacing, 20), short_model(name, spacing, 20, t)
                gds.timesteps(t), short.timesteps()
                assert torch.allclose(gds.scheduler_from(t).sigmas,
                                      short.scheduler.sigmas, rtol=1e-6)


def test_a_strength_below_the_first_step_is_refused_on_one_line():
    gds = sampler('ddim', 'quad', 50)
    assert T.start_step(gds, 0.0015) == 1 and T.start_step(gds, 0.001) == 0
    for bad in (0.0004, 1e-9):
        with pytest.raises(UserError, match=r'--translate_strength .*T = 1000') as err:
            T.start_step(gds, bad)
        assert '\n' not in str(err.value)
    assert T.start_step(sampler('ddpm', 'auto', None, T=10), 0.06) == 0
    with pytest.raises(UserError, match='--translate_strength'):
        T.start_step(sampler('ddpm', 'auto', None, T=10), 0.04)


def test_the_pairs_grid_name_is_unique_per_strength():
    assert T.strength_name(0.5) == '0.5' and T.strength_name(1.0) == '1'
    assert T.strength_name(0.3) == '0.3' and T.strength_name(0.05) == '0.05'
    # 6 significant digits (':g') would give both '0.0015', yet they start at t = 0 and t = 1
    a, b = 0.0014999999, 0.0015
    assert T.strength_name(a) != T.strength_name(b)
    assert float(T.strength_name(a)) == a and float(T.strength_name(b)) == b


def oracle(T_=STEPS_T):
    """Two Gaussian classes of 3 x 4 x 4 images, means -0.2 and +0.2, std 0.2 (within [-1, 1],
    where the output clip leaves them alone), exact eps."""
    means = torch.stack([torch.full((3, 4, 4), -MU), torch.full((3, 4, 4), MU)])
    return GaussianOracle(means, [SIGMA, SIGMA], T=T_)


def translate(gds, sources, strength, seed=7):
    """Translations of `sources` (N x 3 x 4 x 4 in [-1, 1]) into class 1, float64 in [-1, 1]."""
    labels = np.ones(len(sources), np.int64)
    x, _ = generate(gds, len(sources), 256, 4, torch.device('cpu'), 'cond', 0.0, seed, 'test',
                    classes=labels, starts=sources, start_t=T.start_step(gds, strength))
    return torch.from_numpy(x).double() * 2 - 1


# (sampler, spacing, steps, eta): the schedules that capped strengths and every solver
CAPPED_RUNS = [('ddim', 'quad', 20, 0.0), ('ddim', 'quad', 20, 1.0), ('ddim', 'uniform', 20, 0.0),
               ('dpm++2m', 'lu', 20, 0.0), ('dpm++2m-sde', 'lu', 20, 0.0),
               ('unipc', 'exponential', 20, 0.0)]
# accurate settings (README, "Accuracy on the Gaussian oracle"), one of each sampler and eta
ACCURATE_RUNS = [('ddpm', 'auto', None, 0.0), ('ddim', 'quad', 50, 0.0), ('ddim', 'quad', 50, 1.0),
                 ('dpm++2m', 'lu', 20, 0.0), ('dpm++2m-sde', 'lu', 20, 0.0),
                 ('unipc', 'exponential', 20, 0.0)]


def make_oracle_sampler(name, spacing, steps, eta):
    return GaussianDiffusionSampler(oracle(), BETA_1, BETA_T, STEPS_T, 2, img_size=4,
                                    sampler=name, sample_steps=steps, spacing=spacing, eta=eta)


@pytest.mark.parametrize('name, spacing, steps, eta', CAPPED_RUNS)
def test_strengths_above_a_schedules_old_first_step_differ(name, spacing, steps, eta):
    # DDIM 20 quad used to cap every strength from 0.8 up at t = 799 (uniform 20: 0.95 up at 950):
    # the same start, the same translation
    gds = make_oracle_sampler(name, spacing, steps, eta)
    sources = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = [translate(gds, sources, s) for s in (0.82, 0.9, 0.97, 1.0)]
    for i in range(len(images)):
        for j in range(i):
            assert (images[i] - images[j]).abs().max() > 1e-4, (i, j)


@pytest.mark.parametrize('strength', [0.15, 0.4])
@pytest.mark.parametrize('name, spacing, steps, eta', ACCURATE_RUNS)
def test_translation_follows_the_exact_posterior_or_flow(name, spacing, steps, eta, strength):
    # from x_t = sqrt(a) src + sqrt(1 - a) z at a = abar_t, the target class N(mu, s^2) gives
    # x_0 = mu + k sqrt(a) (src - mu) + e per pixel, with e independent of src:
    # - a stochastic sampler draws x_0 | x_t: k = sqrt(a) s^2 / v (v = a s^2 + 1 - a), and
    #   var e = k^2 (1 - a) + s^2 (1 - a) / v (the posterior mean's spread plus the posterior's);
    # - a deterministic one transports x_t along the flow: k = s / sqrt(v), var e = k^2 (1 - a).
    # At 0.15 a start 15 steps off (t = 135 or 165) moves the slope by 15 to 20%: twice the
    # tolerance, which covers DDIM 50's known 5% std error (the table in the README)
    gds = make_oracle_sampler(name, spacing, steps, eta)
    n = 300
    sources = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = translate(gds, sources, strength)
    a = gds.alphas_bar[T.start_step(gds, strength)].double().item()
    mu, s = MU, SIGMA
    v = a * s ** 2 + 1 - a
    stochastic = name in ('ddpm', 'dpm++2m-sde') or eta > 0
    k = np.sqrt(a) * s ** 2 / v if stochastic else s / np.sqrt(v)
    resid_var = k ** 2 * (1 - a) + (s ** 2 * (1 - a) / v if stochastic else 0)
    src = sources.double().flatten() - mu
    out = x.flatten() - mu
    slope = (src * out).sum() / (src * src).sum()
    resid = out - slope * src
    assert slope.item() == pytest.approx(k * np.sqrt(a), rel=0.1, abs=0.005)
    assert resid.mean().item() == pytest.approx(0.0, abs=0.01)
    assert resid.std().item() == pytest.approx(np.sqrt(resid_var), rel=0.07)
