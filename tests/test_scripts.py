"""Tests of the experiment scripts: scripts/*lt_*.sh (one per row of the main table),
scripts/make_stats.sh, scripts/common.sh and scripts/collect_results.py.

Dry runs check the main.py commands against the README's settings; one real run trains and
evaluates the smallest script (cifar10lt_ddpm.sh) on fake CIFAR-10 with a tiny model and
random FID Inception weights in a temporary torch hub folder (never downloaded)."""
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import torch

from helpers import parse_flags
from fakedata import write_cifar10, write_random_inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'scripts')
WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
# variables the scripts read: never inherited from the caller's environment
SCRIPT_ENV = ('DATA_ROOT', 'LOG_ROOT', 'DRY_RUN', 'EXTRA_FLAGS', 'STATS_DIR', 'FID_CACHE',
              'DATASETS', 'TOTAL_STEPS', 'BATCH_SIZE', 'SAVE_STEP', 'SAMPLE_STEP', 'EVAL_CKPT',
              'OMEGA', 'EVAL_BATCH', 'NUM_IMAGES', 'SAMPLE_METHOD', 'RUN_NAME', 'FT_CKPT',
              'DDPM_RUN')
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
    write_random_inception(home)
    return home


def test_ddpm_script_end_to_end(tmp_path, torch_home):
    data, logs, stats = tmp_path / 'data', tmp_path / 'logs', tmp_path / 'stats'
    write_cifar10(str(data), per_class=3, test_per_class=1)  # LT at 0.01: 3+1+1 images
    env = dict(TORCH_HOME=torch_home, STATS_DIR=stats, EXTRA_FLAGS=TINY)

    p = run_script('make_stats.sh', data, DATASETS='cifar10', **env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (stats / 'cifar10.train.npz').is_file()
    assert (stats / 'cifar10.train_feats.npz').is_file()

    row_env = dict(env, TOTAL_STEPS=3, SAVE_STEP=1, SAMPLE_STEP=0, EVAL_CKPT=2, NUM_IMAGES=4)
    p = run_script('cifar10lt_ddpm.sh', data, logs, **row_env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = logs / 'cifar10lt_ddpm'
    assert (run_dir / 'ckpt_2.pt').is_file() and (run_dir / 'flagfile.txt').is_file()
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
