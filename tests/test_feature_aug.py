"""Feature-level augmentation (`main.py --classify --feature_aug`): the MLP denoiser under the
project's own diffusion trainer and sampler reproduces Gaussian class-conditional features, the
class-balancing regulariser works in feature space, the stage end to end on digits-LT, exact
resumption and SIGTERM, and bad input (one line, nothing written)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import recognition.classify as K
import recognition.feature_aug as FA
import recognition.feature_diffusion as FD
import runfolder
from helpers import ROOT, event_scalars, popen_main, run_main
from utils import UserError

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt')]
COUNTS = np.array([148, 117, 88, 71, 54, 42, 32, 24, 18, 15])  # digits-LT at 0.1
FILL = (148 - COUNTS).tolist()
# a small feature stage: 2 classifier epochs, a 64-wide one-block denoiser, T 100, DDPM
SMALL = ['--cls_epochs=2', '--feature_aug', '--T=100', '--beta_T=0.2', '--feat_steps=40',
         '--feat_width=64', '--feat_blocks=1', '--feat_head_epochs=5', '--sampler=ddpm']
CPU = torch.device('cpu')


def cfg_of(*args):
    """The namespace main.py hands to the other modules for these command-line arguments."""
    from absl import flags
    import main
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(main.expand_argv(['main.py', *map(str, args)]))
        return main.config()
    finally:
        flags.FLAGS.unparse_flags()


class NoStop:
    signal = None


class StopAfter(runfolder.StopRequest):
    """A StopRequest that 'receives' SIGTERM from its n-th look at `signal` on."""
    n = 0

    @property
    def signal(self):
        type(self).n -= 1
        return 'SIGTERM' if type(self).n < 0 else None

    @signal.setter
    def signal(self, value):
        pass


def gaussian_features(counts, dim=8, seed=0):
    """Class c ~ N(mu_c, diag(sd_c^2)), mu_c ~ U(-2, 2)^D, sd_c ~ U(0.5, 1.5)^D: (x N x D
    float32, y N int64)."""
    rng = np.random.RandomState(seed)
    mu = rng.uniform(-2, 2, (len(counts), dim))
    sd = rng.uniform(0.5, 1.5, (len(counts), dim))
    x = np.concatenate([mu[c] + sd[c] * rng.randn(n, dim) for c, n in enumerate(counts)])
    return x.astype(np.float32), np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def records(path):
    return [json.loads(line) for line in open(path).read().splitlines()]


def per_class(path):
    lines = open(path).read().splitlines()
    return [dict(zip(lines[0].split(','), line.split(','))) for line in lines[1:]]


def tree(folder):
    """{relative path: (size, mtime_ns)} of every file under `folder`."""
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(base, f))
            out[os.path.relpath(os.path.join(base, f), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_one_line_error(out, *needles):
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# the denoiser: the project's trainer and sampler on B x D vectors

def test_denoiser_has_the_unet_calling_convention():
    torch.manual_seed(0)
    net = FD.MLPDenoiser(dim=5, num_class=3, T=20, width=16, blocks=2)
    x, t = torch.randn(4, 5), torch.tensor([0, 3, 7, 19])
    assert torch.equal(net(x, t), torch.zeros(4, 5))           # zero-initialised last layer
    for p in net.out[-1].parameters():
        torch.nn.init.normal_(p)
    y = torch.tensor([0, 2, -1, 1])
    out = net(x, t, y=y)
    assert out.shape == (4, 5)
    # label -1 is "no label" for that sample, exactly as y=None for the batch
    assert torch.allclose(out[2], net(x, t)[2], atol=1e-6)
    assert not torch.allclose(out[0], net(x, t)[0])
    assert torch.equal(net(x, t, y=y, augm=torch.zeros(4, 9)), out)   # augm is ignored


def test_denoiser_reproduces_gaussian_class_means_and_variances(tmp_path):
    """The 'Done when' check: per-class Gaussian features (D = 8, 3 classes of 2000 / 600 / 200
    vectors with their own means and per-dimension stds), standardised, trained with the
    project's GaussianDiffusionTrainer (--cfg label dropout), sampled with DDPM over all T steps
    and de-standardised: every class's per-dimension mean is within 0.1 of its std and its
    variance within a factor 0.8..1.25 of the training data's (on average within 10% in log),
    and no sample lies more than 6 stds from its class mean, for 1500 samples per class.
    (Monte-Carlo noise alone: about 0.03 std for the means, a standard error of 0.04 for a
    variance ratio, a largest |z| of about 4.) Sampling with cfg at omega 0 is the cond sampler
    exactly."""
    counts = [2000, 600, 200]
    x, y = gaussian_features(counts)
    cfg = cfg_of('--classify', '--feature_aug', '--cfg', '--T=250', '--beta_T=0.08',
                 '--feat_steps=3000', '--feat_width=128', '--feat_blocks=2', '--feat_lr=2e-3',
                 '--feat_save_step=0', '--sampler=ddpm', '--sample_method=cond',
                 f'--logdir={tmp_path}')
    stats = FD.FeatureStats.of(x)
    model, status = FD.train_feature_model(cfg, stats.standardise(x), y, np.array(counts), stats,
                                           str(tmp_path / 'fd'), CPU, NoStop())
    assert status == 'done'
    z, labels = FD.sample_features(cfg, model, [1500] * 3, CPU)
    gen = stats.restore(z)
    assert gen.shape == (4500, 8) and np.isfinite(gen).all()
    for c in range(3):
        real, drawn = x[y == c], gen[labels == c]
        mean_err = np.abs(drawn.mean(0) - real.mean(0)) / real.std(0)
        var_ratio = drawn.var(0) / real.var(0)
        assert mean_err.max() < 0.1, (c, mean_err)
        assert 0.8 < var_ratio.min() and var_ratio.max() < 1.25, (c, var_ratio)
        assert np.abs(np.log(var_ratio)).mean() < 0.1, (c, var_ratio)
        assert np.abs((drawn - real.mean(0)) / real.std(0)).max() < 6, c   # no stray samples
    cfg.sample_method, cfg.omega = 'cfg', 0.0
    z_cfg, _ = FD.sample_features(cfg, model, [20] * 3, CPU)
    cfg.sample_method = 'cond'
    z_cond, _ = FD.sample_features(cfg, model, [20] * 3, CPU)
    assert np.array_equal(z_cfg, z_cond)


def test_class_balancing_in_feature_space(tmp_path, monkeypatch):
    """--cb: the trainer gets the real class frequencies as its target distribution and --tau;
    the regulariser is non-zero and logged (tensorboard loss_reg); without --cb it is zero."""
    made = []

    class Spy(FD.GaussianDiffusionTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(FD, 'GaussianDiffusionTrainer', Spy)
    counts = [60, 20, 8]
    x, y = gaussian_features(counts, dim=4)
    stats = FD.FeatureStats.of(x)
    for cb in (True, False):
        folder = tmp_path / f'cb{cb}'
        cfg = cfg_of('--classify', '--feature_aug', '--cb' if cb else '--nocb', '--tau=2.5',
                     '--nocfg', '--T=100', '--feat_steps=40', '--feat_width=32',
                     '--feat_blocks=1', '--feat_batch_size=32', f'--logdir={tmp_path}')
        _, status = FD.train_feature_model(cfg, stats.standardise(x), y, np.array(counts), stats,
                                           str(folder), CPU, NoStop())
        assert status == 'done'
        trainer = made[-1]
        assert trainer.cb is cb and trainer.cfg is False
        logged = dict(event_scalars(folder)['loss_reg'])
        assert sorted(logged) == [10, 20, 30, 40]
        if cb:
            assert trainer.tau == 2.5
            assert torch.allclose(trainer.weight, torch.tensor([60, 20, 8]) / 88.0)
            # --cb drops the labels of a tenth of the batches, so a 10-step window may hold
            # unconditional ones, but not all of them
            assert all(v > 0 for v in logged.values()), logged
        else:
            assert all(v == 0 for v in logged.values())
        ckpt = FD.load_feature_checkpoint(str(folder / 'ckpt_40.pt'))
        assert ckpt['settings']['cb'] is cb and ckpt['class_counts'].tolist() == counts


def test_standardisation_and_the_folded_head():
    rng = np.random.RandomState(0)
    f = (rng.rand(50, 6) * [1, 10, 0.1, 3, 0, 2] + [0, 5, -1, 2, 7, 0]).astype(np.float32)
    stats = FD.FeatureStats.of(f)
    z = stats.standardise(f)
    assert np.allclose(z.mean(0), 0, atol=1e-5)
    assert np.allclose(z.std(0)[[0, 1, 2, 3, 5]], 1, atol=1e-4) and np.all(z[:, 4] == 0)
    assert np.allclose(stats.restore(z), f, atol=1e-5)            # a constant dim comes back
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    folded = FA.fold_head(head, stats)
    assert torch.allclose(folded(torch.from_numpy(f)), head(torch.from_numpy(z)), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the stage on digits-LT

@pytest.fixture(scope='module')
def stage_run(tmp_path_factory):
    """`--classify --feature_aug` on digits-LT: CBDM in feature space (--cb --tau 1), cfg
    sampling with omega 0.5, every class filled up to the head's 148."""
    logdir = tmp_path_factory.mktemp('fa') / 'run'
    args = [*DIGITS, *SMALL, '--cb', '--tau=1.0', '--sample_method=cfg', '--omega=0.5',
            f'--logdir={logdir}']
    out = run_main(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir, args, out


def test_feature_aug_writes_its_results_and_fills_every_class_to_the_head(stage_run):
    logdir, args, out = stage_run
    [base] = records(logdir / 'eval.jsonl')            # the classifier's own results stay
    assert base['mode'] == 'ce' and base['epochs'] == 2
    [rec] = records(logdir / 'feature_aug' / 'eval.jsonl')
    assert rec['kind'] == 'classify' and rec['mode'] == 'feature_aug'
    assert rec['feat_source'] == 'diffusion' and rec['classifier_logdir'] == str(logdir)
    assert (rec['cb'], rec['tau'], rec['cfg'], rec['omega']) == (True, 1.0, False, 0.5)
    assert (rec['feat_steps'], rec['sampler'], rec['sample_method']) == (40, 'ddpm', 'cfg')
    assert rec['synthetic_fill'] == 'head' and rec['T'] == 100 and rec['feature_dim'] == 128
    assert rec['num_generated'] == sum(FILL) == 871 and rec['test_images'] == 300
    assert rec['base_top1'] == pytest.approx(base['top1'])
    rows = per_class(logdir / 'feature_aug' / 'per_class.csv')
    # top-1 (all and per group) is the mean of the per-class accuracies written beside it (30
    # test digits a class), and results.txt says the same
    assert [int(r['test_count']) for r in rows] == [30] * 10
    for key, group in (('top1', None), ('top1_many', 'many'), ('top1_few', 'few')):
        accs = [float(r['accuracy']) for r in rows if group in (None, r['group'])]
        assert len(accs) > 0 and rec[key] == pytest.approx(np.mean(accs), abs=1e-5), key
    assert f'top-1 {100 * rec["top1"]:.2f}' in (logdir / 'feature_aug' / 'results.txt').read_text()
    assert [int(r['generated_count']) for r in rows] == FILL
    assert [int(r['train_count']) for r in rows] == COUNTS.tolist()
    with np.load(rec['features']) as f:
        feats, labels = f['features'], f['labels']
    assert feats.shape == (871, 128) and np.isfinite(feats).all()
    assert np.bincount(labels, minlength=10).tolist() == FILL
    folder = logdir / 'feature_diffusion'
    ckpt = FD.load_feature_checkpoint(str(folder / 'ckpt_40.pt'))
    assert ckpt['class_counts'].tolist() == COUNTS.tolist()     # cb's target: real frequencies
    assert ckpt['settings']['cb'] and ckpt['settings']['dim'] == 128
    assert {'results.txt', 'confusion.png'} <= set(os.listdir(logdir / 'feature_aug'))
    assert 'loss_reg' in event_scalars(folder)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('wrote ') and 'feature_aug' in last


def test_feature_aug_resumes_reuses_and_adds_settings(stage_run):
    logdir, args, _ = stage_run
    again = run_main(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'already evaluated' in again.stdout
    assert len(records(logdir / 'feature_aug' / 'eval.jsonl')) == 1
    # another omega: the feature model is reused, new features are drawn, a second record
    other = run_main(*args[:-2], '--omega=1.5', args[-1])
    assert other.returncode == 0, other.stderr[-2000:]
    assert 'feature model already trained' in other.stdout
    assert 'drawing 871 features' in other.stdout
    first, second = records(logdir / 'feature_aug' / 'eval.jsonl')
    assert second['omega'] == 1.5 and second['features'] != first['features']
    assert second['settings_hash'] != first['settings_hash']


def test_crt_control_on_a_trained_classifier(stage_run, tmp_path):
    classifier_dir, _, _ = stage_run
    before = tree(classifier_dir)
    logdir = tmp_path / 'crt'
    out = run_main(*DIGITS, *SMALL, '--feat_source=none',
                   f'--feature_classifier_logdir={classifier_dir}', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'epoch 1/' not in out.stderr                   # no classifier is trained
    [rec] = records(logdir / 'feature_aug' / 'eval.jsonl')
    assert rec['feat_source'] == 'none' and rec['num_generated'] == 0 and 'cb' not in rec
    assert rec['classifier_logdir'] == str(classifier_dir) and rec['arch'] == 'cnn'
    # the last layer re-trained (class-balanced) on the classifier's own real features: far
    # above chance (0.1) and above the 2-epoch classifier it re-heads (measured 0.92 vs 0.39)
    assert rec['top1'] > max(0.6, rec['base_top1']), rec
    assert not (logdir / 'feature_diffusion').exists()
    assert tree(classifier_dir) == before                # nothing written into the classifier's


# ---------------------------------------------------------------------------------------------
# exact resumption and signals

def test_interrupted_feature_training_equals_straight(tmp_path):
    x, y = gaussian_features([50, 20, 10], dim=6)
    stats = FD.FeatureStats.of(x)
    z = stats.standardise(x)
    args = ['--classify', '--feature_aug', '--cb', '--cfg', '--T=50', '--feat_steps=30',
            '--feat_width=32', '--feat_blocks=1', '--feat_batch_size=16', '--feat_save_step=0',
            '--seed=3']
    cfg = cfg_of(*args, f'--logdir={tmp_path}')
    settings = FD.training_settings(cfg, 6, 3)

    def train(folder, stop):
        found = FD.resumable_checkpoint(str(folder), settings)
        return FD.train_feature_model(cfg, z, y, np.array([50, 20, 10]), stats, str(folder),
                                      CPU, stop, found)[1]

    assert train(tmp_path / 'a', NoStop()) == 'done'
    for n in (7, 11):       # stopped after step 8, then after step 8 + 12
        StopAfter.n = n
        assert train(tmp_path / 'b', StopAfter()) == 'stopped'
    assert sorted(os.listdir(tmp_path / 'b'))[:2] == ['ckpt_20.pt', 'ckpt_8.pt']
    assert train(tmp_path / 'b', NoStop()) == 'done'
    a = FD.load_feature_checkpoint(str(tmp_path / 'a' / 'ckpt_30.pt'))
    b = FD.load_feature_checkpoint(str(tmp_path / 'b' / 'ckpt_30.pt'))
    for part in ('net_model', 'ema_model'):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for sa, sb in zip(a['optim']['state'].values(), b['optim']['state'].values()):
        assert torch.equal(sa['exp_avg'], sb['exp_avg'])
    assert a['sched'] == b['sched']
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])


def test_interrupted_stage_equals_straight(tmp_path, monkeypatch):
    """The whole stage, stopped inside the feature model's training and resumed, draws the same
    features and scores the same as a straight run."""
    args = [*DIGITS, *SMALL, '--cfg', '--omega=1.0']
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "a"}'), '') == 'done'
    monkeypatch.setattr(FA, 'StopRequest', StopAfter)
    StopAfter.n = 15
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'stopped'
    assert os.listdir(tmp_path / 'b' / 'feature_diffusion').count('ckpt_16.pt') == 1
    assert not (tmp_path / 'b' / 'feature_aug').exists()
    StopAfter.n = 10 ** 9
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'done'
    [ra] = records(tmp_path / 'a' / 'feature_aug' / 'eval.jsonl')
    [rb] = records(tmp_path / 'b' / 'feature_aug' / 'eval.jsonl')
    with np.load(ra['features']) as fa, np.load(rb['features']) as fb:
        assert np.array_equal(fa['features'], fb['features'])
    assert ra['top1'] == rb['top1'] and ra['top1_few'] == rb['top1_few']


def test_sigterm_saves_the_feature_model_and_exits_zero(tmp_path):
    proc = popen_main(*DIGITS, *SMALL, '--cls_epochs=1', '--feat_steps=1000000',
                      '--feat_save_step=0', f'--logdir={tmp_path}')
    folder = tmp_path / 'feature_diffusion'
    start = time.time()
    while not (folder.is_dir() and any(n.startswith('events') for n in os.listdir(folder))):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < 180
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert 'SIGTERM: saved' in stdout and 'run the same command again' in stdout
    [name] = [n for n in os.listdir(folder) if n.startswith('ckpt_')]
    ckpt = FD.load_feature_checkpoint(str(folder / name))
    assert 1 <= ckpt['step'] < 1000000 and name == f'ckpt_{ckpt["step"]}.pt'
    assert not (tmp_path / 'feature_aug').exists()


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written

def write_feature_checkpoint(folder, dim, *args):
    """A finished feature model of `dim`-d features and 10 classes trained with the flags."""
    cfg = cfg_of(*args)
    x = np.random.RandomState(0).randn(40, dim).astype(np.float32)
    y = np.arange(40) % 10
    stats = FD.FeatureStats.of(x)
    FD.train_feature_model(cfg, stats.standardise(x), y, np.bincount(y), stats, str(folder), CPU,
                           NoStop())


def refused(*args):
    """The UserError message of classify() on these flags (in-process: what main.py prints as
    'error: MESSAGE'), checked to be one line."""
    with pytest.raises(UserError) as e:
        K.classify(cfg_of(*args), '')
    assert '\n' not in str(e.value)
    return str(e.value)


def test_a_feature_model_of_another_dimension_is_refused(stage_run, tmp_path):
    classifier_dir, _, _ = stage_run
    flags = [*DIGITS, *SMALL, '--cb', '--tau=1.0']
    for external in (True, False):
        logdir = tmp_path / f'ext{external}'
        write_feature_checkpoint(logdir / 'feature_diffusion', 64, *flags, f'--logdir={logdir}')
        before = tree(logdir)
        ckpt = str(logdir / 'feature_diffusion' / 'ckpt_40.pt')
        if external:     # through main.py: one line on stderr, exit status 2
            out = run_main(*flags, f'--feature_classifier_logdir={classifier_dir}',
                           f'--logdir={logdir}')
            assert_one_line_error(out, ckpt, '64-d', '128-d')
        else:            # checked before the classifier is trained
            message = refused(*flags, f'--logdir={logdir}')
            assert ckpt in message and '64-d' in message and '128-d' in message
        assert tree(logdir) == before
    # a model of the right dimension, trained with other flags
    logdir = tmp_path / 'nocb'
    write_feature_checkpoint(logdir / 'feature_diffusion', 128, *flags, f'--logdir={logdir}')
    before = tree(logdir)
    message = refused(*flags[:-2], '--nocb', f'--logdir={logdir}')
    assert 'ckpt_40.pt' in message and '--cb True (now False)' in message
    assert tree(logdir) == before


def test_bad_feature_inputs(stage_run, tmp_path):
    classifier_dir, _, _ = stage_run
    logdir = tmp_path / 'run'
    np.save(tmp_path / 'gen.npy', np.full((2, 3, 8, 8), 0.5, np.float32))
    np.save(tmp_path / 'gen_labels.npy', np.array([3, 4]))
    for args, needle in [(['--feature_aug', '--cls_epochs=1'], '--feature_aug needs --classify'),
                         ([*DIGITS, *SMALL, '--feat_width=7'], '--feat_width'),
                         ([*DIGITS, *SMALL, f'--feature_classifier_logdir={tmp_path}'],
                          'no classifier checkpoint')]:
        out = run_main(*args, f'--logdir={logdir}')
        assert_one_line_error(out, needle)
        assert not logdir.exists(), args
    for extra, needle in [
            (['--sample_method=uncond'], '--sample_method uncond'),
            (['--nocfg', '--nocb', '--omega=1.0'], 'add --cfg'),
            ([f'--feature_classifier_logdir={classifier_dir}', '--imb_factor=0.2'],
             'another training set'),
            ([f'--feature_classifier_logdir={classifier_dir}', f'--synthetic={tmp_path}/gen.npy'],
             '--synthetic trains the classifier'),
            ([f'--feature_classifier_logdir={logdir}'], 'is --logdir')]:
        assert needle in refused(*DIGITS, *SMALL, *extra, f'--logdir={logdir}')
        assert not logdir.exists(), extra
    # a drawn-features file that does not fit the classifier
    bad = tmp_path / 'features_x.npz'
    np.savez(bad, features=np.zeros((3, 64), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(UserError, match='shape') as e:
        FA.load_features(str(bad), 128, np.array([3, 0]))
    assert '\n' not in str(e.value) and 'features_x.npz' in str(e.value)
    with pytest.raises(UserError, match='per-class'):
        FA.load_features(str(bad), 64, np.array([1, 2]))


def test_every_feature_flag_has_a_domain():
    import main
    names = {n for n in main.FLAGS if n.startswith('feat_')}
    numeric = {'feat_steps', 'feat_lr', 'feat_batch_size', 'feat_width', 'feat_blocks',
               'feat_ema_decay', 'feat_save_step', 'feat_head_epochs', 'feat_head_lr'}
    assert numeric <= names and numeric <= set(main.FLAG_DOMAINS)


def test_readme_feature_commands_run_as_written(tmp_path):
    """The README's three --feature_aug commands (CIFAR-100-LT flagfile, ResNet-32) in order,
    run from a folder with tiny CIFAR-100 files as DIR, with epochs, steps and the feature
    model's size shrunk by appended overrides."""
    import re
    import shlex
    from fakedata import write_cifar100
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme.split('### Feature-level augmentation (`--feature_aug`)', 1)[1]
    block = re.search(r'```\n(.*?)```', section, flags=re.S).group(1)
    commands = [' '.join(c.replace('\\\n', ' ').split()) for c in
                re.split(r'\n(?=python )', re.sub(r'#[^\n]*\n', '', block)) if c.strip()]
    assert len(commands) == 3 and all('--feature_aug' in c for c in commands)
    write_cifar100(str(tmp_path / 'DIR'), per_class=6)
    os.symlink(os.path.join(ROOT, 'config'), tmp_path / 'config')
    shrink = ['--cls_epochs=1', '--num_workers=0', '--feat_steps=4', '--feat_width=16',
              '--feat_blocks=1', '--feat_batch_size=32', '--feat_head_epochs=1', '--T=10']
    for command in commands:
        args = shlex.split(command)
        out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args[2:], *shrink],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert out.returncode == 0, f'{command}\n{out.stderr[-3000:]}'
    for run, source, cb in (('c100_fa_ddpm', 'diffusion', False),
                            ('c100_fa_cbdm', 'diffusion', True), ('c100_crt', 'none', None)):
        record = json.loads((tmp_path / 'logs' / run / 'feature_aug' / 'eval.jsonl')
                            .read_text().splitlines()[-1])
        assert record['data_type'] == 'cifar100lt', sorted(record)
        # what the command asked for: the feature source, --cb, the first run's classifier
        assert (record['feat_source'], record.get('cb')) == (source, cb), run
        assert (record['num_generated'] > 0) == (source == 'diffusion'), run
        assert os.path.normpath(record['classifier_logdir']).endswith(
            os.path.join('logs', 'c100_fa_ddpm')), record['classifier_logdir']
