"""End to end: train a few steps, FID statistics of fake CIFAR files, --eval, --sampled."""
import csv
import json
import os

import numpy as np
import pytest

from helpers import TINY, fake_cifar10lt_with_stats, run_main
from grids import grid_labels

# fake CIFAR-10 with 12 images per class; long-tailed at 0.1: 12, 9, 7, 5, 4, 3, 2, 2, 1, 1
GROUPS = ['--many_shot=5', '--few_shot=2']  # head: 3 classes, medium: 5, tail: 2


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('eval')
    data, env = fake_cifar10lt_with_stats(tmp)
    logdir = tmp / 'run'
    out = run_main('--train', *TINY, *data, '--conditional', '--cb', '--total_steps=3',
                   '--save_step=2', '--sample_step=0', f'--logdir={logdir}', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, logdir, env


def test_make_stats_files(setup):
    tmp, _, _ = setup
    stats = np.load(tmp / 'stats' / 'cifar10.train.npz')
    assert stats['mu'].shape == (2048,) and stats['sigma'].shape == (2048, 2048)
    feats = np.load(tmp / 'stats' / 'cifar10.train_feats.npz')
    assert feats['feats'].shape == (120, 2048) and feats['feats'].dtype == np.float32
    assert np.bincount(feats['labels']).tolist() == [12] * 10  # the balanced set, all of it


def test_eval_then_sampled(setup):
    tmp, logdir, env = setup
    args = [f'--flagfile={logdir}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=2',
            '--num_images=40', '--batch_size=20', '--sample_method=cfg', '--omega=1.0',
            f'--fid_cache={tmp}/stats/cifar10.train.npz', '--fid_use_torch', *GROUPS]
    out = run_main(*args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    name = 'saved_N40_STEP2'
    samples = np.load(logdir / f'cfg_1.0_samples_ema_{name}.npy')
    labels = np.load(logdir / f'cfg_1.0_labels_ema_{name}.npy')
    assert samples.shape == (40, 3, 8, 8) and len(np.unique(samples.reshape(40, -1), axis=0)) == 40
    assert labels.shape == (40,) and labels.min() >= 0 and labels.max() < 10
    feats = np.load(logdir / f'cfg_1.0_feats_ema_{name}.npz')
    assert feats['feats'].shape == (40, 2048) and feats['probs'].shape == (40, 1008)
    assert (logdir / f'visual_ema_cfg_1.0_{name}.png').is_file()
    assert 'FID' in (logdir / f'res_ema_{name}.txt').read_text()

    record = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    for key in ('FID', 'IS', 'precision', 'recall', 'F8', 'F1/8'):
        assert isinstance(record[key], float), key
    assert record['classes_head'] == 3 and record['classes_tail'] == 2
    assert record['ckpt_step'] == 2 and record['omega'] == 1.0

    with open(logdir / f'per_class_ema_cfg_1.0_{name}.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['class', 'train_count', 'group', 'n_generated', 'n_real', 'fid',
                             'precision', 'recall']
    assert [int(r['n_real']) for r in rows] == [12] * 10
    assert all(r['fid'] == '' for r in rows)  # 12 real images per class < --min_fid_images 100
    assert record['inception_precision'] == 'fp32' and record['sample_steps'] == 50
    for plot in (f'per_class_ema_cfg_1.0_{name}.png', f'groups_ema_cfg_1.0_{name}.png'):
        assert (logdir / plot).stat().st_size > 1000, plot
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('wrote results to ') and f'res_ema_{name}.txt' in last
    assert [int(r['train_count']) for r in rows] == [12, 9, 7, 5, 4, 3, 2, 2, 1, 1]
    assert [r['group'] for r in rows] == ['head'] * 3 + ['medium'] * 5 + ['tail'] * 2
    assert sum(int(r['n_generated']) for r in rows) == 40

    # --sampled: the saved set again, from its saved features, without the model
    os.remove(logdir / f'cfg_1.0_samples_ema_{name}.npy')
    out = run_main(*args, '--sampled', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    assert again['FID'] == pytest.approx(record['FID']) and again['IS'] == record['IS']
    assert len((logdir / 'eval.jsonl').read_text().splitlines()) == 2


def test_eval_step_during_training(setup):
    tmp, _, env = setup
    logdir = tmp / 'run_eval_step'
    out = run_main('--train', *TINY, '--data_type=cifar10lt', '--imb_factor=0.1',
                   f'--root={tmp}/data', '--img_size=8', '--conditional', '--cfg',
                   '--total_steps=3', '--save_step=0', '--sample_step=0', '--eval_step=2',
                   '--num_images=12', '--sampler=ddim', '--sample_steps=5', '--noprd',
                   f'--fid_cache={tmp}/stats/cifar10.train.npz', f'--logdir={logdir}', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    assert record['ckpt_step'] == 2 and record['during_training'] is True
    assert isinstance(record['FID'], float) and record['F8'] is None


def test_eval_split_across_two_processes(setup):
    import subprocess
    import sys
    from helpers import ROOT
    tmp, logdir, env = setup
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           'main.py', f'--flagfile={logdir}/flagfile.txt', '--notrain', '--eval',
           '--ckpt_step=2', '--num_images=11', '--sample_name=ddp', '--sampler=ddim',
           '--sample_steps=5', '--noprd', '--noimproved_prd',
           f'--fid_cache={tmp}/stats/cifar10.train.npz']
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, out.stderr[-3000:]
    assert np.load(logdir / 'cfg_0.0_samples_ema_ddp_N11_STEP2_ddim5quad.npy').shape == (11, 3, 8, 8)
    records = [json.loads(r) for r in (logdir / 'eval.jsonl').read_text().splitlines()]
    assert sum(r['name'] == 'ddp_N11_STEP2_ddim5quad' for r in records) == 1


def test_omega_sweep(setup):
    """--omega_sweep: one evaluation per omega from the same noise and labels, one table, one
    plot, the best omega printed; --amp bf16 in the flags leaves Inception in fp32."""
    tmp, logdir, env = setup
    out = run_main(f'--flagfile={logdir}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=2',
                   '--num_images=24', '--batch_size=12', '--sample_method=cfg',
                   '--omega_sweep=0,1.5,3', '--sampler=dpm++2m', '--sample_steps=5', '--noprd',
                   '--amp=bf16', '--sample_name=sweep', f'--fid_cache={tmp}/stats/cifar10.train.npz',
                   *GROUPS, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    name = 'sweep_N24_STEP2_dpm++2m5lu'
    labels = [np.load(logdir / f'cfg_{w}_labels_ema_{name}.npy') for w in ('0.0', '1.5', '3.0')]
    assert all((lab == labels[0]).all() for lab in labels)  # the same labels for every omega
    samples = [np.load(logdir / f'cfg_{w}_samples_ema_{name}.npy') for w in ('0.0', '1.5', '3.0')]
    assert not np.allclose(samples[0], samples[2])  # guidance changed the images
    with open(logdir / f'omega_sweep_cfg_{name}.csv') as f:
        table = list(csv.DictReader(f))
    assert [float(r['omega']) for r in table] == [0.0, 1.5, 3.0]
    records = [json.loads(r) for r in (logdir / 'eval.jsonl').read_text().splitlines()]
    sweep = [r for r in records if r.get('name') == name]
    assert [r['omega'] for r in sweep] == [0.0, 1.5, 3.0]
    assert all(r['inception_precision'] == 'fp32' and r['sampler'] == 'dpm++2m' for r in sweep)
    for row, rec in zip(table, sweep):
        assert float(row['FID']) == pytest.approx(rec['FID'], rel=1e-5)
    fids = [r['FID'] for r in sweep]
    assert min(fids) > 1e-3 and len({round(f, 6) for f in fids}) == 3, fids
    best = min(sweep, key=lambda r: r['FID'])
    assert f'best omega by FID: {best["omega"]:g}' in out.stdout
    assert (logdir / f'omega_sweep_cfg_{name}.png').stat().st_size > 1000


def test_sample_grid_rows_are_labelled(setup):
    _, logdir, env = setup
    out = run_main('--notrain', '--sample', f'--flagfile={logdir}/flagfile.txt', '--ckpt_step=2',
                   '--sample_method=cond', '--sample_size=7', '--sampler=unipc',
                   '--sample_steps=4', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    stem = 'sample_cond_0.0_STEP2_unipc4exponential_clip'
    assert (logdir / f'{stem}_labelled.png').stat().st_size > 1000
    labels = np.load(logdir / f'{stem}_labels.npy')
    assert labels.tolist() == grid_labels(10, 7)[0].tolist() and len(set(labels)) == 7
    assert f'{stem}_labelled.png' in out.stdout.strip().splitlines()[-1]
