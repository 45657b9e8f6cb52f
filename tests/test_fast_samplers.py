"""DPM-Solver++(2M), its SDE variant and UniPC (diffusers' schedulers, samplers.py) against the
exact Gaussian oracle, their wiring into GaussianDiffusionSampler, and the command line."""
import inspect
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from diffusion import GaussianDiffusionSampler, GaussianDiffusionTrainer, linear_betas
from helpers import ROOT, copy_run, run_main, tiny_cfg_run
from model import UNet
from oracle import GaussianOracle
from samplers import ImageNoise, SPACINGS, make_scheduler, set_timesteps, solve
from factory import build_sampler

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import oracle_table as table  # noqa: E402  (the oracle set-up of the README table)

N_PER_CLASS = 300
FAST = ('dpm++2m', 'unipc')  # the deterministic solvers
SOLVERS = FAST + ('dpm++2m-sde',)  # every diffusers solver


@pytest.fixture(scope='module')
def oracle():
    return table.make_oracle()


@pytest.fixture(scope='module')
def inputs():
    return table.draw_inputs(N_PER_CLASS, seed=0)


def cond_std_error(oracle, inputs, sampler, steps, spacing='auto'):
    """Worst-class relative std error of conditional samples against the exact ODE end point."""
    x_T, y = inputs
    x = table.run(table.make_sampler(oracle, sampler, steps, spacing), x_T, y, 'cond', 0.0, 0)
    return table.worst_errors(x, table.exact_cond_samples(x_T, y), y)[1]


# --- accuracy on the oracle -------------------------------------------------------------------
def test_20_steps_at_least_as_accurate_as_ddim_50(oracle, inputs):
    # DPM-Solver++ (lu) and UniPC (exponential) in 20 steps against our best DDIM (quad) in 50
    x_T, y = inputs
    ddim = table.make_sampler(oracle, 'ddim', 50)
    fast = [table.make_sampler(oracle, sampler, 20) for sampler in FAST]
    reference = table.make_sampler(oracle, 'dpm++2m', 200)
    for method, omega in table.METHODS:
        ref = (table.exact_cond_samples(x_T, y) if method == 'cond'
               else table.run(reference, x_T, y, method, omega, 0))
        ddim_err = table.worst_errors(table.run(ddim, x_T, y, method, omega, 0), ref, y)
        for sampler in fast:
            err = table.worst_errors(table.run(sampler, x_T, y, method, omega, 0), ref, y)
            assert err[1] <= ddim_err[1], (sampler.sampler, method, omega, err, ddim_err)
            assert err[0] < 0.02, (sampler.sampler, method, omega, err)


@pytest.mark.parametrize('sampler,spacing', [(s, sp) for s in ('ddim',) + FAST
                                             for sp in SPACINGS[s]])
def test_error_shrinks_from_5_to_20_steps(oracle, inputs, sampler, spacing):
    errors = [cond_std_error(oracle, inputs, sampler, steps, spacing) for steps in (5, 20)]
    assert errors[1] < 0.6 * errors[0], errors


def test_auto_spacing_is_the_best_at_20_steps(oracle, inputs):
    for sampler in FAST:
        errors = {sp: cond_std_error(oracle, inputs, sampler, 20, sp) for sp in SPACINGS[sampler]}
        assert errors['auto'] < 0.02, errors
        assert errors['auto'] <= min(errors.values()) * 1.25, errors  # lu ~ exponential for DPM


@pytest.mark.parametrize('steps, tolerance', [(20, 0.05), (50, 0.02)])
def test_sde_solver_reproduces_the_gaussians(oracle, steps, tolerance):
    # the stochastic solver has no paired ODE reference: its samples are compared with the data
    # distribution itself, class k ~ N(mu_k, s_k^2), over 500 x 12 values per class (Monte-Carlo
    # standard error of the std ratio ~0.009). Measured with 1000 per class (README): worst std
    # error 0.030 at 20 lu steps, 0.005 at 50 (at 20 steps the 0.1-wide class is 3% too wide)
    n = 500
    y = torch.arange(3).repeat(n)
    noise = ImageNoise(0, range(len(y)))
    x_T = noise.draw(table.SHAPE)
    x, _ = table.make_sampler(oracle, 'dpm++2m-sde', steps)(x_T, method='cond', y=y, noise=noise)
    for k, (mean, std) in enumerate(zip(table.MEANS, table.STDS)):
        assert abs(x[y == k].mean().item() - mean) < 0.01, (k, x[y == k].mean())
        assert abs(x[y == k].std().item() / std - 1) < tolerance, (k, x[y == k].std())
    # a stochastic sampler: the same x_T with other step noise gives other samples of the class
    other = ImageNoise(1, range(len(y)))
    x_other, _ = table.make_sampler(oracle, 'dpm++2m-sde', steps)(x_T, method='cond', y=y,
                                                                   noise=other)
    assert (x - x_other).abs().mean() > 0.05


def test_our_ddim_update_equals_diffusers_ddim(oracle, inputs):
    # diffusers' DDIMScheduler ('leading' spacing: 900, 800, .., 0 in 10 steps) and our DDIM
    # update stepping through the same timesteps: equal results confirm that both index the same
    # alphas_cumprod (no shift). (Our 'uniform' runs start at T - 1 instead: 999, 888, .., 0.)
    x_T, y = inputs
    theirs = table.run(table.diffusers_ddim(oracle, 10), x_T, y, 'cfg', 1.0, 0)
    ours = table.make_sampler(oracle, 'ddim', 10, 'uniform')
    steps = list(range(900, -1, -100))
    x = x_T
    for t, t_prev in zip(steps, steps[1:] + [-1]):
        x = ours.ddim_step(x, torch.full((len(x),), t), torch.full((len(x),), t_prev), y, 1.0,
                           'cfg')
    assert torch.allclose(x.clip(-1, 1), theirs, atol=1e-5)
    assert ours.timesteps()[:2] == [999, 888]


# --- the diffusers layer ----------------------------------------------------------------------
@pytest.mark.parametrize('sampler', SOLVERS)
def test_scheduler_uses_our_schedule_without_clipping(sampler):
    gds = GaussianDiffusionSampler(torch.nn.Identity(), 1e-4, 0.02, 1000, 3, sampler=sampler,
                                   sample_steps=20)
    sched = gds.scheduler
    ours = linear_betas(1e-4, 0.02, 1000)
    assert torch.equal(sched.betas, ours.float())
    assert torch.allclose(sched.alphas_cumprod.double(), torch.cumprod(1 - ours, 0), rtol=1e-4)
    assert sched.config.prediction_type == 'epsilon' and not sched.config.thresholding
    timesteps = set_timesteps(sched, 20)
    assert len(timesteps) == 20 and timesteps[0] == 999 and timesteps[-1] == 0
    assert sched.sigmas[-1] == 0  # the last step lands on the clean image


@pytest.mark.parametrize('sampler', SOLVERS)
def test_network_sees_the_timestep_of_the_solvers_noise_level(sampler):
    # no off-by-one: at every step the solver's sigma is the noise-to-signal ratio that training
    # used at the timestep the network is given (std errors on the oracle hardly move with t +- 1)
    trainer = GaussianDiffusionTrainer(torch.nn.Identity(), 1e-4, 0.02, 1000)
    training_sigma = trainer.sqrt_one_minus_alphas_bar / trainer.sqrt_alphas_bar
    sched = make_scheduler(sampler, linear_betas(1e-4, 0.02, 1000), 'default')
    seen = []

    def record(x, t, y, omega, method):
        seen.append(t.tolist())
        return 0.1 * x
    solve(sched, 10, record, torch.randn(2, 3), None, 0.0, 'uncond')
    assert [t[0] for t in seen] == sched.timesteps.tolist() and seen[0] == [999, 999]
    assert torch.allclose(sched.sigmas[:-1], training_sigma[[t[0] for t in seen]], rtol=1e-4)


@pytest.mark.parametrize('sampler', SOLVERS)
def test_steps_of_length_zero_are_dropped(sampler):
    # 'default' spacing with steps = T rounds two steps onto one timestep (same sigma)
    oracle = GaussianOracle(torch.zeros(1, 3, 2, 2), [0.3], T=50)
    gds = GaussianDiffusionSampler(oracle, 1e-4, 0.02, 50, 1, img_size=2, sampler=sampler,
                                   sample_steps=50, spacing='default')
    x, _ = gds(torch.randn(8, 3, 2, 2), method='uncond')
    assert torch.isfinite(x).all()
    assert len(set(gds.scheduler.timesteps.tolist())) == len(gds.scheduler.timesteps) == 49
    assert gds.settings('uncond')['nfe_per_image'] == 49  # the steps actually run


@pytest.mark.parametrize('sampler', SOLVERS)
def test_cfg_omega_0_equals_cond(oracle, inputs, sampler):
    x_T, y = inputs
    gds = table.make_sampler(oracle, sampler, 10)
    cfg_0 = table.run(gds, x_T, y, 'cfg', 0.0, 0)
    assert torch.equal(cfg_0, table.run(gds, x_T, y, 'cond', 0.0, 0))


@pytest.mark.parametrize('sampler', SOLVERS)
def test_solver_gets_the_guided_noise(oracle, inputs, sampler):
    x_T, y = inputs
    omega = 1.5

    def guided_eps(x, t, y, omega, method):  # written out: (1 + w) eps(x, y) - w eps(x)
        return (1 + omega) * oracle(x, t, y) - omega * oracle(x, t, None)

    def noise():  # the same step noise for every run (the SDE solver draws some)
        return ImageNoise(0, range(len(y)))
    gds = table.make_sampler(oracle, sampler, 10)
    x, _ = gds(x_T, omega=omega, method='cfg', y=y, noise=noise())
    by_hand = solve(make_scheduler(sampler, linear_betas(1e-4, 0.02, 1000), gds.spacing), 10,
                    guided_eps, x_T, y, omega, 'cfg', noise=noise()).clip(-1, 1)
    assert torch.allclose(x, by_hand, atol=1e-5)
    cond, _ = gds(x_T, method='cond', y=y, noise=noise())
    assert not torch.allclose(x, cond, atol=1e-3)


@pytest.mark.parametrize('sampler', FAST)
def test_guided_ode_matches_our_ddim_in_1000_steps(oracle, inputs, sampler):
    """The guided probability-flow ODE solved by diffusers' solver in 20 steps ends where our
    own DDIM (eta 0, independent code) ends in 1,000 uniform steps from the same x_T."""
    x_T, y = inputs
    reference = GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, 3, img_size=2,
                                         sampler='ddim', sample_steps=1000, spacing='uniform')
    ref = table.run(reference, x_T, y, 'cfg', 1.5, 0)
    fast = table.run(table.make_sampler(oracle, sampler, 20), x_T, y, 'cfg', 1.5, 0)
    # both carry discretisation error (ours O(1/1000), the solver's at 20 steps); a solver that
    # guided or scaled differently is off by > 0.1
    assert (fast - ref).abs().max() < 0.05
    assert (fast - ref).abs().mean() < 0.01


def test_guided_sde_samples_what_guided_ddpm_samples(oracle):
    """dpm++2m-sde in 50 steps and DDPM in 1,000 integrate the same guided reverse SDE: per
    class, the same mean and spread of their samples (other noise, 1,200 samples per class)."""
    x_T, y = table.draw_inputs(1200, seed=5)
    ddpm = GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, 3, img_size=2)
    sde = table.make_sampler(oracle, 'dpm++2m-sde', 50)
    a, _ = ddpm(x_T, omega=1.5, method='cfg', y=y, noise=ImageNoise(1, range(len(y))))
    b, _ = sde(x_T, omega=1.5, method='cfg', y=y, noise=ImageNoise(2, range(len(y))))
    for k in range(3):
        ak, bk = a[y == k], b[y == k]
        assert abs(ak.mean() - bk.mean()).item() < 0.01
        assert abs(ak.std() / bk.std() - 1).item() < 0.05


@pytest.mark.parametrize('sampler', SOLVERS)
def test_batched_guidance_equals_two_passes(sampler):
    torch.manual_seed(0)
    net = UNet(T=100, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=5).eval()
    for p in net.parameters():  # make the output depend on everything
        torch.nn.init.normal_(p, std=0.05)
    args = (net, 1e-4, 0.02, 100, 5)
    kwargs = dict(img_size=8, sampler=sampler, sample_steps=4)
    x_T, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 4])
    batched, _ = GaussianDiffusionSampler(*args, batched=True, **kwargs)(
        x_T, 1.5, 'cfg', y, noise=ImageNoise(0, range(4)))
    two_pass, _ = GaussianDiffusionSampler(*args, batched=False, **kwargs)(
        x_T, 1.5, 'cfg', y, noise=ImageNoise(0, range(4)))
    assert torch.allclose(batched, two_pass, atol=1e-4)


# --- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs', [
    dict(sampler='euler'), dict(sampler='ddpm', spacing='lu'), dict(sampler='ddim', spacing='lu'),
    dict(sampler='dpm++2m', spacing='quad'), dict(sampler='unipc', spacing='lu'),
    dict(sampler='unipc', spacing='uniform'), dict(sampler='dpm++2m', spacing='bogus'),
    dict(sampler='dpm++2m', sample_steps=1001), dict(sampler='unipc', sample_steps=-1),
    dict(sampler='ddim', sample_steps=1001), dict(sampler='unipc', eta=0.5),
    dict(sampler='ddim', skip_type='linear'), dict(sampler='dpm++2m-sde', eta=0.5),
    dict(sampler='dpm++2m-sde', spacing='quad'), dict(sampler='auto')])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        GaussianDiffusionSampler(torch.nn.Identity(), 1e-4, 0.02, 1000, 3, **kwargs)


def test_skip_type_is_ddim_auto_spacing(oracle, inputs):
    x_T, y = inputs

    def ddim(**kwargs):
        gds = GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, 3, img_size=2, sampler='ddim',
                                       sample_steps=10, **kwargs)
        return table.run(gds, x_T, y, 'cond', 0.0, 0)
    assert torch.equal(ddim(skip_type='uniform'), ddim(spacing='uniform'))
    assert torch.equal(ddim(skip_type='uniform', spacing='quad'), ddim())  # spacing wins
    assert not torch.equal(ddim(spacing='uniform'), ddim(spacing='quad'))


def test_signature_and_call_kept():
    names = list(inspect.signature(GaussianDiffusionSampler).parameters)
    assert names[:9] == ['model', 'beta_1', 'beta_T', 'T', 'num_class', 'img_size', 'var_type',
                         'sampler', 'sample_steps']
    assert {'eta', 'skip_type', 'spacing', 'batched', 'amp', 'clip_denoised'} <= set(names)
    default = GaussianDiffusionSampler(torch.nn.Identity(), 1e-4, 0.02, 1000, 3)
    assert default.sampler == 'ddpm' and default.scheduler is None
    net = UNet(T=1000, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=3)
    for sampler in SOLVERS:
        gds = GaussianDiffusionSampler(net, 1e-4, 0.02, 1000, 3, 4, 'fixedlarge', sampler, 3)
        x, y = gds(torch.randn(6, 3, 4, 4), omega=1.0, method='cfg')
        assert x.shape == (6, 3, 4, 4) and x.dtype == torch.float32
        assert y.shape == (6,) and 0 <= y.min() and y.max() < 3
        y_given = torch.tensor([2, 2, 1, 0, 0, 1])
        _, y2 = gds(torch.randn(6, 3, 4, 4), method='cond', y=y_given)
        assert torch.equal(y2, y_given)
        _, y3 = gds(torch.randn(6, 3, 4, 4), method='uncond')
        assert y3 is None


def test_build_sampler_passes_the_sampler_flags():
    cfg = types.SimpleNamespace(compile=False, beta_1=1e-4, beta_T=0.02, T=100, img_size=8,
                                var_type='fixedlarge', sampler='unipc', sample_steps=7, eta=0.0,
                                skip_type='uniform', spacing='karras', amp='none',
                                clip_denoised=None)
    gds = build_sampler(cfg, torch.nn.Identity(), 4, 'eval')
    assert (gds.sampler, gds.sample_steps, gds.spacing) == ('unipc', 7, 'karras')
    assert gds.scheduler.config.use_karras_sigmas and not gds.clip_denoised
    cfg.sampler, cfg.spacing = 'ddim', 'auto'
    assert build_sampler(cfg, torch.nn.Identity(), 4, 'eval').spacing == 'uniform'  # --skip_type
    cfg.sampler, cfg.spacing, cfg.clip_denoised = 'dpm++2m-sde', 'auto', True
    gds = build_sampler(cfg, torch.nn.Identity(), 4, 'eval')
    assert gds.scheduler.config.algorithm_type == 'sde-dpmsolver++' and gds.spacing == 'lu'
    assert gds.scheduler.config.thresholding and gds.clip_denoised


def test_schedulers_need_no_network():
    code = ('import socket\n'
            'def refuse(*a, **k): raise OSError("network used")\n'
            'socket.socket.connect = refuse; socket.create_connection = refuse\n'
            'import torch, samplers, diffusion\n'
            'betas = diffusion.linear_betas(1e-4, 0.02, 100)\n'
            'eps = lambda x, t, y, omega, method: 0.1 * x\n'
            'for s in ("dpm++2m", "dpm++2m-sde", "unipc"):\n'
            '    sched = samplers.make_scheduler(s, betas, "default")\n'
            '    x = samplers.solve(sched, 3, eps, torch.randn(2, 3), None, 0, "uncond")\n'
            '    assert torch.isfinite(x).all()\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- command line -----------------------------------------------------------------------------
def test_cli_sample_with_fast_samplers(tmp_path):
    logdir = copy_run(tiny_cfg_run(), tmp_path / 'run')     # TINY, --cfg, 2 steps
    # the files are named after the sampler settings (--sample's default clips)
    for sampler_flags, tag in ((['--sampler=dpm++2m', '--sample_steps=5'], 'dpm++2m5lu_clip'),
                               (['--sampler=unipc'], 'unipc50exponential_clip'),
                               (['--sampler=dpm++2m-sde', '--sample_steps=5'],
                                'dpm++2m-sde5lu_clip')):
        out = run_main('--notrain', '--sample', f'--flagfile={logdir}/flagfile.txt',
                       '--ckpt_step=1', '--sample_method=cfg', '--omega=1.0', *sampler_flags)
        assert out.returncode == 0, out.stderr[-3000:]
        stem = logdir / f'sample_cfg_1.0_STEP1_{tag}'
        images = np.load(f'{stem}.npy')
        assert images.shape == (20, 3, 8, 8) and np.isfinite(images).all()
        os.remove(f'{stem}.npy')
