"""Every flag with a declared domain (main.FLAG_DOMAINS) is tried outside and inside it, one
parametrised test per flag, hypothesis drawing the values:

- outside: `main.py` exits with status 2 and one line naming the flag, no traceback, and leaves
  no run folder (the CLI's own code path, run in-process for speed; a sample of flags also runs
  as a subprocess);
- inside: the parser accepts every drawn value, and a real run in the mode the flag belongs to
  (a 2-step training with a grid, --sample, --eval, --classify) succeeds with it.

The domains below are written out independently of main.py's table, so a wrong entry there fails
here, and a flag added to main.FLAG_DOMAINS without an entry here fails
`test_every_domain_is_covered`. The cross-flag rules (main.CROSS_DOMAINS) are each violated
through the CLI.
"""
import contextlib
import io
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grids import grid_labels
from helpers import ROOT, TINY, fake_cifar10lt_with_stats, run_main

NAN, INF = float('nan'), float('inf')


def floats(lo=None, hi=None, **kw):
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, **kw)


def ints(lo, hi):
    return st.integers(lo, hi)


def finite_neg():
    return st.one_of(floats(hi=-1e-9), st.sampled_from([NAN, INF, -INF]))


def non_positive():
    return st.one_of(floats(hi=0.0), st.sampled_from([NAN, INF, -INF]))


# flag -> (mode of the run that uses it, values inside, values outside). Modes: train (a
# 2-step tiny training with a grid), sample (--sample of a trained tiny run), eval (--eval of
# it against tiny FID statistics), classify (a 1-epoch digits classifier), translate (the same
# with translated images from the tiny run), feature (the same with --feature_aug, a few
# feature-diffusion steps).
DOMAINS = {
    # UNet
    'ch': ('train', st.sampled_from([32, 64]),
           st.one_of(ints(-64, 31), ints(33, 63), ints(65, 95))),
    'ch_mult': ('train', st.lists(ints(1, 2), min_size=1, max_size=2),
                st.one_of(st.lists(ints(-3, 0), min_size=1, max_size=2), st.just([1, 0]))),
    'attn': ('train', st.just([-1]), st.lists(ints(-9, -2), min_size=1, max_size=2)),
    'num_res_blocks': ('train', ints(1, 2), ints(-3, 0)),
    'dropout': ('train', floats(0.0, 0.99),
                st.one_of(floats(hi=-1e-9), floats(lo=1.0, hi=1e6), st.just(NAN))),
    # diffusion
    'beta_1': ('train', floats(1e-6, 0.019),
               st.one_of(floats(hi=0.0), floats(lo=1.0, hi=10.0), st.just(NAN))),
    'beta_T': ('train', floats(2e-4, 0.5),
               st.one_of(floats(hi=0.0), floats(lo=1.0, hi=10.0), st.just(NAN))),
    'T': ('train', ints(1, 40), ints(-5, 0)),
    # training
    'lr': ('train', floats(1e-7, 1.0), non_positive()),
    'grad_clip': ('train', floats(1e-3, 1e3), non_positive()),
    'total_steps': ('train', ints(1, 3), ints(-5, 0)),
    'img_size': ('train', st.sampled_from([4, 8, 12]), ints(-8, 0)),
    'warmup': ('train', ints(0, 10), ints(-5, -1)),
    'batch_size': ('train', ints(1, 24), ints(-5, 0)),
    'num_workers': ('train', ints(0, 1), ints(-5, -1)),
    'ema_decay': ('train', floats(0.0, 1.0),
                  st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=100.0), st.just(NAN))),
    'seed': ('train', ints(0, 2 ** 31 - 1), st.one_of(ints(-10, -1), st.just(2 ** 31))),
    'keep_ckpt': ('train', ints(0, 3), ints(-5, -1)),
    # conditioning and class balancing
    'tau': ('train', floats(0.0, 10.0), finite_neg()),
    'ckpt_step': ('sample', st.just(1), ints(-5, -1)),
    # data
    'imb_factor': ('train', floats(0.05, 1.0),
                   st.one_of(floats(hi=0.0), floats(lo=1.0 + 1e-9, hi=100.0), st.just(NAN))),
    # logging and sampling
    'sample_size': ('train', ints(1, 23), ints(-5, 0)),
    'sample_step': ('train', ints(0, 3), ints(-5, -1)),
    'save_step': ('train', ints(0, 3), ints(-5, -1)),
    'eval_step': ('eval', ints(0, 2), ints(-5, -1)),
    'omega': ('sample', floats(0.0, 8.0), finite_neg()),
    'sample_steps': ('sample', ints(1, 20), ints(-5, 0)),
    'eta': ('sample', floats(0.0, 1.0),
            st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=10.0), st.just(NAN))),
    'omega_sweep': ('eval', st.lists(floats(0.0, 4.0), min_size=1, max_size=2),
                    st.one_of(st.lists(floats(hi=-1e-3), min_size=1, max_size=2),
                              st.just(['nan']), st.just(['x']))),
    'sample_name': ('eval', st.text('abcXYZ_-0189', min_size=1, max_size=8),
                    st.sampled_from(['', 'a/b', '/x'])),
    # evaluation
    'num_images': ('eval', ints(1, 12), ints(-5, 0)),
    'ref_images': ('eval', ints(0, 50), ints(-5, -1)),
    'many_shot': ('eval', ints(20, 200), ints(-5, -1)),
    'few_shot': ('eval', ints(0, 20), ints(-5, -1)),
    'min_fid_images': ('eval', ints(2, 50), ints(-5, 1)),
    # long-tailed classification
    'cls_epochs': ('classify', ints(1, 2), ints(-5, 0)),
    'cls_batch_size': ('classify', ints(2, 128), ints(-5, 1)),
    'cls_lr': ('classify', floats(1e-5, 0.2), non_positive()),
    'cls_momentum': ('classify', floats(0.0, 0.99),
                     st.one_of(floats(hi=-1e-9), floats(lo=1.0, hi=10.0), st.just(NAN))),
    'cls_wd': ('classify', floats(0.0, 1e-2), finite_neg()),
    'cls_warmup': ('classify', ints(0, 3), ints(-5, -1)),
    'cls_milestones': ('classify', st.lists(ints(1, 5), min_size=1, max_size=2),
                       st.lists(ints(-5, 0), min_size=1, max_size=2)),
    'cls_gamma': ('classify', floats(1e-4, 1.0),
                  st.one_of(floats(hi=0.0), floats(lo=1.0 + 1e-9, hi=10.0), st.just(NAN))),
    'cls_eval_every': ('classify', ints(0, 2), ints(-5, -1)),
    'synthetic_weight': ('classify', floats(0.0, 5.0), finite_neg()),
    'filter_threshold': ('classify', floats(0.0, 1.0),
                         st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=10.0),
                                   st.just(NAN))),
    'cls_drw_epoch': ('classify', ints(0, 3), ints(-5, -1)),
    'cls_la_tau': ('classify', floats(0.0, 3.0), finite_neg()),
    # head-to-tail translation (--synthetic_source translate)
    # valid from one noise step of the world's T = 20 generator (round(s T) >= 1); below it the
    # one-line refusal of tests/test_translate_schedule.py
    'translate_strength': ('translate', floats(0.03, 1.0),
                           st.one_of(floats(hi=0.0), floats(lo=1.0 + 1e-9, hi=10.0),
                                     st.just(NAN))),
    'translate_from': ('translate', st.sampled_from(['many', 'all', 'many+medium', 'few',
                                                     '0,1', '8,9']),
                       st.sampled_from(['', 'head', 'many+', '1.5', '-1', 'many,1'])),
    # feature-level augmentation (--classify --feature_aug)
    'feat_steps': ('feature', ints(1, 30), ints(-5, 0)),
    'feat_lr': ('feature', floats(1e-6, 1e-2), non_positive()),
    'feat_batch_size': ('feature', ints(1, 64), ints(-5, 0)),
    'feat_width': ('feature', ints(1, 32).map(lambda v: 2 * v),
                   st.one_of(ints(-5, 1), ints(1, 30).map(lambda v: 2 * v + 1))),
    'feat_blocks': ('feature', ints(1, 3), ints(-5, 0)),
    'feat_ema_decay': ('feature', floats(0.0, 1.0),
                       st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=10.0), st.just(NAN))),
    'feat_save_step': ('feature', ints(0, 30), ints(-5, -1)),
    'feat_head_epochs': ('feature', ints(1, 3), ints(-5, 0)),
    'feat_head_lr': ('feature', floats(1e-4, 1.0), non_positive()),
    'synthetic_fill': ('classify', st.one_of(st.just('head'), ints(1, 3).map(str)),
                       st.sampled_from(['0', '-2', 'tail', '1.5', ''])),
}

TRAIN = [*TINY, '--T=20', '--conditional', '--cfg', '--total_steps=2', '--save_step=1',
         '--sample_step=1', '--sample_method=cfg']
DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt'), '--cls_epochs=1',
          '--cls_eval_every=0']


def arg(flag, value):
    if flag == 'omega_sweep':  # a comma-separated list flag
        return [f'--{flag}={",".join(map(str, value))}']
    if isinstance(value, list):
        return [f'--{flag}={v}' for v in value]
    return [f'--{flag}={value}']


def main_in_process(*args, env=None):
    """(exit status, stderr) of `python main.py ARGS`, run through main.main() in this process
    (the flags are reset before and after)."""
    import main
    from absl import flags
    old_argv, old_env = sys.argv, dict(os.environ)
    os.environ.update(env or {})
    err, code = io.StringIO(), 0
    try:
        flags.FLAGS.unparse_flags()
        sys.argv = ['main.py', *map(str, args)]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main.main()
            except SystemExit as e:
                code = e.code or 0
    finally:
        flags.FLAGS.unparse_flags()
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
    return code, err.getvalue()


def parses(*args):
    """None when absl accepts ARGS (validators included), else the error message."""
    import main
    from absl import flags
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(main.expand_argv(['main.py', *map(str, args)]))
        return None
    except flags.Error as e:
        return str(e)
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A trained tiny conditional run (for --sample, --eval and --synthetic_logdir), tiny FID
    statistics with random Inception weights, and a small saved 'generated' digits set."""
    tmp = tmp_path_factory.mktemp('domains')
    _, env = fake_cifar10lt_with_stats(tmp)             # made once per pytest run
    stats = tmp / 'stats' / 'cifar10.train.npz'
    run = tmp / 'run'
    code, err = main_in_process('--train', *TRAIN, '--sample_step=0', f'--logdir={run}')
    assert code == 0, err[-2000:]
    import dataset as D
    x, y = D.load_digits_images()
    pool, _ = D.digits_split()
    idx = pool[::30]
    np.save(tmp / 'gen.npy', x.numpy()[idx].astype(np.float32))
    np.save(tmp / 'gen_labels.npy', y[idx].astype(np.int64))
    return {'tmp': tmp, 'env': env, 'stats': stats, 'run': run, 'gen': tmp / 'gen.npy'}


def inside_args(world, flag, value, out):
    """The command of a run in `flag`'s mode with `--flag=value`, writing into `out`."""
    mode = DOMAINS[flag][0]
    if mode == 'train':
        return ['--train', *TRAIN, f'--logdir={out}', *arg(flag, value)]
    run = world['run']
    common = [f'--flagfile={run}/flagfile.txt', '--notrain', '--ckpt_step=1']
    if mode == 'sample':
        sampler = ['--sampler=ddim', '--sample_steps=4'] if flag in ('sample_steps', 'eta') else []
        return [*common, '--sample', *sampler, *arg(flag, value)]
    if mode == 'eval':
        if flag == 'eval_step':
            return ['--train', *TRAIN, f'--logdir={out}', f'--fid_cache={world["stats"]}',
                    '--num_images=4', '--noprd', *arg(flag, value)]
        return [*common, '--eval', f'--fid_cache={world["stats"]}', '--noprd',
                '--num_images=6', '--batch_size=6', '--sample_method=cfg', *arg(flag, value)]
    extra = []
    if mode == 'translate':
        extra = [f'--synthetic_logdir={run}', '--ckpt_step=1', '--synthetic_source=translate',
                 '--sampler=ddim', '--sample_steps=2', '--synthetic_fill=2']
    if mode == 'feature':
        extra = ['--feature_aug', '--feat_steps=20', '--feat_head_epochs=2', '--sampler=ddim',
                 '--sample_steps=5', '--synthetic_fill=20']
    if flag in ('synthetic_weight', 'filter_threshold'):
        extra = [f'--synthetic={world["gen"]}']
        if flag == 'filter_threshold':
            extra.append('--synthetic_filter')
    if flag == 'synthetic_fill':
        extra = [f'--synthetic_logdir={run}', '--ckpt_step=1', '--sampler=ddim',
                 '--sample_steps=2', '--img_size=8']
    return [*DIGITS, *extra, f'--logdir={out}', *arg(flag, value)]


def test_every_domain_is_covered():
    import main
    from absl import flags as absl_flags
    assert set(DOMAINS) == set(main.FLAG_DOMAINS), (
        f'missing here: {sorted(set(main.FLAG_DOMAINS) - set(DOMAINS))}; '
        f'not in main.FLAG_DOMAINS: {sorted(set(DOMAINS) - set(main.FLAG_DOMAINS))}')
    numeric = {f.name for f in main.FLAGS.get_flags_for_module(main)
               if isinstance(f.parser, (absl_flags.IntegerParser, absl_flags.FloatParser))}
    assert not numeric - set(main.FLAG_DOMAINS), sorted(numeric - set(main.FLAG_DOMAINS))


@pytest.mark.parametrize('flag', sorted(DOMAINS))
def test_outside_the_domain_is_refused_on_one_line(flag, tmp_path_factory):
    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(value=DOMAINS[flag][2])
    def check(value):
        message = parses(*arg(flag, value))
        assert message is not None and f'--{flag}' in message, (flag, value, message)
        out = tmp_path_factory.mktemp('outside') / 'run'
        code, err = main_in_process('--train', *TRAIN, f'--logdir={out}', *arg(flag, value))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and 'Traceback' not in err, (flag, value, err)
        assert f'--{flag}' in lines[0], lines[0]
        assert not out.exists()
    check()


@pytest.mark.parametrize('flag', sorted(DOMAINS))
def test_inside_the_domain_parses_and_runs(flag, world, tmp_path_factory):
    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(value=DOMAINS[flag][1])
    def accepted(value):
        args = inside_args(world, flag, value, world['tmp'] / 'unused')
        assert parses(*args) is None, (flag, value)
    accepted()

    @settings(max_examples=2, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(value=DOMAINS[flag][1])
    def runs(value):
        out = tmp_path_factory.mktemp('inside') / 'run'
        code, err = main_in_process(*inside_args(world, flag, value, out), env=world['env'])
        assert code == 0, (flag, value, err[-3000:])
    runs()


@pytest.mark.parametrize('flag, value', [('ch', 48), ('lr', 'nan'), ('cls_epochs', 0),
                                         ('synthetic_fill', 'tail'), ('omega_sweep', '-1')])
def test_outside_the_domain_through_the_command_line(tmp_path, flag, value):
    out = run_main('--train', *TRAIN, f'--logdir={tmp_path}/run', f'--{flag}={value}')
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    assert f'--{flag}' in lines[0] and not (tmp_path / 'run').exists()


# one violation per rule of main.CROSS_DOMAINS: (arguments, text of the rule, flag named)
CROSS = [
    (['--beta_1=0.02', '--beta_T=0.01'], '--beta_1 must be smaller than --beta_T', '--beta_1'),
    (['--img_size=12', '--ch_mult=1', '--ch_mult=2', '--ch_mult=2'],
     '--img_size must be divisible', '--img_size'),
    (['--attn=1'], '--attn levels must index --ch_mult', '--attn'),
    (['--sampler=ddim', '--sample_steps=60'], '--sample_steps must be <= --T', '--sample_steps'),
    (['--sampler=ddim', '--sample_steps=10', '--spacing=karras'],
     '--spacing must be one that the sampler offers', '--spacing'),
    (['--sampler=dpm++2m', '--sample_steps=1', '--spacing=lu', '--T=1'],
     '--spacing lu needs --T >= 2', '--spacing'),
    (['--sampler=dpm++2m', '--sample_steps=10', '--eta=0.5'], '--eta must be 0', '--eta'),
    (['--few_shot=30', '--many_shot=10'], '--few_shot must be <= --many_shot', '--few_shot'),
    (['--cls_resample', '--synthetic_only'], '--cls_resample re-samples the real training images',
     '--synthetic_only'),
    (['--feature_aug'], '--feature_aug needs --classify', '--classify'),
    (['--feature_classifier_logdir=x'], '--feature_classifier_logdir needs --feature_aug',
     '--feature_aug'),
]


def test_every_cross_rule_is_tried():
    import main
    rules = [text for _, text, _ in main.CROSS_DOMAINS]
    for rule in rules:
        assert any(rule.startswith(text) for _, text, _ in CROSS), f'untested rule: {rule}'


@pytest.mark.parametrize('args, text, flag', CROSS)
def test_cross_flag_domains_through_the_command_line(tmp_path, args, text, flag):
    out = run_main('--train', *TRAIN, f'--logdir={tmp_path}/run', *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert text in lines[0] and flag in lines[0] and not (tmp_path / 'run').exists()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(sample_size=st.integers(1, 400), num_class=st.integers(1, 1000))
def test_grid_labels_cover_every_image_head_to_tail(sample_size, num_class):
    labels, per_row = grid_labels(num_class, sample_size)
    labels = labels.numpy()
    assert labels.shape == (sample_size,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < num_class and labels[0] == 0
    rows = [labels[i:i + per_row] for i in range(0, sample_size, per_row)]
    assert len(rows) <= 10 and all((r == r[0]).all() for r in rows)  # one class per row
    firsts = [int(r[0]) for r in rows]
    assert firsts == sorted(set(firsts))  # distinct classes, head to tail
    if len(rows) > 1:
        assert firsts[-1] == num_class - 1 or len(rows) < min(10, num_class)


@pytest.fixture(scope='module')
def cfg_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp('cfg') / 'run'
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--total_steps=1', '--save_step=1',
                   '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-2000:]
    return logdir


@pytest.mark.parametrize('method, size', [('cond', 13), ('uncond', 5), ('cfg', 1)])
def test_any_sample_size_for_sample_entry(cfg_run, method, size):
    logdir = cfg_run
    out = run_main('--notrain', '--sample', f'--flagfile={logdir}/flagfile.txt', '--ckpt_step=0',
                   f'--sample_method={method}', '--omega=1.0', f'--sample_size={size}',
                   '--batch_size=4')
    assert out.returncode == 0, out.stderr[-2000:]
    stem = logdir / f'sample_{method}_1.0_STEP0'
    images, labels = np.load(f'{stem}.npy'), np.load(f'{stem}_labels.npy')
    assert images.shape == (size, 3, 8, 8) and labels.shape == (size,)
    if method != 'uncond':
        assert labels.tolist() == grid_labels(10, size)[0].tolist()
    assert out.stdout.strip().splitlines()[-1].startswith('wrote ')
