"""Head-to-tail translation (--synthetic_source translate): the choice of sources, the start
of the reverse process, what strength does (analytically, on Gaussian classes whose exact eps
is known), and --classify end to end with fill, filter, CAS, reuse and bad input."""
import json
import os

import numpy as np
import pytest
import torch

import recognition.translate as T
from diffusion import GaussianDiffusionSampler
from evaluation import generate
from helpers import ROOT, TINY, run_main, run_main_in_process
from oracle import GaussianOracle
from utils import UserError

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt'), '--cls_epochs=1',
          '--cls_eval_every=0']
COUNTS = [148, 117, 88, 71, 54, 42, 32, 24, 18, 15]  # digits-LT at 0.1


def test_source_classes_and_their_parsing():
    counts = [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]   # MNIST-LT: many > 100, few < 20
    assert T.source_classes('many', counts, 100, 20) == [0, 1, 2]
    assert T.source_classes('many+medium', counts, 100, 20) == [0, 1, 2, 3, 4, 5]
    assert T.source_classes('medium+many', counts, 100, 20) == [0, 1, 2, 3, 4, 5]
    assert T.source_classes('few', counts, 100, 20) == [6, 7, 8, 9]
    assert T.source_classes('all', counts, 100, 20) == list(range(10))
    assert T.source_classes('3,1,1', counts, 100, 20) == [1, 3]
    with pytest.raises(UserError, match='12'):
        T.source_classes('1,12', counts, 100, 20)
    for bad in ('', 'head', 'many+', 'many,1', '-1', '1.5'):
        with pytest.raises(ValueError):
            T.parse_from(bad)


def test_sources_come_from_other_source_classes_deterministically():
    targets = np.repeat(np.arange(4), [50, 30, 10, 5])
    per_class = np.array([0, 20, 40, 45])
    chosen = T.choose_sources(targets, per_class, [0, 1], seed=3)
    assert len(chosen) == 105
    # class 1's twenty come from class 0 only (never from class 1 itself)
    assert set(targets[chosen[:20]]) == {0}
    assert set(targets[chosen[20:]]) <= {0, 1} and len(set(targets[chosen[20:]])) == 2
    assert np.array_equal(chosen, T.choose_sources(targets, per_class, [0, 1], seed=3))
    assert not np.array_equal(chosen, T.choose_sources(targets, per_class, [0, 1], seed=4))
    # class 0 needs images but its only source class is itself
    with pytest.raises(UserError, match='no source images for class 0'):
        T.choose_sources(targets, np.array([5, 0, 0, 0]), [0], seed=0)


def oracle_sampler(sampler='ddim', steps=50, eta=1.0):
    """Two Gaussian classes of 4 x 4 images, means -0.5 and +0.5, std 0.3, and their exact eps
    (T = 1000: at full strength sqrt(abar) = 0.006 is all that is left of a source)."""
    means = torch.stack([torch.full((3, 4, 4), -0.5), torch.full((3, 4, 4), 0.5)])
    oracle = GaussianOracle(means, [0.3, 0.3], T=1000)
    return GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, 2, img_size=4, sampler=sampler,
                                    sample_steps=steps, eta=eta)


@pytest.mark.parametrize('sampler, steps, eta', [('ddim', 50, 1.0), ('ddpm', None, 0.0),
                                                 ('dpm++2m', 20, 0.0)])
def test_strength_near_zero_keeps_the_source_and_one_ignores_it(sampler, steps, eta):
    gds = oracle_sampler(sampler, steps, eta)
    n = 64
    g = torch.Generator().manual_seed(0)
    sources = (torch.rand(n, 3, 4, 4, generator=g) * 2 - 1)        # anything in [-1, 1]
    others = -sources
    labels = np.ones(n, np.int64)                                   # translate into class 1

    def translate(starts, strength):
        start_t = T.start_step(gds, strength)
        x, _ = generate(gds, n, 16, 4, torch.device('cpu'), 'cond', 0.0, 7, 'test',
                        classes=labels, starts=starts, start_t=start_t)
        return torch.from_numpy(x) * 2 - 1

    near = translate(sources, 0.001)
    assert T.start_step(gds, 0.001) == 0
    assert (near - sources).abs().max() < 0.05                     # one step from t = 0
    full_a, full_b = translate(sources, 1.0), translate(others, 1.0)
    # the same noise, opposite sources: nearly the same images, of the target class
    assert (full_a - full_b).abs().max() < 0.05
    assert full_a.mean().item() == pytest.approx(0.5, abs=0.03)
    assert full_a.std().item() == pytest.approx(0.3, abs=0.03)

    def corr(x):
        return np.corrcoef(x.flatten().numpy(), sources.flatten().numpy())[0, 1]
    # in between, from x_t at a = abar of the start with E[x_t] = sqrt(a) source, the target
    # class N(mu, s^2) gives an affine map x_t -> x_0 = mu + k (x_t - sqrt(a) mu): a stochastic
    # sampler draws from the posterior, whose mean has k = sqrt(a) s^2 / (a s^2 + 1 - a); the
    # deterministic ODE transports x_t with k = s / sqrt(a s^2 + 1 - a). So the samples' mean is
    # mu + k sqrt(a) (source - mu) per pixel, and the source stays visible
    part = translate(sources, 0.2)
    a = gds.alphas_bar[T.start_step(gds, 0.2)].double()
    stochastic = sampler == 'ddpm' or eta > 0
    k = a.sqrt() * 0.09 / (a * 0.09 + 1 - a) if stochastic else 0.3 / (a * 0.09 + 1 - a).sqrt()
    expected = 0.5 + k * a.sqrt() * (sources.double() - 0.5)
    assert part.mean().item() == pytest.approx(expected.mean().item(), abs=0.02)
    assert corr(part) > 0.1 and abs(corr(full_a)) < 0.05


def test_start_step_is_the_strengths_own_step_for_every_spacing():
    # DDIM 20 quad's full run used to start at 800 and 50 uniform at 980, capping the strengths
    # above; every run now starts at T - 1 and a strength at its own round(s T) - 1
    # (tests/test_translate_schedule.py checks every sampler, spacing and step count)
    for spacing, steps in (('uniform', 50), ('quad', 20), ('quad', 50)):
        gds = GaussianDiffusionSampler(torch.nn.Identity(), 1e-4, 0.02, 1000, 2, img_size=4,
                                       sampler='ddim', sample_steps=steps, spacing=spacing)
        assert gds.timesteps()[0] == 999
        for strength, t in ((1.0, 999), (0.99, 989), (0.9, 899), (0.8, 799), (0.25, 249)):
            assert T.start_step(gds, strength) == t and gds.timesteps(t)[0] == t
    assert T.start_step(oracle_sampler('ddpm', None, 0.0), 1.0) == 999
    with pytest.raises(UserError, match='--translate_strength'):
        T.start_step(oracle_sampler('ddpm', None, 0.0), 1e-6)


@pytest.fixture(scope='module')
def diffusion_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp('translate') / 'run'
    out = run_main('--train', *TINY, '--T=100', '--conditional', '--cfg', '--total_steps=2',
                   '--save_step=1', '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir


def test_classify_with_translated_images(tmp_path, diffusion_run):
    logdir = tmp_path / 'cls'
    args = [*DIGITS, f'--synthetic_logdir={diffusion_run}', '--ckpt_step=1',
            '--synthetic_source=translate', '--translate_strength=0.3', '--translate_from=many',
            '--many_shot=100', '--sampler=ddim', '--sample_steps=10', '--omega=1.0',
            '--synthetic_fill=4', f'--logdir={logdir}']
    out = run_main(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    assert rec['synthetic_source'] == 'translate' and rec['translate_strength'] == 0.3
    assert rec['translate_classes'] == [0, 1] and rec['translate_start_t'] == 29   # round(0.3 * 100) - 1
    assert rec['num_generated'] == 40 and rec['synthetic_sampler'] == 'ddim'
    saved = rec['synthetic']
    assert 'translate0.3frommany' in saved and saved.startswith(str(logdir / 'synthetic'))
    sources = np.load(saved[:-4] + '_sources.npy')
    import dataset as D
    real = D.build_dataset('digitslt', '', 8, 0.1)
    labels = np.load(saved[:-4] + '_labels.npy')
    assert np.bincount(labels, minlength=10).tolist() == [4] * 10
    src_labels = real.targets[sources]
    assert set(src_labels) <= {0, 1} and (src_labels != labels).all()
    # the pairs grid: a row per target class (10), 5 pairs a row (4 filled), 8 x 8 cells padded
    # by 2 and scaled to 64; a row starts with its class's first source, then its translation
    from PIL import Image
    png = np.asarray(Image.open(logdir / 'translate_pairs_s0.3.png').convert('RGB')) / 255
    assert png.shape == (8 * 102, 8 * 102, 3)

    def cell(row, col):
        y, x = 8 * (2 + 10 * row), 8 * (2 + 10 * col)
        return png[y:y + 64:8, x:x + 64:8].transpose(2, 0, 1)
    for c in (0, 9):
        i = np.flatnonzero(labels == c)[0]
        source = (real[int(sources[i])][0].numpy() + 1) / 2
        assert np.abs(cell(c, 0) - source).max() < 1 / 255, c
        assert np.abs(cell(c, 1) - np.load(saved)[i]).max() < 1 / 255, c
        assert (cell(c, 9) == 1).all() and not (cell(c, 7) == 1).all(), c
    # the translated images stay close to their sources (strength 0.3 of a 100-step schedule)
    images = np.load(saved).astype(np.float32) * 2 - 1
    starts = torch.stack([real[int(i)][0] for i in sources]).numpy()
    assert np.abs(images - starts).mean() < 0.5
    # rerun: the set is reused; CAS of translations
    (logdir / 'eval.jsonl').unlink()
    again = run_main(*args)
    assert again.returncode == 0 and 'reusing the generated images' in again.stdout
    cas = run_main(*args[:-1], '--synthetic_only', '--synthetic_fill=3', f'--logdir={tmp_path / "cas"}')
    assert cas.returncode == 0, cas.stderr[-3000:]
    rec = json.loads((tmp_path / 'cas' / 'eval.jsonl').read_text().splitlines()[-1])
    assert rec['mode'] == 'cas' and rec['num_generated'] == 30


@pytest.mark.parametrize('extra, message', [
    (['--translate_strength=0'], '--translate_strength'),
    (['--translate_strength=1.5'], '--translate_strength'),
    (['--translate_strength=0.004'], 'below the first of the generator'),  # T = 100: no step
    (['--translate_from=head'], '--translate_from'),
    (['--translate_from=many', '--many_shot=500'], 'no class is in that set'),
    (['--translate_from=0', '--synthetic_only'], 'no source images for class 0'),
])
def test_bad_translation_input_is_one_line_and_writes_nothing(tmp_path, diffusion_run, extra,
                                                              message):
    logdir = tmp_path / 'cls'
    out = run_main(*DIGITS, f'--synthetic_logdir={diffusion_run}', '--ckpt_step=1',
                   '--synthetic_source=translate', '--sampler=ddim', '--sample_steps=5', *extra,
                   f'--logdir={logdir}')
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert message in lines[-1] and not logdir.exists()


def test_translate_needs_a_diffusion_run(tmp_path):
    out = run_main_in_process(*DIGITS, '--synthetic_source=translate', f'--logdir={tmp_path / "cls"}')
    assert out.returncode == 2 and '--synthetic_logdir' in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / 'cls').exists()
