"""Tests of the digits-LT proxy experiment: scripts/proxy_digits.sh (dry run) and
scripts/proxy_eval.py on tiny synthetic sample sets (real digits and noise)."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'proxy_digits.sh')
EVAL = os.path.join(ROOT, 'scripts', 'proxy_eval.py')
SCRIPT_ENV = ('LOG_ROOT', 'DRY_RUN', 'EXTRA_FLAGS', 'TOTAL_STEPS', 'BATCH_SIZE', 'SEED', 'OMEGA',
              'SAMPLE_SIZE', 'SAMPLER', 'SAMPLE_STEPS', 'SAMPLE_BATCH', 'PARALLEL')


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    e.update(PYTHON=sys.executable, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    e.update({k: str(v) for k, v in extra.items()})
    return e


def dry_run(*args, **extra):
    r = subprocess.run(['bash', SCRIPT, '--dry-run', *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=env(**extra))
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith('+ ')]
    return r.stdout, cmds


def test_dry_run_same_budget(tmp_path):
    out, cmds = dry_run(str(tmp_path / 'logs'))
    assert not (tmp_path / 'logs').exists(), 'a dry run writes nothing'
    train = [parse_flags(c[2:]) for c in cmds if c[1] == 'main.py' and '--train' in c]
    sample = [parse_flags(c[2:]) for c in cmds if c[1] == 'main.py' and '--sample' in c]
    evals = [c for c in cmds if c[1].endswith('proxy_eval.py')]
    assert len(train) == 2 and len(sample) == 2 and len(evals) == 1, out
    (ddpm, ddpm_sw), (cbdm, cbdm_sw) = train
    for key in ('--flagfile', '--total_steps', '--batch_size', '--seed'):
        assert ddpm[key] == cbdm[key], key
    assert ddpm['--flagfile'] == './config/demo.txt'
    assert ddpm['--total_steps'] == '2500' and ddpm['--batch_size'] == '64'
    assert {'--conditional', '--cfg', '--nocb'} <= ddpm_sw and '--cb' not in ddpm_sw
    assert {'--conditional', '--cb'} <= cbdm_sw and cbdm['--tau'] == '1.0'
    assert ddpm['--logdir'] == str(tmp_path / 'logs' / 'proxy_ddpm')
    assert cbdm['--logdir'] == str(tmp_path / 'logs' / 'proxy_cbdm')
    (s1, _), (s2, _) = sample
    for key in ('--omega', '--sample_method', '--sampler', '--sample_size', '--seed',
                '--ckpt_step'):
        assert s1[key] == s2[key], key
    assert s1['--sample_method'] == 'cfg' and s1['--ckpt_step'] == '2499'
    assert s1['--sample_size'] == '500'
    assert evals[0].count('--samples') == 2


def test_dry_run_overrides_reach_both(tmp_path):
    _, cmds = dry_run(str(tmp_path), TOTAL_STEPS=300, BATCH_SIZE=32, SAMPLER='ddim',
                      SAMPLE_STEPS=20, OMEGA=2)
    train = [parse_flags(c[2:])[0] for c in cmds if '--train' in c]
    sample = [parse_flags(c[2:])[0] for c in cmds if '--sample' in c]
    assert [t['--total_steps'] for t in train] == ['300', '300']
    assert [t['--batch_size'] for t in train] == ['32', '32']
    assert [s['--sample_steps'] for s in sample] == ['20', '20']
    assert [s['--omega'] for s in sample] == ['2.0', '2.0']
    assert [s['--ckpt_step'] for s in sample] == ['299', '299']


def test_bad_environment():
    r = subprocess.run(['bash', SCRIPT, '--dry-run'], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=env(TOTAL_STEPS='x'))
    assert r.returncode != 0 and 'TOTAL_STEPS' in r.stderr


def run_eval(log_root, *args):
    return subprocess.run([sys.executable, EVAL, '--log_root', str(log_root), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env())


@pytest.fixture(scope='module')
def sample_sets(tmp_path_factory):
    sys.path.insert(0, ROOT)
    from dataset import load_digits_images
    d = tmp_path_factory.mktemp('proxy')
    x, y = load_digits_images()
    x, y = x.numpy(), np.asarray(y)
    rng = np.random.RandomState(1)
    idx = np.concatenate([rng.choice(np.where(y == c)[0], 40, replace=False) for c in range(10)])
    np.save(d / 'real.npy', x[idx])
    np.save(d / 'real_labels.npy', y[idx])
    np.save(d / 'noise.npy', rng.rand(200, 3, 8, 8).astype(np.float32))
    np.save(d / 'noise_labels.npy', np.repeat(np.arange(10), 20))
    return d


def test_eval_real_and_noise(sample_sets):
    d = sample_sets
    r = run_eval(d, '--samples', f'REAL={d / "real.npy"}', '--samples', f'NOISE={d / "noise.npy"}',
                 '--out', d / 'table.md', '--json', d / 'res.json')
    assert r.returncode == 0, r.stderr
    res = json.loads((d / 'res.json').read_text())
    assert res['classifier_test_acc'] > 0.95
    assert res['train_counts'] == [148, 117, 88, 71, 54, 42, 32, 24, 18, 15]
    assert res['groups']['head'] == [0, 1, 2, 3, 4] and res['groups']['tail'] == [5, 6, 7, 8, 9]
    real, noise = res['results']['REAL'], res['results']['NOISE']
    for row in ('head', 'tail', 'all'):
        assert real[row]['acc'] > 0.95
        assert real[row]['precision'] == 1.0     # the samples are reference points
        assert real[row]['recall'] > 0.85
        assert noise[row]['acc'] < 0.4
        assert noise[row]['precision'] < 0.1
    assert real['all']['n'] == 400 and real['0']['n'] == 40
    assert min(real[str(c)]['acc'] for c in range(10)) > 0.85
    table = (d / 'table.md').read_text()
    assert table == r.stdout[r.stdout.index('Classifier:'):r.stdout.index('wrote ')]
    rows = [line for line in table.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + 10 + 3      # header, classes, head / tail / all
    assert rows[1].startswith('| 0 | 148 |') and rows[-1].startswith('| **all** | 609 |')
    assert rows[0].count('acc') == 2
    assert (d / 'proxy_classifier.pt').is_file()

    # the second run reuses the cached classifier
    r2 = run_eval(d, '--samples', f'REAL={d / "real.npy"}', '--out', d / 'table2.md')
    assert r2.returncode == 0, r2.stderr
    assert 'classifier: cached' in r2.stdout
    first = [[c.strip() for c in line.split('|')[3:6]] for line in rows[1:]]
    again = [[c.strip() for c in line.split('|')[3:6]]
             for line in (d / 'table2.md').read_text().splitlines() if line.startswith('| ')][1:]
    assert first == again


def test_eval_rejects_unconditional_samples(tmp_path):
    np.save(tmp_path / 's.npy', np.zeros((10, 3, 8, 8), np.float32))
    np.save(tmp_path / 's_labels.npy', np.full(10, -1, np.int64))
    r = run_eval(tmp_path, '--samples', f'U={tmp_path / "s.npy"}')
    assert r.returncode == 2 and 'labels must be class ids' in r.stderr
    assert not (tmp_path / 'proxy_classifier.pt').exists()
    r = run_eval(tmp_path, '--samples', f'U={tmp_path / "missing.npy"}')
    assert r.returncode == 2 and 'not found' in r.stderr


def test_judge_cache_is_reused_only_for_the_same_network(tmp_path, monkeypatch):
    """LOG_ROOT/proxy_classifier.pt is keyed by the seed and the judge's network and training
    code: a cache written under the old key (same seed) is retrained, a cache of this network is
    reused, and a change to the network's code retrains again instead of loading the old
    weights into the new network."""
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import torch
    import proxy_eval
    from utils import save_torch
    x, y = proxy_eval.real_digits()
    x, y = x[:40], y[:40]
    save_torch({'arch': 'proxy-cnn-v1-e20', 'seed': 0, 'state': {}, 'test_acc': 0.5},
               str(tmp_path / proxy_eval.CACHE_NAME))
    logs = []
    first, acc = proxy_eval.load_or_train(tmp_path, 0, x, y, log=logs.append)
    assert 'another seed / architecture; retraining' in logs[0] and acc != 0.5
    again, acc_again = proxy_eval.load_or_train(tmp_path, 0, x, y, log=logs.append)
    assert logs[-1].startswith('classifier: cached') and acc_again == acc
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 again.state_dict().values()))

    class ChangedNet(proxy_eval.DigitNet):
        """The network with other code (e.g. another layer)."""
    monkeypatch.setattr(proxy_eval, 'DigitNet', ChangedNet)
    proxy_eval.load_or_train(tmp_path, 0, x, y, log=logs.append)
    assert 'retraining' in logs[-2] and not logs[-1].startswith('classifier: cached')
