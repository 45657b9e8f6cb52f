"""Tests of the experiment scripts: scripts/*lt_*.sh (one per row of the main table),
scripts/make_stats.sh, scripts/common.sh and scripts/collect_results.py.

Dry runs check the main.py commands against the README's settings; one real run trains and
evaluates the smallest script (cifar10lt_ddpm.sh) on fake CIFAR-10 with a tiny model and
random FID Inception weights in a temporary torch hub folder (never downloaded)."""
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from helpers import parse_flags, random_inception_home
from fakedata import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'scripts')
WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
# variables the scripts read: never inherited from the caller's environment
SCRIPT_ENV = ('DATA_ROOT', 'LOG_ROOT', 'DRY_RUN', 'EXTRA_FLAGS', 'STATS_DIR', 'FID_CACHE',
              'DATASETS', 'TOTAL_STEPS', 'BATCH_SIZE', 'SAVE_STEP', 'SAMPLE_STEP', 'EVAL_CKPT',
              'OMEGA', 'EVAL_BATCH', 'NUM_IMAGES', 'SAMPLE_METHOD', 'RUN_NAME', 'FT_CKPT',
              'DDPM_RUN', 'CLS_ROWS', 'CLS_EPOCHS', 'SYN_FILL', 'CAS_FILL', 'SYN_WEIGHT',
              'SAMPLER', 'SAMPLE_STEPS', 'SAMPLE_BATCH', 'SEEDS', 'ROWS', 'DRW_EPOCH', 'TABLE')
TINY = ('--ch 32 --ch_mult 1 --attn -1 --num_res_blocks 1 --T 20 --batch_size 4 --img_size 8 '
        '--num_workers 0 --sample_size 4 --warmup 2 --dropout 0 --fid_use_torch')

# the README's settings per row: run folder, training flags, evaluation flags
ROWS = {
    'ddpm': dict(run='lt_ddpm', switches=['--cfg'],
                 train={'--total_steps': '300001', '--batch_size': '64', '--save_step': '100000',
                        '--sample_step': '50000'},
                 eval={'--ckpt_step': '200000', '--omega': '0.8', '--batch_size': '64'}),
    'cbdm': dict(run='lt_ltdm', switches=['--cb'],
                 train={'--total_steps': '300001', '--batch_size': '48', '--save_step': '100000',
                        '--sample_step': '50000', '--tau': '1.0'},
                 eval={'--ckpt_step': '300000', '--omega': '1.6', '--batch_size': '64'}),
    'cbdm_augm': dict(run='lt_ltdm_augm', switches=['--cb', '--augm'],
                      train={'--total_steps': '500001', '--batch_size': '48',
                             '--save_step': '100000', '--sample_step': '50000', '--tau': '1.0'},
                      eval={'--ckpt_step': '500000', '--omega': '1.4', '--batch_size': '192'}),
    'cbdm_finetune': dict(run='lt_ltdm_finetune', switches=['--cb', '--finetune'],
                          train={'--total_steps': '100001', '--batch_size': '48',
                                 '--save_step': '50000', '--sample_step': '50000', '--tau': '1.0',
                                 '--ckpt_step': '200000'},
                          eval={'--ckpt_step': '250000', '--omega': '2.0', '--batch_size': '512'}),
}
ALL_ROWS = [(ds, row) for ds in ('cifar10', 'cifar100') for row in ROWS]


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    # one thread per process: much faster than two on shared cores
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(name, *args, cwd=ROOT, timeout=300, **env):
    return subprocess.run(['bash', os.path.join(SCRIPTS, name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=script_env(**env))


def commands(stdout):
    """The main.py commands echoed by `run` ('+ python main.py ...'), as token lists."""
    out = []
    for line in stdout.splitlines():
        if line.startswith('+ '):
            tokens = shlex.split(line[2:])
            assert tokens[1] == 'main.py', line
            out.append(tokens[2:])
    return out


# --------------------------------------------------------------------------------------------
# (a) dry runs print the README's commands and write nothing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('ds,row', ALL_ROWS)
def test_row_dry_run(tmp_path, ds, row):
    data, logs = tmp_path / 'data', tmp_path / 'logs'
    p = run_script(f'{ds}lt_{row}.sh', '--dry-run', data, logs)
    assert p.returncode == 0, p.stderr + p.stdout
    assert os.listdir(tmp_path) == []
    cmds = commands(p.stdout)
    assert len(cmds) == 2, p.stdout
    spec = ROWS[row]
    run_dir = str(logs / f'{ds}{spec["run"]}')

    train, switches = parse_flags(cmds[0])
    assert {'--train', '--conditional', *spec['switches']} <= switches
    for key, value in {**spec['train'], '--flagfile': f'./config/{ds}.txt',
                       '--data_type': f'{ds}lt', '--imb_factor': '0.01', '--img_size': '32',
                       '--root': str(data), '--num_images': '50000'}.items():
        assert train[key] == value, (key, cmds[0])
    assert train['--fid_cache'].endswith(f'stats/{ds}.train.npz')
    if row == 'cbdm_finetune':
        assert train['--logdir'] == str(logs / f'{ds}lt_ddpm')
        assert train['--finetuned_logdir'] == run_dir
        assert 'warning' in p.stdout and f'{ds}lt_ddpm.sh' in p.stdout
    else:
        assert train['--logdir'] == run_dir
        assert '--finetune' not in switches and '--finetuned_logdir' not in train
    if row != 'ddpm':
        assert '--cfg' not in switches
    if row != 'cbdm_augm':
        assert '--augm' not in switches

    ev, switches = parse_flags(cmds[1])
    assert {'--notrain', '--eval'} <= switches and '--train' not in switches
    for key, value in {**spec['eval'], '--flagfile': f'{run_dir}/flagfile.txt',
                       '--logdir': run_dir, '--root': str(data), '--num_images': '50000',
                       '--sample_method': 'cfg'}.items():
        assert ev[key] == value, (key, cmds[1])
    assert ev['--fid_cache'].endswith(f'stats/{ds}.train.npz')


def test_make_stats_dry_run(tmp_path):
    stats = tmp_path / 'stats'
    p = run_script('make_stats.sh', '--dry-run', tmp_path / 'data', STATS_DIR=stats)
    assert p.returncode == 0, p.stderr + p.stdout
    assert os.listdir(tmp_path) == []
    cmds = [parse_flags(c) for c in commands(p.stdout)]
    assert [v['--data_type'] for v, _ in cmds] == ['cifar10', 'cifar100']
    for (values, switches), ds in zip(cmds, ('cifar10', 'cifar100')):
        assert '--make_stats' in switches
        assert values['--root'] == str(tmp_path / 'data')
        assert values['--fid_cache'] == str(stats / f'{ds}.train.npz')
    # an existing file is skipped
    stats.mkdir()
    (stats / 'cifar100.train.npz').write_bytes(b'')
    p = run_script('make_stats.sh', '-n', tmp_path / 'data', STATS_DIR=stats)
    assert p.returncode == 0, p.stderr
    assert [parse_flags(c)[0]['--data_type'] for c in commands(p.stdout)] == ['cifar10']
    assert 'skip cifar100' in p.stdout


def test_env_overrides_and_relative_paths(tmp_path):
    """DATA_ROOT/LOG_ROOT/DRY_RUN from the environment, relative to the caller's folder;
    step numbers and EXTRA_FLAGS (last, so they win) from the environment."""
    p = run_script('cifar100lt_cbdm.sh', cwd=tmp_path, DATA_ROOT='d', LOG_ROOT='./l', DRY_RUN=1,
                   TOTAL_STEPS=11, EVAL_CKPT=10, OMEGA=0.5, NUM_IMAGES=7, EVAL_BATCH=3,
                   EXTRA_FLAGS='--ch 64 --amp bf16')
    assert p.returncode == 0, p.stderr
    assert os.listdir(tmp_path) == []
    train_tokens, eval_tokens = commands(p.stdout)
    train, ev = parse_flags(train_tokens)[0], parse_flags(eval_tokens)[0]
    assert train['--root'] == str(tmp_path / 'd')
    assert train['--logdir'] == str(tmp_path / 'l' / 'cifar100lt_ltdm')
    assert train['--total_steps'] == '11' and train['--batch_size'] == '48'
    assert ev['--ckpt_step'] == '10' and ev['--omega'] == '0.5' and ev['--num_images'] == '7'
    assert ev['--batch_size'] == '3'
    for tokens in (train_tokens, eval_tokens):
        assert tokens[-4:] == ['--ch', '64', '--amp', 'bf16']
    # arguments win over the environment
    p = run_script('cifar100lt_cbdm.sh', '-n', tmp_path / 'x', cwd=tmp_path, DATA_ROOT='d')
    assert parse_flags(commands(p.stdout)[0])[0]['--root'] == str(tmp_path / 'x')
    # bad input
    p = run_script('cifar100lt_cbdm.sh', '--nope')
    assert p.returncode != 0 and 'unknown option --nope' in p.stderr
    p = run_script('cifar100lt_cbdm.sh', '-n', 'a', 'b', 'c')
    assert p.returncode != 0 and 'too many arguments' in p.stderr
    p = run_script('cifar100lt_cbdm.sh', '-n', TOTAL_STEPS='3k')
    assert p.returncode != 0 and 'TOTAL_STEPS' in p.stderr
    p = run_script('cifar100lt_cbdm.sh', '--help')
    assert p.returncode == 0 and 'usage' in p.stdout and 'LOG_ROOT' in p.stdout
    assert not commands(p.stdout)


def test_skip_logic_dry_run(tmp_path):
    """A finished training (its last checkpoint) and an evaluation already in eval.jsonl (same
    ckpt_step, method, omega, num_images) are skipped; another omega is not."""
    logs = tmp_path / 'logs'
    run_dir = logs / 'cifar10lt_ltdm'
    run_dir.mkdir(parents=True)
    (run_dir / 'ckpt_300000.pt').write_bytes(b'')
    line = {'ckpt_step': 300000, 'sample_method': 'cfg', 'omega': 1.6, 'num_images': 50000,
            'FID': 10.0}
    (run_dir / 'eval.jsonl').write_text(json.dumps(dict(line, omega=1.5)) + '\nnot json\n')
    p = run_script('cifar10lt_cbdm.sh', '-n', tmp_path / 'data', logs)
    assert p.returncode == 0, p.stderr
    assert 'training already complete' in p.stdout
    cmds = commands(p.stdout)
    assert len(cmds) == 1 and '--eval' in parse_flags(cmds[0])[1]
    with open(run_dir / 'eval.jsonl', 'a') as f:
        f.write(json.dumps(line) + '\n')
    p = run_script('cifar10lt_cbdm.sh', '-n', tmp_path / 'data', logs)
    assert p.returncode == 0, p.stderr
    assert commands(p.stdout) == [] and 'skip evaluation' in p.stdout
    # more images: evaluated again
    p = run_script('cifar10lt_cbdm.sh', '-n', tmp_path / 'data', logs, NUM_IMAGES=60000)
    assert len(commands(p.stdout)) == 1


# --------------------------------------------------------------------------------------------
# (b) fine-tuning needs the DDPM checkpoint
# --------------------------------------------------------------------------------------------
def test_finetune_needs_ddpm_checkpoint(tmp_path):
    logs = tmp_path / 'logs'
    p = run_script('cifar10lt_cbdm_finetune.sh', tmp_path / 'data', logs)
    assert p.returncode != 0
    assert not commands(p.stdout)
    msg = p.stderr
    assert str(logs / 'cifar10lt_ddpm' / 'ckpt_200000.pt') in msg, msg
    assert 'does not exist' in msg and 'scripts/cifar10lt_ddpm.sh first' in msg
    assert not logs.exists()
    # FT_CKPT moves both the source checkpoint and the default evaluation step
    p = run_script('cifar10lt_cbdm_finetune.sh', '-n', tmp_path / 'data', logs, FT_CKPT=100)
    train, ev = (parse_flags(c)[0] for c in commands(p.stdout))
    assert train['--ckpt_step'] == '100' and ev['--ckpt_step'] == '50100'
    assert 'ckpt_100.pt does not exist' in p.stdout


# --------------------------------------------------------------------------------------------
# (c) the smallest script for real: tiny model, fake CIFAR-10, random Inception weights
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random FID Inception weights."""
    home = tmp_path_factory.mktemp('torch_home')
    random_inception_home(home)
    return home


def test_ddpm_script_end_to_end(tmp_path, torch_home):
    data, logs, stats = tmp_path / 'data', tmp_path / 'logs', tmp_path / 'stats'
    write_cifar10(str(data), per_class=3, test_per_class=1)  # LT at 0.01: 3+1+1 images
    env = dict(TORCH_HOME=torch_home, STATS_DIR=stats, EXTRA_FLAGS=TINY)

    p = run_script('make_stats.sh', data, DATASETS='cifar10', **env)
    assert p.returncode == 0, p.stderr[-3000:]
    # the statistics of the balanced training set (3 images a class), not of the LT subset
    import numpy as np
    with np.load(stats / 'cifar10.train_feats.npz') as z:
        feats, labels = z['feats'], z['labels']
    assert feats.shape == (30, 2048) and np.sort(labels).tolist() == sorted(list(range(10)) * 3)
    with np.load(stats / 'cifar10.train.npz') as z:
        assert np.allclose(z['mu'], feats.mean(0), atol=1e-4)
        assert z['sigma'].shape == (2048, 2048)

    row_env = dict(env, TOTAL_STEPS=3, SAVE_STEP=1, SAMPLE_STEP=0, EVAL_CKPT=2, NUM_IMAGES=4)
    p = run_script('cifar10lt_ddpm.sh', data, logs, **row_env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = logs / 'cifar10lt_ddpm'
    from checkpoint import load_checkpoint
    assert load_checkpoint(str(run_dir / 'ckpt_2.pt'))['step'] == 2
    flags = (run_dir / 'flagfile.txt').read_text().splitlines()
    assert {'--data_type=cifar10lt', '--total_steps=3', '--save_step=1'} <= set(flags)
    lines = (run_dir / 'eval.jsonl').read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec['ckpt_step'] == 2 and rec['sample_method'] == 'cfg' and rec['omega'] == 0.8
    assert rec['num_images'] == 4 and isinstance(rec['FID'], float)

    # re-running skips both steps without starting main.py
    t0 = time.time()
    p = run_script('cifar10lt_ddpm.sh', data, logs, **row_env)
    assert p.returncode == 0, p.stderr
    assert not commands(p.stdout)
    assert 'training already complete' in p.stdout and 'skip evaluation' in p.stdout
    assert time.time() - t0 < 15
    assert len((run_dir / 'eval.jsonl').read_text().splitlines()) == 1
    p = run_script('make_stats.sh', data, DATASETS='cifar10', **env)
    assert p.returncode == 0 and not commands(p.stdout) and 'skip cifar10' in p.stdout

    # the table
    p = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'collect_results.py'), str(logs)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [r for r in p.stdout.splitlines() if r.startswith('| cifar10lt_ddpm ')]
    assert len(rows) == 1, p.stdout
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    header = [c.strip() for c in p.stdout.splitlines()[0].strip('|').split('|')]
    row = dict(zip(header, cells))
    assert row['ckpt'] == '2' and row['method'] == 'cfg' and row['omega'] == '0.8'
    float(row['FID'])


# --------------------------------------------------------------------------------------------
# (d) collect_results.py on hand-written eval.jsonl files
# --------------------------------------------------------------------------------------------
def collect(*args):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, 'collect_results.py'),
                           *map(str, args)], capture_output=True, text=True, timeout=60)


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_collect_results(tmp_path):
    full = {'FID': 6.4321, 'IS': 10.5, 'IS_std': 0.1, 'precision': 0.61234, 'recall': 0.55,
            'F8': 0.9, 'F1/8': 0.8, 'FID_head': 5.0, 'FID_medium': 7.25, 'FID_tail': 12.0,
            'recall_head': 0.6, 'recall_medium': 0.5, 'recall_tail': None,
            'num_images': 50000, 'notes': ['x']}
    write_jsonl(tmp_path / 'cifar100lt_ltdm' / 'eval.jsonl', [
        dict(full, ckpt_step=300000, sample_method='cfg', omega=1.6, FID=99.0),  # replaced
        dict(full, ckpt_step=300000, sample_method='cfg', omega=1.6),
        {'ckpt_step': 200000, 'sample_method': 'cond', 'omega': 0.0, 'FID': 20.0,
         'num_images': 100},
    ])
    write_jsonl(tmp_path / 'cifar100lt_ddpm' / 'eval.jsonl', [
        {'ckpt_step': 200000, 'sample_method': 'cfg', 'omega': 0.8, 'FID': 8.0, 'IS': None}])
    (tmp_path / 'cifar100lt_ddpm' / 'eval.jsonl').open('a').write('{broken\n')
    (tmp_path / 'no_eval_here').mkdir()

    p = collect(tmp_path)
    assert p.returncode == 0, p.stderr
    assert 'broken' not in p.stdout and 'warning' in p.stderr
    lines = p.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    assert header == ['run', 'ckpt', 'method', 'omega', 'images', 'FID', 'IS', 'precision',
                      'recall', 'F_8', 'F_1/8', 'FID_head', 'FID_medium', 'FID_tail',
                      'recall_head', 'recall_medium', 'recall_tail']
    assert set(lines[1]) <= set('|-:')
    rows = [dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
            for line in lines[2:]]
    assert [(r['run'], r['ckpt'], r['method'], r['omega']) for r in rows] == [
        ('cifar100lt_ddpm', '200000', 'cfg', '0.8'),
        ('cifar100lt_ltdm', '200000', 'cond', '0.0'),
        ('cifar100lt_ltdm', '300000', 'cfg', '1.6')]
    assert rows[0]['FID'] == '8.00' and rows[0]['IS'] == '-' and rows[0]['recall_tail'] == '-'
    assert rows[1]['images'] == '100' and rows[1]['precision'] == '-'
    assert rows[2] == dict(
        run='cifar100lt_ltdm', ckpt='300000', method='cfg', omega='1.6', images='50000',
        FID='6.43', IS='10.50', precision='0.612', recall='0.550', F_8='0.900',
        **{'F_1/8': '0.800'}, FID_head='5.00', FID_medium='7.25', FID_tail='12.00',
        recall_head='0.600', recall_medium='0.500', recall_tail='-')

    # a --feature_aug stage's record, in RUN/feature_aug/eval.jsonl, is a row of its own
    write_jsonl(tmp_path / 'cls' / 'feature_aug' / 'eval.jsonl', [
        {'kind': 'classify', 'mode': 'feature_aug', 'top1': 0.9, 'top1_few': 0.8}])
    p = collect(tmp_path)
    assert p.returncode == 0, p.stderr
    assert any(line.startswith('| cls/feature_aug |') and '0.900' in line
               for line in p.stdout.splitlines()), p.stdout
    (tmp_path / 'cls' / 'feature_aug' / 'eval.jsonl').unlink()

    p = collect(tmp_path, '--csv')
    assert p.returncode == 0, p.stderr
    table = list(csv.DictReader(io.StringIO(p.stdout)))
    assert len(table) == 3 and float(table[2]['FID']) == 6.4321
    assert table[2]['recall_tail'] == '' and table[0]['IS'] == ''

    # nothing to collect
    empty = tmp_path / 'empty'
    empty.mkdir()
    p = collect(empty)
    assert p.returncode != 0 and 'no evaluations' in p.stderr
    p = collect(tmp_path / 'missing')
    assert p.returncode != 0 and 'no such folder' in p.stderr


# --------------------------------------------------------------------------------------------
# (e) long-tailed recognition: scripts/*lt_classify.sh and the accuracy columns
# --------------------------------------------------------------------------------------------
CLS_GENERATORS = {'ddpm': ('lt_ddpm', '200000', '0.8'), 'cbdm': ('lt_ltdm', '300000', '1.6'),
                  'cbdm_augm': ('lt_ltdm_augm', '500000', '1.4')}


@pytest.mark.parametrize('ds', ['cifar10', 'cifar100'])
def test_classify_dry_run(tmp_path, ds):
    data, logs = tmp_path / 'data', tmp_path / 'logs'
    p = run_script(f'{ds}lt_classify.sh', '--dry-run', data, logs)
    assert p.returncode == 0, p.stderr + p.stdout
    assert os.listdir(tmp_path) == []
    cmds = [parse_flags(c) for c in commands(p.stdout)]
    rows = ['ce', 'ddpm', 'cbdm', 'cbdm_augm', 'cas_ddpm', 'cas_cbdm', 'cas_cbdm_augm']
    assert [v['--logdir'] for v, _ in cmds] == [str(logs / f'{ds}lt_cls_{r}') for r in rows]
    for (values, switches), row in zip(cmds, rows):
        assert values['--flagfile'] == f'./config/classify_{ds}lt.txt'
        assert values['--root'] == str(data) and values['--cls_epochs'] == '200'
        assert '--train' not in switches and '--eval' not in switches
        if row == 'ce':
            assert '--synthetic_logdir' not in values and '--synthetic_only' not in switches
            continue
        run, ckpt, omega = CLS_GENERATORS[row.replace('cas_', '')]
        assert values['--synthetic_logdir'] == str(logs / f'{ds}{run}')
        assert values['--ckpt_step'] == ckpt and values['--omega'] == omega
        assert values['--sample_method'] == 'cfg' and values['--synthetic_fill'] == 'head'
        assert ('--synthetic_only' in switches) == row.startswith('cas_')
        assert '--sampler' not in values       # --classify's default for generated sets
    assert p.stdout.count('warning: the generator checkpoint') == 6
    # without dry run a missing generator stops the script before any training
    p = run_script(f'{ds}lt_classify.sh', data, logs, CLS_ROWS='ce cbdm')
    assert p.returncode != 0 and not commands(p.stdout)
    assert f'scripts/{ds}lt_cbdm.sh first' in p.stderr and not logs.exists()


def test_classify_script_env_and_skip(tmp_path):
    logs = tmp_path / 'logs'
    p = run_script('cifar10lt_classify.sh', '-n', tmp_path / 'd', logs, CLS_ROWS='ce cas_cbdm',
                   CLS_EPOCHS=3, CAS_FILL=7, SAMPLER='ddim', SAMPLE_STEPS=10, SAMPLE_BATCH=64,
                   EXTRA_FLAGS='--num_workers 1')
    assert p.returncode == 0, p.stderr
    (ce, _), (cas, switches) = [parse_flags(c) for c in commands(p.stdout)]
    assert ce['--cls_epochs'] == '3' and cas['--synthetic_fill'] == '7'
    assert cas['--sampler'] == 'ddim' and cas['--sample_steps'] == '10'
    assert cas['--batch_size'] == '64' and '--synthetic_only' in switches
    assert commands(p.stdout)[1][-2:] == ['--num_workers', '1']
    done = logs / 'cifar10lt_cls_ce'
    done.mkdir(parents=True)
    (done / 'eval.jsonl').write_text(json.dumps({'kind': 'classify', 'top1': 0.5}) + '\n')
    p = run_script('cifar10lt_classify.sh', '-n', tmp_path / 'd', logs, CLS_ROWS='ce')
    assert p.returncode == 0 and not commands(p.stdout) and 'skip ce' in p.stdout
    for bad in (dict(CLS_ROWS='ce nope'), dict(CLS_EPOCHS='0'), dict(SYN_FILL='tail')):
        p = run_script('cifar10lt_classify.sh', '-n', **bad)
        assert p.returncode != 0 and list(bad)[0] in p.stderr


def test_digits_classify_dry_run(tmp_path):
    logs = tmp_path / 'logs'
    p = run_script('digitslt_classify.sh', '-n', logs, SEEDS='0 1 2')
    assert p.returncode == 0, p.stderr
    assert os.listdir(tmp_path) == []
    cmds = [parse_flags(c) for c in commands(p.stdout)]
    assert len(cmds) == 2 + 3 * 5
    (ddpm, ddpm_sw), (cbdm, cbdm_sw) = cmds[:2]
    assert '--cfg' in ddpm_sw and '--cb' in cbdm_sw and ddpm['--total_steps'] == '2500'
    runs = [v['--logdir'] for v, _ in cmds[2:]]
    assert runs == [str(logs / f'digitslt_cls_{r}_s{s}') for s in range(3)
                    for r in ('ce', 'ddpm', 'cbdm', 'cas_ddpm', 'cas_cbdm')]
    for values, switches in cmds[2:]:
        assert values['--flagfile'] == './config/classify_digitslt.txt'
        if '--synthetic_logdir' in values:
            assert values['--ckpt_step'] == '2499' and values['--synthetic_fill'] == 'head'
            assert ('--synthetic_only' in switches) == ('cas_' in values['--logdir'])
            # --classify's default sampler for generated sets (auto) unless SAMPLER says
            assert '--sampler' not in values and '--sample_steps' not in values
    p = run_script('digitslt_classify.sh', '-n', logs, SEEDS='0', SAMPLER='ddim',
                   SAMPLE_STEPS='100')
    assert p.returncode == 0, p.stderr
    drawn = [parse_flags(c)[0] for c in commands(p.stdout)[2:] if '--synthetic_logdir' in c]
    assert drawn and all(v['--sampler'] == 'ddim' and v['--sample_steps'] == '100'
                         for v in drawn)


def test_collect_results_accuracy_columns(tmp_path):
    write_jsonl(tmp_path / 'cifar10lt_ltdm' / 'eval.jsonl', [
        {'ckpt_step': 300000, 'sample_method': 'cfg', 'omega': 1.6, 'FID': 5.5,
         'num_images': 50000}])
    write_jsonl(tmp_path / 'cifar10lt_cls_ce' / 'eval.jsonl', [
        {'kind': 'classify', 'mode': 'ce', 'top1': 0.7, 'top1_many': 0.9, 'top1_medium': 0.7,
         'top1_few': None}])                                        # older than --cls_loss
    write_jsonl(tmp_path / 'cifar10lt_cls_ldam' / 'eval.jsonl', [
        {'kind': 'classify', 'mode': 'ldam_drw+resample', 'cls_loss': 'ldam_drw',
         'drw_epoch': 160, 'la_tau': None, 'loss_counts': 'real', 'resample': True,
         'top1': 0.8}])
    write_jsonl(tmp_path / 'cifar10lt_cls_la' / 'eval.jsonl', [
        {'kind': 'classify', 'mode': 'logit_adjust+synthetic', 'cls_loss': 'logit_adjust',
         'drw_epoch': None, 'la_tau': 0.5, 'loss_counts': 'real+generated', 'top1': 0.8}])
    write_jsonl(tmp_path / 'cifar10lt_cls_cbdm' / 'eval.jsonl', [
        {'kind': 'classify', 'mode': 'ce+synthetic', 'generator': 'cifar10lt_ltdm',
         'ckpt_step': 300000, 'sample_method': 'cfg', 'omega': 1.6, 'top1': 0.75,
         'top1_many': 0.9, 'top1_medium': 0.72, 'top1_few': 0.61}])
    p = collect(tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    at = header.index('FID') + 1                                     # beside FID
    assert header[at:at + 6] == ['classifier', 'loss', 'top1', 'top1_many', 'top1_medium',
                                 'top1_few']
    assert header[at + 6] == 'IS' and len(header) == 17 + 6
    rows = {r['run']: r for r in (dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
                                  for line in lines[2:])}
    assert rows['cifar10lt_cls_ce']['top1'] == '0.700' and rows['cifar10lt_cls_ce']['top1_few'] == '-'
    assert rows['cifar10lt_cls_ce']['FID'] == '-' and rows['cifar10lt_cls_ce']['classifier'] == 'ce'
    assert rows['cifar10lt_cls_ce']['loss'] == 'ce'
    assert rows['cifar10lt_cls_ldam']['loss'] == 'ldam_drw (drw 160)'
    assert rows['cifar10lt_cls_ldam']['classifier'] == 'ldam_drw+resample'
    assert rows['cifar10lt_cls_la']['loss'] == 'logit_adjust (tau 0.5, counts real+generated)'
    assert rows['cifar10lt_ltdm']['loss'] == '-'
    cbdm = rows['cifar10lt_cls_cbdm']
    assert cbdm['FID'] == '5.50' and cbdm['top1_few'] == '0.610'   # the generator's FID beside
    assert rows['cifar10lt_ltdm']['top1'] == '-'
    table = list(csv.DictReader(io.StringIO(collect(tmp_path, '--csv').stdout)))
    assert {r['top1'] for r in table} == {'', '0.7', '0.75', '0.8'}


# --------------------------------------------------------------------------------------------
# (f) the MNIST-LT long-tail baselines: scripts/mnistlt_baselines.sh and scripts/table_seeds.py
# --------------------------------------------------------------------------------------------
BASELINE_ROWS = ['ce', 'ce_drw', 'ldam_drw', 'balanced_softmax', 'logit_adjust', 'ce_resample']


def echoed(stdout):
    """(main.py commands, table_seeds.py commands) echoed by `run`, as token lists."""
    mains, tables = [], []
    for line in stdout.splitlines():
        if line.startswith('+ '):
            tokens = shlex.split(line[2:])
            (mains if tokens[1] == 'main.py' else tables).append(tokens[1:])
    return mains, tables


def test_mnistlt_baselines_dry_run(tmp_path):
    logs, table = tmp_path / 'logs', tmp_path / 'table.md'
    p = run_script('mnistlt_baselines.sh', '--dry-run', logs, table)
    assert p.returncode == 0, p.stderr + p.stdout
    assert os.listdir(tmp_path) == []
    mains, tables = echoed(p.stdout)
    cmds = [parse_flags(c[1:]) for c in mains]
    assert [v['--logdir'] for v, _ in cmds] == [str(logs / f'mnistlt_cls_{r}_s{s}')
                                                for s in range(3) for r in BASELINE_ROWS]
    for (values, switches), row in zip(cmds, BASELINE_ROWS * 3):
        assert values['--flagfile'] == './config/classify_mnistlt.txt'
        assert values['--cls_loss'] == ('ce' if row == 'ce_resample' else row)
        assert ('--cls_resample' in switches) == (row == 'ce_resample')
        assert '--cls_epochs' not in values            # the config's schedule
    [t] = tables
    assert t[:3] == ['scripts/table_seeds.py', str(logs), '--runs']
    assert t[t.index('--out') + 1] == str(table)
    # done runs are skipped; environment overrides; bad input
    done = logs / 'mnistlt_cls_ce_s1'
    done.mkdir(parents=True)
    (done / 'eval.jsonl').write_text('{}\n')
    p = run_script('mnistlt_baselines.sh', '-n', logs, table, SEEDS='1', ROWS='ce ldam_drw',
                   CLS_EPOCHS=5, DRW_EPOCH=4)
    assert p.returncode == 0, p.stderr
    [(values, _)] = [parse_flags(c[1:]) for c in echoed(p.stdout)[0]]
    assert values['--logdir'] == str(logs / 'mnistlt_cls_ldam_drw_s1')
    assert values['--cls_epochs'] == '5' and values['--cls_drw_epoch'] == '4'
    assert 'skip ce seed 1' in p.stdout
    for bad in (dict(ROWS='ce focal'), dict(SEEDS='0 x'), dict(CLS_EPOCHS='0'),
                dict(DRW_EPOCH='-1')):
        p = run_script('mnistlt_baselines.sh', '-n', logs, table, **bad)
        assert p.returncode != 0 and list(bad)[0] in p.stderr, (bad, p.stderr)


def test_mnistlt_baselines_tiny_run_writes_the_table(tmp_path):
    logs, table = tmp_path / 'logs', tmp_path / 'docs' / 'table.md'
    env = dict(SEEDS='0', ROWS='ce ldam_drw', CLS_EPOCHS=1,
               EXTRA_FLAGS='--cls_eval_every 0 --cls_batch_size 128')
    p = run_script('mnistlt_baselines.sh', logs, table, timeout=600, **env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = {r: json.loads((logs / f'mnistlt_cls_{r}_s0' / 'eval.jsonl').read_text())
            for r in ('ce', 'ldam_drw')}
    assert recs['ldam_drw']['cls_loss'] == 'ldam_drw' and recs['ldam_drw']['epochs'] == 1
    assert recs['ce']['data_type'] == 'mnistlt' and recs['ce']['test_images'] == 1000
    lines = table.read_text().splitlines()
    assert lines[0] == '| loss | seeds | top-1 | many | medium | few |'
    rows = {line.split(' | ')[0].lstrip('| '): line for line in lines[2:]}
    assert list(rows) == ['cross-entropy', 'LDAM-DRW']
    for label, row in (('cross-entropy', 'ce'), ('LDAM-DRW', 'ldam_drw')):
        cells = [c.strip() for c in rows[label].strip('|').split('|')]
        rec = recs[row]
        want = [f'{100 * rec[k]:.1f}' if rec[k] is not None else '-'
                for k in ('top1', 'top1_many', 'top1_medium', 'top1_few')]
        assert cells[1:] == ['1'] + want                # one seed: no ± part
    # a second call runs nothing and rewrites the same table
    before = table.read_text()
    p = run_script('mnistlt_baselines.sh', logs, table, **env)
    assert p.returncode == 0 and not echoed(p.stdout)[0] and 'skip ldam_drw seed 0' in p.stdout
    assert table.read_text() == before


def test_table_seeds_mean_and_std(tmp_path):
    def rec(top1, few):
        return {'kind': 'classify', 'top1': top1, 'top1_many': 0.9, 'top1_medium': None,
                'top1_few': few, 'cls_loss': 'ce'}
    for seed, (t, f) in enumerate([(0.80, 0.5), (0.82, 0.6), (0.84, None)]):
        write_jsonl(tmp_path / f'x_ce_s{seed}' / 'eval.jsonl', [rec(t, f)])
    write_jsonl(tmp_path / 'x_la_s0' / 'eval.jsonl', [rec(0.9, 0.7)])
    write_jsonl(tmp_path / 'other_s0' / 'eval.jsonl', [rec(0.1, 0.1)])
    script = os.path.join(SCRIPTS, 'table_seeds.py')
    p = subprocess.run([sys.executable, script, str(tmp_path), '--runs', 'x_*', '--order',
                        'x_la', '--label', 'x_ce=CE'], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == '| runs | seeds | top-1 | many | medium | few |'
    # mean 82.0, sample std 2.0 over three seeds; a missing value is left out of its cell
    assert lines[2:] == ['| x_la | 1 | 90.0 | 90.0 | - | 70.0 |',
                         '| CE | 3 | 82.0 ± 2.0 | 90.0 ± 0.0 | - | 55.0 ± 7.1 |']
    out = tmp_path / 'out' / 't.md'
    p = subprocess.run([sys.executable, script, str(tmp_path), '--group_by', 'cls_loss',
                        '--metrics', 'top1', '--digits', '2', '--out', str(out)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and 'wrote' in p.stdout, p.stderr
    assert out.read_text().splitlines()[2] == '| ce | 5 | 69.20 ± 33.30 |'
    p = subprocess.run([sys.executable, script, str(tmp_path), '--runs', 'nothing*'],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and 'no evaluations' in p.stderr


def test_table_seeds_per_diffusion_seed_column(tmp_path):
    """--per adds each diffusion model's means to a row pooled over both."""
    for d, seeds in ((0, [(0.90, 0.80), (0.92, 0.84)]), (1, [(0.80, 0.60)])):
        for s, (t, f) in enumerate(seeds):
            write_jsonl(tmp_path / f'gen_d{d}_s{s}' / 'eval.jsonl',
                        [{'kind': 'classify', 'top1': t, 'top1_few': f}])
    write_jsonl(tmp_path / 'ce_s0' / 'eval.jsonl', [{'kind': 'classify', 'top1': 0.5,
                                                     'top1_few': 0.1}])
    script = os.path.join(SCRIPTS, 'table_seeds.py')
    p = subprocess.run([sys.executable, script, str(tmp_path), '--seed_suffix',
                        '(_d[0-9]+)?_s[0-9]+$', '--metrics', 'top1', 'top1_few', '--per',
                        '_(d[0-9]+)_s', '--per_header', 'by model'],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == '| runs | seeds | top-1 | few | by model |'
    assert lines[1] == '|---|---:|---:|---:|---|'
    assert lines[2] == '| ce | 1 | 50.0 | 10.0 | - |'
    assert lines[3] == ('| gen | 3 | 87.3 ± 6.4 | 74.7 ± 12.9 | d0: 91.0 / 82.0; '
                        'd1: 80.0 / 60.0 |')
    p = subprocess.run([sys.executable, script, str(tmp_path), '--per', '_d[0-9]+_s'],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and 'exactly one capture group' in p.stderr


def _tdfa(*args, timeout=900):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'mnistlt_tdfa.py'),
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_mnistlt_tdfa_dry_run_passes_sets_and_classifiers(tmp_path):
    p = _tdfa('--dry-run', '--log_root', tmp_path, '--seeds', '0,1', '--diffusion_seeds', '0')
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [shlex.split(line[2:]) for line in p.stdout.splitlines() if line.startswith('+ ')]
    runs = {os.path.basename(x.split('=', 1)[1]): a for a in lines for x in a
            if x.startswith('--logdir=')}
    trained = [a for a in lines if '--train' in a]
    assert len(trained) == 2                                    # DDPM and CBDM, diffusion seed 0
    assert '--nocb' in trained[0] and '--nocb' not in trained[1]
    # seed 0 draws each set from its model; seed 1 trains on the same file
    assert '--synthetic_logdir=' + str(tmp_path / 'mnistlt_cbdm') in runs['cbdm_d0_s0']
    assert '--synthetic=SET_OF_cbdm_d0_s0' in runs['cbdm_d0_s1']
    assert not any(x.startswith('--synthetic_logdir') for x in runs['cbdm_d0_s1'])
    # the filter reads the same seed's real-data classifier; the feature rows its features
    assert f'--filter_logdir={tmp_path}/tdfa/ce_s1' in runs['cbdm_filter_d0_s1']
    assert f'--feature_classifier_logdir={tmp_path}/tdfa/ce_s1' in runs['feat_cb_s1']
    assert '--cb' in runs['feat_cb_s1'] and '--nocb' in runs['feat_ddpm_s1']
    assert '--translate_strength=0.8' in runs['translate08_d0_s0']
    # LDAM-DRW on the best row's images (--best, default the translations at 0.8)
    assert '--cls_loss=ldam_drw' in runs['best_ldam_translate08_d0_s0']
    assert '--synthetic=SET_OF_translate08_d0_s0' in runs['best_ldam_translate08_d0_s0']
    assert '--cls_counts_with_synthetic' not in runs['best_ldam_translate08_d0_s0']
    assert {'--cls_loss=ldam_drw', '--cls_counts_with_synthetic',
            '--synthetic=SET_OF_translate08_d0_s0'} <= set(runs['best_ldam_all_translate08_d0_s1'])
    # another --best: runs of their own (those of the default, once done, are not taken)
    p = _tdfa('--dry-run', '--log_root', tmp_path, '--seeds', '0', '--diffusion_seeds', '0',
              '--rows', 'best_ldam', '--best', 'cbdm')
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r'--synthetic=SET_OF_cbdm_d0_s0 --seed=0 --logdir=\S*/tdfa/'
                     r'best_ldam_cbdm_d0_s0\n', p.stdout), p.stdout[-3000:]
    # a row that reads another row's set or classifiers runs that row too
    p = _tdfa('--dry-run', '--log_root', tmp_path, '--seeds', '0', '--diffusion_seeds', '0',
              '--rows', 'best_ldam,cbdm_filter')
    assert p.returncode == 0 and 'also running translate08,cbdm,ce' in p.stdout, p.stdout[-2000:]
    names = re.findall(r'--logdir=\S*/tdfa/(\S+)', p.stdout)
    assert names == ['ce_s0', 'translate08_d0_s0', 'cbdm_d0_s0', 'best_ldam_translate08_d0_s0',
                     'cbdm_filter_d0_s0']
    # real-data rows alone need no diffusion model
    p = _tdfa('--dry-run', '--log_root', tmp_path, '--rows', 'ce,resample')
    assert p.returncode == 0 and '--train' not in p.stdout


def test_mnistlt_tdfa_tiny_real_rows_and_feature_rows(tmp_path):
    extra = ('--cls_epochs=1 --cls_eval_every=0 --cls_batch_size=128 --feat_steps=4 '
             '--feat_width=16 --feat_blocks=1 --feat_head_epochs=1 --T=10')
    out = tmp_path / 'table.md'
    p = _tdfa('--log_root', tmp_path, '--rows', 'ce,resample,feat_cb', '--seeds', '0,1',
              '--extra', extra, '--out', out)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert lines[0] == ('| runs | seeds | top-1 | many | medium | few | top-1 / few per '
                        'diffusion seed |')
    assert all(line.endswith(' | - |') for line in lines[2:])   # no diffusion model in these
    labels = [line.split(' | ')[0].lstrip('| ') for line in lines[2:]]
    assert labels == ['real images alone (988), cross-entropy',
                      'real images, class-balanced re-sampling (the control)',
                      'feature-level, class-balanced (--cfg --cb --tau 1)']
    assert all(line.split(' | ')[1] == '2' for line in lines[2:])      # two seeds each
    record = json.loads((tmp_path / 'tdfa' / 'resample_s1' / 'eval.jsonl').read_text())
    assert record['resample'] is True and record['epochs'] == 1 and record['seed'] == 1
    assert 'done in' in p.stdout
    # each run's log ends with its wall time; the script sums them
    walls = [int(re.findall(r'\[mnistlt_tdfa\] wall ([0-9]+) s',
                            (tmp_path / 'tdfa' / f).read_text())[-1])
             for f in os.listdir(tmp_path / 'tdfa') if f.endswith('.log')]
    assert len(walls) == 6 and min(walls) > 0           # ce, resample, feat_cb x 2 seeds
    total = re.search(r'holds took ([0-9.]+) h on one thread each \(([0-9]+) logs\)', p.stdout)
    assert total and int(total.group(2)) == len(walls), p.stdout[-1000:]
    assert float(total.group(1)) == round(sum(walls) / 3600, 1)
    # --table_only: the table of the runs there are, in the order asked, nothing run
    before = sorted(os.listdir(tmp_path / 'tdfa'))
    p = _tdfa('--log_root', tmp_path, '--rows', 'resample,ce,cbdm', '--table_only',
              '--out', tmp_path / 'only.md')
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'tdfa')) == before and '+ ' + sys.executable + ' main.py' \
        not in p.stdout
    lines = (tmp_path / 'only.md').read_text().splitlines()
    assert [line.split(' | ')[0].lstrip('| ') for line in lines[2:]] == [
        'real images, class-balanced re-sampling (the control)',
        'real images alone (988), cross-entropy',
        'feature-level, class-balanced (--cfg --cb --tau 1)']     # not asked: after, labelled


def test_readme_digits_classify_table_command(tmp_path):
    """docs/results_digits.md's table_seeds.py command for the digits recognition table, as
    written, on run folders named as scripts/digitslt_classify.sh names them."""
    from helpers import doc
    readme = doc('docs/results_digits.md')
    line = re.search(r'\n(python scripts/table_seeds.py logs/digitslt [^\n]*)\n', readme).group(1)
    rows = ['ce', 'ddpm', 'cbdm', 'cas_ddpm', 'cas_cbdm']
    for i, row in enumerate(reversed(rows)):
        for seed in range(3):
            write_jsonl(tmp_path / 'logs' / 'digitslt' / f'digitslt_cls_{row}_s{seed}' /
                        'eval.jsonl', [{'kind': 'classify', 'top1': 0.5 + 0.1 * i + 0.01 * seed,
                                        'top1_many': 1.0, 'top1_medium': 0.9, 'top1_few': 0.8}])
    args = shlex.split(line)
    p = subprocess.run([sys.executable, os.path.join(ROOT, args[1]), *args[2:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = (tmp_path / 'docs' / 'digitslt_classify.md').read_text().splitlines()
    assert lines[0].startswith('| training set | seeds | top-1 |')
    assert [r.split(' | ')[0].lstrip('| ') for r in lines[2:]] == [
        f'digitslt_cls_{row}' for row in rows]
    assert lines[2].split(' | ')[1:3] == ['3', '91.0 ± 1.0']      # ce: 0.9 + 0.01 * seed


def test_readme_tdfa_commands_as_written(tmp_path):
    """docs/tdfa.md's mnistlt_tdfa.py commands as written, each planned with --dry-run and a
    fresh --log_root appended (running them is hours; the tiny real run is above)."""
    from helpers import doc
    readme = doc('docs/tdfa.md')
    block = re.search(r'```\n(python scripts/mnistlt_tdfa.py --jobs 2\n.*?)```', readme,
                      flags=re.S).group(1)
    lines = block.strip().splitlines()
    assert len(lines) == 4
    planned = {}
    for line in lines:
        args = shlex.split(line)[2:]
        p = _tdfa(*args, '--dry-run', '--log_root', tmp_path)
        assert p.returncode == 0, (line, p.stderr[-2000:])
        planned[line] = [c for c in p.stdout.splitlines() if c.startswith('+ ')]
    assert os.listdir(tmp_path) == []                                   # nothing written
    whole, choice, partial, table_only = (planned[line] for line in lines)
    assert sum('--train' in c for c in whole) == 4                      # 2 models x 2 seeds
    assert any('choice_cbdm_ddim50_eta1_clip_d0_s0' in c for c in choice)
    assert any('best_ldam_all_cbdm_d0_s2' in c for c in partial)       # --best cbdm
    assert not any('_d1_' in c or 'translate08_d0_s' in c for c in partial)
    assert len(table_only) == 1 and 'table_seeds.py' in table_only[0]
