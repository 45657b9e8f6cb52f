"""Every flag has a declared domain (main.FLAG_DOMAINS): values inside run, values outside end
with exit status 2, one line naming the flag, no traceback and no run folder. Hypothesis draws
the values; the domains below are written out independently of main.py's table, so a wrong
entry there fails here."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TINY, run_main
from train import grid_labels

NAN, INF = float('nan'), float('inf')


def floats(lo=None, hi=None, **kw):
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, **kw)


# flag -> values outside its domain
OUTSIDE = {
    'ch': st.one_of(st.integers(-64, 31), st.integers(33, 63)),
    'ch_mult': st.lists(st.integers(-3, 0), min_size=1, max_size=2),
    'attn': st.just([-2]),
    'num_res_blocks': st.integers(-3, 0),
    'dropout': st.one_of(floats(hi=-1e-9), floats(lo=1.0, hi=1e6), st.just(NAN)),
    'beta_1': st.one_of(floats(hi=0.0), floats(lo=1.0, hi=10.0), st.just(NAN)),
    'beta_T': st.one_of(floats(hi=0.0), floats(lo=1.0, hi=10.0), st.just(NAN)),
    'T': st.integers(-5, 0),
    'lr': st.one_of(floats(hi=0.0), st.sampled_from([NAN, INF])),
    'grad_clip': st.one_of(floats(hi=0.0), st.sampled_from([NAN, INF])),
    'total_steps': st.integers(-5, 0),
    'img_size': st.integers(-8, 0),
    'warmup': st.integers(-5, -1),
    'batch_size': st.integers(-5, 0),
    'num_workers': st.integers(-5, -1),
    'ema_decay': st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=100.0), st.just(NAN)),
    'seed': st.one_of(st.integers(-10, -1), st.just(2 ** 31)),
    'keep_ckpt': st.integers(-5, -1),
    'tau': st.one_of(floats(hi=-1e-9), st.sampled_from([NAN, INF])),
    'ckpt_step': st.integers(-5, -1),
    'imb_factor': st.one_of(floats(hi=0.0), floats(lo=1.0 + 1e-9, hi=100.0), st.just(NAN)),
    'sample_size': st.integers(-5, 0),
    'sample_step': st.integers(-5, -1),
    'save_step': st.integers(-5, -1),
    'eval_step': st.integers(-5, -1),
    'omega': st.one_of(floats(hi=-1e-9), st.sampled_from([NAN, INF, -INF])),
    'sample_steps': st.integers(-5, 0),
    'eta': st.one_of(floats(hi=-1e-9), floats(lo=1.0 + 1e-9, hi=10.0), st.just(NAN)),
    'num_images': st.integers(-5, 0),
    'many_shot': st.integers(-5, -1),
    'few_shot': st.integers(-5, -1),
    'min_fid_images': st.integers(-5, 1),
}

# flag -> values inside its domain that a 2-step run of the tiny model can afford
INSIDE = {
    'ch': st.sampled_from([32, 64]),
    'ch_mult': st.lists(st.integers(1, 2), min_size=1, max_size=2),
    'num_res_blocks': st.integers(1, 2),
    'dropout': floats(0.0, 0.99),
    'T': st.integers(1, 40),
    'lr': floats(1e-7, 1.0),
    'ema_decay': floats(0.0, 1.0),
    'keep_ckpt': st.integers(0, 3),
    'tau': floats(0.0, 10.0),
    'omega': floats(0.0, 8.0),
    'sample_size': st.integers(1, 23),
    'warmup': st.integers(0, 10),
    'seed': st.integers(0, 2 ** 31 - 1),
    'imb_factor': floats(0.05, 1.0),
}

BASE = [*TINY, '--conditional', '--cfg', '--total_steps=2', '--save_step=1', '--sample_step=1',
        '--sample_method=cfg']


def arg(flag, value):
    if isinstance(value, list):
        return [f'--{flag}={v}' for v in value]
    return [f'--{flag}={value}']


def test_every_numeric_flag_has_a_domain():
    import main
    from absl import flags as absl_flags
    numeric = {f.name for f in main.FLAGS.get_flags_for_module(main)
               if isinstance(f.parser, (absl_flags.IntegerParser, absl_flags.FloatParser))}
    assert {'ch', 'ch_mult', 'T', 'lr', 'omega'} <= numeric
    missing = numeric - set(main.FLAG_DOMAINS)
    assert not missing, f'flags without a declared domain: {sorted(missing)}'
    assert set(OUTSIDE) <= set(main.FLAG_DOMAINS)


@settings(max_examples=14, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_values_outside_a_domain_are_refused_on_one_line(tmp_path_factory, data):
    flag = data.draw(st.sampled_from(sorted(OUTSIDE)), label='flag')
    value = data.draw(OUTSIDE[flag], label='value')
    logdir = tmp_path_factory.mktemp('outside') / 'run'
    out = run_main('--train', *BASE, f'--logdir={logdir}', *arg(flag, value), timeout=120)
    assert out.returncode == 2, (flag, value, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert f'--{flag}' in lines[0], lines[0]
    assert not logdir.exists() and not logdir.parent.joinpath('run').exists()


@settings(max_examples=7, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_values_inside_a_domain_train_and_draw_a_grid(tmp_path_factory, data):
    flag = data.draw(st.sampled_from(sorted(INSIDE)), label='flag')
    value = data.draw(INSIDE[flag], label='value')
    logdir = tmp_path_factory.mktemp('inside') / 'run'
    out = run_main('--train', *BASE, f'--logdir={logdir}', *arg(flag, value), timeout=300)
    assert out.returncode == 0, (flag, value, out.stderr[-3000:])
    assert (logdir / 'ckpt_1.pt').is_file() and (logdir / 'sample' / '1.png').is_file()


@pytest.mark.parametrize('args, flag', [
    (['--beta_1=0.02', '--beta_T=0.01'], '--beta_1'),
    (['--img_size=12', '--ch_mult=1', '--ch_mult=2', '--ch_mult=2'], '--img_size'),
    (['--attn=1'], '--attn'),
    (['--sampler=ddim', '--sample_steps=60'], '--sample_steps'),
    (['--few_shot=30', '--many_shot=10'], '--few_shot'),
])
def test_cross_flag_domains(tmp_path, args, flag):
    out = run_main('--train', *BASE, f'--logdir={tmp_path}/run', *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert flag in out.stderr and not (tmp_path / 'run').exists()


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
