"""Sampling that holds up on a trained model (issue #16): the x0 prediction clipped inside the
loop, per-image seeded noise (no dependence on the batch size), the default of each use and
--sampler auto, the settings in every record, and the SDEdit start of the sampler."""
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import GaussianDiffusionSampler, linear_betas
from evaluation import generate
from factory import build_sampler
from grids import draw_grid
from helpers import TINY, fake_cifar10lt_with_stats, run_main
from model import UNet
from oracle import GaussianOracle
from samplers import ImageNoise, make_scheduler, resolve

SHAPE = (3, 2, 2)
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m', 'dpm++2m-sde', 'unipc')
SOLVERS = ('dpm++2m', 'dpm++2m-sde', 'unipc')
T_SMALL = 100


class Recorder(torch.nn.Module):
    """A network that records every x_t it is called with (the sampler's trajectory)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs = []

    def forward(self, x, t, y=None, augm=None):
        self.inputs.append(x.clone())
        return self.net(x, t, y)


def make(model, sampler, clip, T=T_SMALL, steps=10, num_class=1, **kwargs):
    return GaussianDiffusionSampler(model, 1e-4, 0.02, T, num_class, img_size=SHAPE[-1],
                                    sampler=sampler, sample_steps=steps, clip_denoised=clip,
                                    **kwargs)


def record_x0(gds):
    """Record every x0 prediction the loop steps with: our denoise (DDPM, DDIM) or the
    scheduler's data prediction (diffusers' convert_model_output returns x0 in our set-up)."""
    seen = []
    owner = gds.scheduler if gds.scheduler is not None else gds
    name = 'convert_model_output' if gds.scheduler is not None else 'denoise'
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((out if gds.scheduler is not None else out[0]).clone())
        return out
    setattr(owner, name, recording)
    return seen


def outside_oracle(T=T_SMALL):
    """Data at 1.2 +- 0.3, mostly outside [-1, 1]: its exact x0 predictions leave the range."""
    return GaussianOracle(torch.full((1, *SHAPE), 1.2), [0.3], T=T)


# --- clipping inside the loop -----------------------------------------------------------------
@pytest.mark.parametrize('sampler', SOLVERS)
def test_diffusers_thresholding_is_exactly_a_clip(sampler):
    sched = make_scheduler(sampler, linear_betas(1e-4, 0.02, 100), 'default', clip_denoised=True)
    assert sched.config.thresholding and sched.config.sample_max_value == 1.0
    if sampler == 'unipc':
        assert sched.config.predict_x0  # thresholding applies to UniPC's x0 prediction only
    x = 3 * torch.randn(5, 3, 4, 4)
    x[0] = 0.5 * x[0].clamp(-1, 1)  # an image inside the range stays as it is
    assert torch.equal(sched._threshold_sample(x), x.clamp(-1, 1))


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_clipping_happens_inside_the_loop(sampler):
    x_T = ImageNoise(0, range(16)).draw(SHAPE)
    runs = {}
    for clip in (False, True):
        net = Recorder(outside_oracle())
        gds = make(net, sampler, clip)
        x0 = record_x0(gds)
        gds(x_T, method='uncond', noise=ImageNoise(0, range(16)))  # the same step noise
        runs[clip] = net.inputs, x0
    (states_off, x0_off), (states_on, x0_on) = runs[False], runs[True]
    assert len(states_off) == len(states_on) == len(x0_on) > 2
    assert torch.equal(states_off[0], states_on[0])
    # unclipped, the loop steps with x0 predictions outside [-1, 1]; clipped, never
    assert max(x.abs().max().item() for x in x0_off) > 1.2
    assert max(x.abs().max().item() for x in x0_on) <= 1.0
    # so the trajectory itself changes, not only the final image
    middle = len(states_on) // 2
    assert (states_on[middle] - states_off[middle]).abs().max() > 1e-2


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_ddpm_and_ddim_step_from_the_clipped_x0(sampler):
    # analytic: recover the x0 each update used from two consecutive states (and the known step
    # noise) and compare it with the clipped x0 of the exact eps
    oracle = outside_oracle()
    net = Recorder(oracle)
    gds = make(net, sampler, True, eta=0.0)
    n = 8
    gds(ImageNoise(5, range(n)).draw(SHAPE), method='uncond', noise=ImageNoise(0, range(n)))
    replay = ImageNoise(0, range(n))  # DDPM's step noise, drawn in the same order
    steps = gds.timesteps()
    active = False
    for k, (t, t_prev) in enumerate(zip(steps[:-1], steps[1:])):
        x_t, x_prev = net.inputs[k], net.inputs[k + 1]
        tt = torch.full((n,), t)
        abar, abar_prev = gds.alphas_bar[t], gds.alphas_bar[t_prev]
        raw = (x_t - torch.sqrt(1 - abar) * oracle(x_t, tt)) / torch.sqrt(abar)
        if sampler == 'ddpm':  # x_prev = c1 x0 + c2 x_t + sigma z
            sigma = torch.exp(0.5 * gds.fixedlarge_log_var[t])
            used = ((x_prev - gds.posterior_mean_coef2[t] * x_t - sigma * replay.draw(SHAPE)) /
                    gds.posterior_mean_coef1[t])
        else:  # x_prev = sqrt(abar_prev) x0 + c (x_t - sqrt(abar) x0), eps re-derived from x0
            c = torch.sqrt((1 - abar_prev) / (1 - abar))
            used = (x_prev - c * x_t) / (torch.sqrt(abar_prev) - c * torch.sqrt(abar))
        assert torch.allclose(used, raw.clamp(-1, 1), atol=2e-3), (sampler, t)
        active = active or bool((raw.abs() > 1).any())
    assert active  # the clip had something to do


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_clipping_leaves_predictions_inside_the_range_alone(sampler):
    # data at 0 +- 0.1: the exact x0 predictions stay inside [-1, 1] and the clip changes
    # nothing (a clip, not a rescaling such as dynamic thresholding)
    oracle = GaussianOracle(torch.zeros(1, *SHAPE), [0.1], T=T_SMALL)
    x_T = ImageNoise(0, range(32)).draw(SHAPE)
    off, _ = make(oracle, sampler, False)(x_T, method='uncond', noise=ImageNoise(0, range(32)))
    on, _ = make(oracle, sampler, True)(x_T, method='uncond', noise=ImageNoise(0, range(32)))
    assert torch.allclose(on, off, atol=1e-4)


# --- per-image noise ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_unet():
    torch.manual_seed(0)
    net = UNet(T=20, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=5).eval()
    for p in net.parameters():  # make the output depend on everything
        torch.nn.init.normal_(p, std=0.05)
    return net


@pytest.mark.parametrize('sampler, eta', [('ddpm', 0.0), ('ddim', 1.0), ('dpm++2m-sde', 0.0)])
def test_generate_does_not_depend_on_the_batch_size(tiny_unet, sampler, eta):
    # every stochastic sampler. The noise of image i comes from its own generator whatever its
    # batch, so images agree across batch sizes up to the network's float rounding: the CPU
    # convolution kernels block their sums differently for other batch sizes (measured: 1.5e-7
    # at most), hence 1e-5; labels and reruns at the same batch size are exactly equal
    gds = GaussianDiffusionSampler(tiny_unet, 1e-4, 0.02, 20, 5, img_size=8, sampler=sampler,
                                   sample_steps=6, eta=eta, clip_denoised=True)

    def draw(batch_size, seed=3, n=7, first_index=0):
        return generate(gds, n, batch_size, 8, 'cpu', 'cfg', 1.0, seed, 'test',
                        first_index=first_index)
    images, labels = draw(3)
    again, again_labels = draw(3)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    for batch_size in (1, 7):
        other, other_labels = draw(batch_size)
        assert np.array_equal(other_labels, labels), batch_size
        assert np.abs(other - images).max() < 1e-5, (batch_size, np.abs(other - images).max())
    # a set split over processes: images 3..6 drawn alone are images 3..6 of the whole set
    part, part_labels = draw(2, n=4, first_index=3)
    assert np.array_equal(part_labels, labels[3:]) and np.abs(part - images[3:]).max() < 1e-5
    assert np.abs(draw(3, seed=4)[0] - images).max() > 1e-2  # the seed matters
    assert len(set(labels.tolist())) > 1


def test_sample_grid_does_not_depend_on_the_batch_size(tiny_unet):
    gds = GaussianDiffusionSampler(tiny_unet, 1e-4, 0.02, 20, 5, img_size=8, clip_denoised=True)
    x_T = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 2, 2, 4, 4])
    rng = torch.get_rng_state()
    grids = [draw_grid(gds, x_T, y, 'cfg', 1.0, b, seed=1) for b in (2, 5)]
    assert (grids[0] - grids[1]).abs().max() < 1e-5  # float rounding of other batch sizes
    assert torch.equal(torch.get_rng_state(), rng)  # the training run's stream is untouched
    other = draw_grid(gds, x_T, y, 'cfg', 1.0, 2, seed=2)
    assert not torch.equal(other, grids[0])  # DDPM's step noise comes from the seed


# --- settings, per use and auto ---------------------------------------------------------------
# What each use draws with by default and what --sampler auto stands for, as explicit flags (the
# README's statement of them): --eval the paper's DDPM over all T steps unclipped; grids,
# --sample and auto for --eval DPM-Solver++(2M) SDE, 20 lu steps, clipped; generated training
# sets (auto or unset) stochastic DDIM, 50 quad steps, eta 1, unclipped
EXPLICIT_DEFAULT = {'eval': dict(sampler='ddpm', clip_denoised=False)}
EXPLICIT_RECOMMENDED = dict(sampler='dpm++2m-sde', sample_steps=20, spacing='lu', eta=0.0,
                            clip_denoised=True)
EXPLICIT_SYNTHETIC = dict(sampler='ddim', sample_steps=50, spacing='quad', eta=1.0,
                          clip_denoised=False)
for use in ('grid', 'sample'):
    EXPLICIT_DEFAULT[use] = EXPLICIT_RECOMMENDED
EXPLICIT_DEFAULT['synthetic'] = EXPLICIT_SYNTHETIC
EXPLICIT_AUTO = {'eval': EXPLICIT_RECOMMENDED, 'grid': EXPLICIT_RECOMMENDED,
                 'sample': EXPLICIT_RECOMMENDED, 'synthetic': EXPLICIT_SYNTHETIC}


@pytest.fixture(scope='module')
def unet_t50():
    """A tiny conditional UNet for T = 50 whose x0 predictions leave [-1, 1] (clipping acts)."""
    torch.manual_seed(1)
    net = UNet(T=50, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=5).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def draw_with(net, use, **flags):
    """Images 0..3 (seed 0, labels 0..3, 'cond') drawn by build_sampler for `use` under these
    flags (the rest: cfg_namespace's), and the sampler's settings record."""
    gds = build_sampler(cfg_namespace(**flags), net, 5, use)
    images, _ = generate(gds, 4, 4, 8, 'cpu', 'cond', 0.0, 0, 'test',
                         classes=torch.arange(4))
    return images, gds.settings('cond')


def test_each_use_and_auto_draw_what_their_explicit_flags_draw(unet_t50, capsys):
    """The default of every use (no --sampler) and --sampler auto (whatever --sample_steps,
    --spacing and --eta say) draw exactly the images of the explicit flags they stand for; with
    the other clipping, the same flags draw other images (so clipping is part of what is
    compared). An explicit --noclip_denoised / --clip_denoised wins over auto's and the use's."""
    explicit = {}

    def explicit_draw(flags):
        key = tuple(sorted(flags.items()))
        if key not in explicit:
            explicit[key] = draw_with(unet_t50, 'eval', **flags)
        return explicit[key]

    for use in ('eval', 'grid', 'sample', 'synthetic'):
        for sampler, flags, want in ((None, {}, EXPLICIT_DEFAULT[use]),
                                     ('auto', dict(sample_steps=7, spacing='uniform', eta=0.3),
                                      EXPLICIT_AUTO[use])):
            images, settings = draw_with(unet_t50, use, sampler=sampler, **flags)
            want_images, want_settings = explicit_draw(want)
            assert np.array_equal(images, want_images), (use, sampler)
            assert settings == want_settings, (use, sampler)
            other_clip, _ = explicit_draw({**want, 'clip_denoised': not want['clip_denoised']})
            assert np.abs(other_clip - want_images).max() > 1e-3, (use, sampler)
    for use, clip in (('sample', False), ('eval', True), ('synthetic', True)):
        images, _ = draw_with(unet_t50, use, sampler='auto', clip_denoised=clip)
        assert np.array_equal(images, explicit_draw({**EXPLICIT_AUTO[use],
                                                     'clip_denoised': clip})[0]), (use, clip)
    images, _ = draw_with(unet_t50, 'grid', clip_denoised=False)
    assert np.array_equal(images, explicit_draw({**EXPLICIT_RECOMMENDED,
                                                 'clip_denoised': False})[0])
    # an explicit sampler keeps its own flags and takes the use's clipping
    gds = build_sampler(cfg_namespace(sampler='ddim', sample_steps=7, spacing='uniform',
                                      eta=0.3), unet_t50, 5, 'eval')
    assert (gds.settings('cond')['sample_steps'], gds.spacing, gds.eta,
            gds.clip_denoised) == (7, 'uniform', 0.3, False)
    capsys.readouterr()


def test_auto_fits_a_short_schedule_and_refuses_nothing_it_chose():
    """Auto never asks for more steps than the model has, nor a spacing it cannot place: at
    T = 10 it runs 10 steps, at T = 1 one step with 'default' spacing (2 evaluations guided)."""
    for T, steps in ((10, 10), (1, 1)):
        gds = build_sampler(cfg_namespace(sampler='auto', T=T), torch.nn.Identity(), 3, 'grid')
        settings = gds.settings('cfg', 1.0)
        assert settings['sampler'] == 'dpm++2m-sde' and settings['sample_steps'] == steps
        assert settings['nfe_per_image'] == 2 * len(gds.timesteps()) and gds.clip_denoised
        assert len(gds.timesteps()) == steps
    assert gds.spacing == 'default'
    # a log-SNR grid over one noise level: the run's one step starts at the training sigma of
    # t = 0, as the default spacing's does (main.py still asks for --spacing default at --T 1)
    from samplers import set_timesteps
    for spacing in ('lu', 'default'):
        scheduler = make_scheduler('dpm++2m-sde', torch.linspace(1e-4, 0.02, 1), spacing)
        assert set_timesteps(scheduler, 1) == [0]
        assert torch.allclose(scheduler.sigmas.double(),
                              torch.tensor([(1e-4 / (1 - 1e-4)) ** 0.5, 0.], dtype=torch.float64),
                              rtol=1e-4)
    with pytest.raises(ValueError):
        resolve(None, 7, 'auto', 0.0, None, 'bogus')
    with pytest.raises(ValueError):
        resolve('ddpm', 7, 'lu', 0.0, None, 'eval')


def cfg_namespace(**kwargs):
    base = dict(compile=False, beta_1=1e-4, beta_T=0.02, T=50, img_size=8, var_type='fixedlarge',
                sampler=None, sample_steps=50, eta=0.0, skip_type='quad', spacing='auto',
                amp='none', clip_denoised=None)
    return types.SimpleNamespace(**{**base, **kwargs})


def test_build_sampler_says_what_auto_resolved_to(capsys):
    """--sampler auto prints the settings of the sampler it built, in words, and which table
    they come from; an explicit sampler prints nothing."""
    gds = build_sampler(cfg_namespace(sampler='auto'), torch.nn.Identity(), 3, 'synthetic')
    got = gds.settings('cond')
    assert (got['sampler'], got['sample_steps'], got['spacing'], got['eta']) == (
        'ddim', 50, 'quad', 1.0)
    assert capsys.readouterr().out.strip() == (
        '--sampler auto (synthetic): ddim, 50 steps, quad spacing, eta 1, clip_denoised off '
        '(samplers.RECOMMENDED_SYNTHETIC)')
    build_sampler(cfg_namespace(), torch.nn.Identity(), 3, 'eval')
    assert capsys.readouterr().out == ''  # only auto (given or a use's default) announces itself
    gds = build_sampler(cfg_namespace(), torch.nn.Identity(), 3, 'grid')
    assert capsys.readouterr().out.strip() == (
        '--sampler auto (grid): dpm++2m-sde, 20 steps, lu spacing, clip_denoised on '
        '(samplers.RECOMMENDED)')
    assert (gds.sampler, gds.sample_steps, gds.spacing, gds.clip_denoised) == (
        'dpm++2m-sde', 20, 'lu', True)


class Counter(torch.nn.Module):
    """Counts network evaluations (images through the network)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x, t, y=None, augm=None):
        self.images += x.shape[0]
        return 0.1 * x


@pytest.mark.parametrize('sampler, steps, spacing', [
    ('ddpm', None, 'auto'), ('ddim', 7, 'quad'), ('dpm++2m', 50, 'default'),
    ('dpm++2m-sde', 10, 'lu'), ('unipc', 50, 'default')])
@pytest.mark.parametrize('method, omega, batched', [('cfg', 1.0, True), ('cfg', 1.0, False),
                                                    ('cfg', 0.0, True), ('cond', 2.0, True)])
def test_nfe_per_image_counts_the_network_evaluations(sampler, steps, spacing, method, omega,
                                                      batched):
    # 'default' spacing at steps = T = 50 drops a zero-length step: 49 steps actually run
    net = Counter()
    gds = GaussianDiffusionSampler(net, 1e-4, 0.02, 50, 3, img_size=2, sampler=sampler,
                                   sample_steps=steps, spacing=spacing, batched=batched)
    n = 4
    gds(torch.randn(n, *SHAPE), omega=omega, method=method, y=torch.arange(n) % 3)
    settings = gds.settings(method, omega)
    assert settings['nfe_per_image'] * n == net.images
    assert settings['sample_steps'] == (50 if sampler == 'ddpm' else steps)


# --- SDEdit start -------------------------------------------------------------------------------
@pytest.mark.parametrize('sampler', SAMPLERS)
def test_sdedit_from_t_0_returns_the_image(sampler):
    oracle = GaussianOracle(torch.zeros(1, *SHAPE), [0.3], T=T_SMALL)
    gds = make(oracle, sampler, False)
    n = 64
    x = 0.3 * ImageNoise(1, range(n)).draw(SHAPE)
    noise = ImageNoise(0, range(n))
    out, _ = gds(gds.noise_to(x, 0, noise.draw(SHAPE)), method='uncond', noise=noise, start_t=0)
    assert set(gds.timesteps(0)) == {0}  # steps at t = 0 only
    assert (out - x).abs().max() < 0.05 and (out - x).abs().mean() < 0.01


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_sdedit_from_t_minus_1_is_full_sampling(sampler):
    oracle = outside_oracle()
    gds = make(oracle, sampler, True)
    x_T = ImageNoise(7, range(8)).draw(SHAPE)
    full, _ = gds(x_T, method='uncond', noise=ImageNoise(0, range(8)))
    start, _ = gds(x_T, method='uncond', noise=ImageNoise(0, range(8)), start_t=T_SMALL - 1)
    assert torch.equal(full, start)
    assert gds.timesteps(T_SMALL - 1) == gds.timesteps()


# the steps of an SDEdit start (its own t, the schedule respaced over [0, t]): tests/
# test_translate_schedule.py


@pytest.mark.parametrize('sampler, steps', [('ddpm', None), ('dpm++2m-sde', 50)])
def test_sdedit_translates_to_the_target_class(sampler, steps):
    # Gaussian classes: 0 ~ N(-0.3, 0.1^2), 2 ~ N(0.3, 0.25^2). Images of class 0, noised to
    # t = T - 1 (full strength) and denoised with label 2, follow class 2's distribution; at a
    # low strength (t = 10) they stay near where they started
    means = torch.tensor([-0.3, 0.0, 0.3]).view(3, 1, 1, 1).expand(3, *SHAPE).clone()
    oracle = GaussianOracle(means, [0.1, 0.15, 0.25], priors=[0.6, 0.3, 0.1])
    gds = GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, 3, img_size=2, sampler=sampler,
                                   sample_steps=steps)
    n = 600
    source = -0.3 + 0.1 * ImageNoise(1, range(n)).draw(SHAPE)
    target = torch.full((n,), 2)
    out = {}
    for start_t in (999, 10):
        noise = ImageNoise(0, range(n))
        x_start = gds.noise_to(source, start_t, noise.draw(SHAPE))
        out[start_t], _ = gds(x_start, method='cond', y=target, noise=noise, start_t=start_t)
    assert abs(out[999].mean().item() - 0.3) < 0.015
    assert abs(out[999].std().item() / 0.25 - 1) < 0.05
    assert out[10].mean().item() < -0.2 and out[10].std().item() < 0.15


# --- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
    """FID statistics of fake CIFAR-10 (random Inception weights) and a 2-step conditional run
    whose training grid is drawn at its last step (1), the checkpoint of that step saved."""
    tmp = tmp_path_factory.mktemp('clip')
    data, env = fake_cifar10lt_with_stats(tmp)
    logdir = tmp / 'run'
    out = run_main('--train', *TINY, *data, '--conditional', '--cfg', '--total_steps=2',
                   '--save_step=0', '--sample_step=1', '--omega=1.0', f'--logdir={logdir}',
                   env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    eval_args = [f'--fid_cache={tmp}/stats/cifar10.train.npz', '--num_images=6',
                 '--batch_size=4', '--noprd', '--noimproved_prd']
    return logdir, env, eval_args


def png(path):
    return np.asarray(Image.open(path))


def last_record(logdir, name):
    records = [json.loads(r) for r in (logdir / 'eval.jsonl').read_text().splitlines()]
    return [r for r in records if r['name'] == name][-1]


def test_use_defaults_through_main(cli_run):
    logdir, env, eval_args = cli_run
    base = [f'--flagfile={logdir}/flagfile.txt', '--notrain', '--ckpt_step=1']
    stem = logdir / 'sample_cfg_1.0_STEP1'
    # --sample (default: DPM-Solver++(2M) SDE, 20 lu steps, clipped) redraws the training grid
    # (default: the same) exactly: same noise, labels and weights
    out = run_main(*base, '--sample', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    settings = json.loads((logdir / 'sample_cfg_1.0_STEP1_sampler.json').read_text())
    assert (settings['sampler'], settings['sample_steps'], settings['spacing'],
            settings['clip_denoised'], settings['sampler_flag']) == (
        'dpm++2m-sde', 20, 'lu', True, None)
    assert settings['nfe_per_image'] == 2 * 20      # guided
    grid = png(logdir / 'sample' / '1.png')
    assert np.array_equal(png(f'{stem}.png'), grid)
    # the barely trained model predicts x0 far outside [-1, 1]: unclipped, the same noise draws
    # another grid, so the training grid was drawn clipped
    out = run_main(*base, '--sample', '--noclip_denoised', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not np.array_equal(png(f'{stem}_dpm++2m-sde20lu.png'), grid)  # named after what differs
    # --eval (default: the paper's DDPM over all T steps, unclipped), in eval.jsonl and beside
    # the samples
    out = run_main(*base, '--eval', *eval_args, '--sample_name=defaults', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = last_record(logdir, 'defaults_N6_STEP1')
    assert (rec['sampler'], rec['sample_steps'], rec['spacing'], rec['eta'],
            rec['clip_denoised'], rec['nfe_per_image'], rec['sampler_flag']) == (
        'ddpm', 50, 'all', None, False, 100, None)
    saved = json.loads((logdir / 'cfg_1.0_sampler_ema_defaults_N6_STEP1.json').read_text())
    assert {k: saved[k] for k in ('sampler', 'clip_denoised', 'nfe_per_image')} == {
        'sampler': 'ddpm', 'clip_denoised': False, 'nfe_per_image': 100}
    assert 'sampler=ddpm steps=50 clip_denoised=False' in (
        logdir / 'res_ema_defaults_N6_STEP1.txt').read_text()


def test_sampler_auto_through_main(cli_run):
    logdir, env, eval_args = cli_run
    base = [f'--flagfile={logdir}/flagfile.txt', '--notrain', '--ckpt_step=1']
    # auto stands for DPM-Solver++(2M) SDE, 20 lu steps, clipped, whatever --sample_steps,
    # --spacing and --eta say; it prints them and records them
    out = run_main(*base, '--eval', *eval_args, '--sample_name=auto', '--sampler=auto',
                   '--sample_steps=3', '--spacing=uniform', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ('--sampler auto (eval): dpm++2m-sde, 20 steps, lu spacing, clip_denoised on '
            '(samplers.RECOMMENDED)') in out.stdout
    rec = last_record(logdir, 'auto_N6_STEP1_dpm++2m-sde20lu_clip')  # named after the settings
    assert (rec['sampler'], rec['sample_steps'], rec['spacing'], rec['clip_denoised'],
            rec['nfe_per_image'], rec['sampler_flag'], rec['eta']) == (
        'dpm++2m-sde', 20, 'lu', True, 40, 'auto', None)
    # an explicit --noclip_denoised is honoured under auto: it draws exactly what the explicit
    # flags draw
    out = run_main(*base, '--sample', '--sampler=auto', '--noclip_denoised', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'clip_denoised off' in out.stdout
    stem = logdir / 'sample_cfg_1.0_STEP1_dpm++2m-sde20lu'
    settings = json.loads(stem.with_name(stem.name + '_sampler.json').read_text())
    assert (settings['sampler'], settings['clip_denoised'], settings['sampler_flag']) == (
        'dpm++2m-sde', False, 'auto')
    out = run_main(*base, '--sample', '--sampler=dpm++2m-sde', '--sample_steps=20',
                   '--spacing=lu', '--noclip_denoised', '--sample_name=explicit', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert np.array_equal(np.load(f'{stem}.npy'), np.load(logdir / 'explicit.npy'))


@pytest.mark.parametrize('args, flag', [
    (['--sampler=dpm++2m-sde', '--eta=0.5'], '--eta'),
    (['--sampler=dpm++2m-sde', '--spacing=quad'], '--spacing'),
    (['--sampler=dpm++2m-sde', '--sample_steps=60'], '--sample_steps'),
    (['--spacing=lu'], '--spacing'),  # unset --sampler: every use's default (ddpm) offers auto
])
def test_sampler_flag_domains(tmp_path, args, flag):
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--total_steps=1',
                   f'--logdir={tmp_path}/run', *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert flag in lines[0] and not (tmp_path / 'run').exists()


def test_auto_is_accepted_whatever_steps_spacing_and_eta_say(tmp_path):
    # --T 50 with --sample_steps 60, --spacing lu and --eta 0.5 would be refused for dpm++2m;
    # auto ignores them, and the training grid (use 'grid') is drawn with RECOMMENDED
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--total_steps=2', '--save_step=0',
                   '--sample_step=1', '--sample_size=2', '--sampler=auto', '--sample_steps=60',
                   '--spacing=lu', '--eta=0.5', f'--logdir={tmp_path}/run')
    assert out.returncode == 0, out.stderr[-3000:]
    assert '--sampler auto (grid): dpm++2m-sde, 20 steps, lu spacing, clip_denoised on' in (
        out.stdout)
    assert (tmp_path / 'run' / 'sample' / '1.png').is_file()


def test_generated_sets_and_images_to_look_at_have_their_own_auto(monkeypatch):
    """Generated training sets may be drawn otherwise than images to look at (the recognition
    outcome decides for them): auto follows RECOMMENDED_SYNTHETIC there, RECOMMENDED elsewhere."""
    import samplers
    monkeypatch.setattr(samplers, 'RECOMMENDED_SYNTHETIC', dict(
        sampler='dpm++2m-sde', sample_steps=20, spacing='lu', eta=0.0, clip_denoised=False))
    monkeypatch.setattr(samplers, 'RECOMMENDED', dict(
        sampler='unipc', sample_steps=10, spacing='exponential', eta=0.0, clip_denoised=True))
    args = (50, 'auto', 0.0)
    for sampler in (None, 'auto'):
        s = resolve(sampler, *args, None, 'synthetic')
        assert (s.sampler, s.sample_steps, s.spacing, s.clip_denoised) == (
            'dpm++2m-sde', 20, 'lu', False)
    s = resolve('auto', *args, None, 'eval')
    assert (s.sampler, s.sample_steps, s.spacing, s.clip_denoised) == (
        'unipc', 10, 'exponential', True)
    assert resolve('auto', *args, True, 'synthetic').clip_denoised    # explicit wins
    assert not resolve('auto', *args, False, 'grid').clip_denoised
