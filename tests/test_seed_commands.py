"""The CBDM README's eight commands, run exactly as written.

Each command is the seed README's text (also in our README), run from a folder laid out as the
README assumes (./config, ./stats, ./logs), changed only by appended overrides that shrink the
model (ch 32, two levels, one res block), T (4), the step counts (divided by 100,000 and
rounded up, so the checkpoints the evaluation commands name exist: step 200,000 -> 2, 250,000 -> 3),
--num_images (20: EVAL_IMAGES) and --root
(tiny CIFAR-100 files in the real format). --parallel, the flagfile and --batch_size stay.

Beyond the files each command writes, the tests check that its switches did something: --cb
trains with a non-zero regulariser (logged), --augm feeds non-zero conditioning to the
augmentation embedding, --finetune starts from the pretrained run's EMA weights. The seed README
is vendored as tests/data/seed_readme.md (checked against ../shared/seed when present), so the
commands are always compared with it.
"""
import csv
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint import load_checkpoint
from fakedata import write_cifar100
from helpers import event_scalars, random_inception_home

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_README = os.path.join(ROOT, 'tests', 'data', 'seed_readme.md')
SHARED_SEED_README = os.path.join(ROOT, '..', 'shared', 'seed', '000_5df612c09b13ef5e.txt')

TRAIN_DDPM = """python main.py --train  \\
        --flagfile ./config/cifar100.txt --parallel \\
        --logdir ./logs/cifar100lt_ddpm --total_steps 300001 \\
        --conditional \\
        --data_type cifar100lt --imb_factor 0.01 --img_size 32 \\
        --batch_size 64 --save_step 100000 --sample_step 50000 \\
        --cfg"""
TRAIN_CBDM = """python main.py --train  \\
        --flagfile ./config/cifar100.txt --parallel \\
        --logdir ./logs/cifar100lt_ltdm --total_steps 300001 \\
        --conditional \\
        --data_type cifar100lt --imb_factor 0.01 --img_size 32 \\
        --batch_size 48 --save_step 100000 --sample_step 50000 \\
        --cb --tau 1.0"""
TRAIN_CBDM_AUGM = """python main.py --train  \\
        --flagfile ./config/cifar100.txt --parallel \\
        --logdir ./logs/cifar100lt_ltdm_augm --total_steps 500001 \\
        --conditional \\
        --data_type cifar100lt --imb_factor 0.01 --img_size 32 \\
        --batch_size 48 --save_step 100000 --sample_step 50000 \\
        --cb --tau 1.0 --augm"""
FINETUNE = """python main.py --train  \\
        --flagfile ./config/cifar100.txt --parallel \\
        --logdir ./logs/cifar100lt_ddpm --total_steps 100001 \\
        --conditional \\
        --data_type cifar100lt --imb_factor 0.01 --img_size 32 \\
        --batch_size 48 --save_step 50000 --sample_step 50000 \\
        --cb --tau 1.0 \\
        --finetune --finetuned_logdir cifar100lt_ltdm_finetune --ckpt_step 200000"""


def eval_command(run, step, batch_size, omega):
    return f"""python main.py \\
        --flagfile ./logs/{run}/flagfile.txt \\
        --logdir ./logs/{run} \\
        --fid_cache ./stats/cifar100.train.npz \\
        --ckpt_step {step} \\
        --num_images 50000 --batch_size {batch_size} \\
        --notrain \\
        --eval \\
        --sample_method cfg  --omega {omega}"""


EVALS = {
    'cifar100lt_ddpm': eval_command('cifar100lt_ddpm', 200000, 64, 0.8),
    'cifar100lt_ltdm': eval_command('cifar100lt_ltdm', 300000, 64, 1.6),
    'cifar100lt_ltdm_augm': eval_command('cifar100lt_ltdm_augm', 500000, 192, 1.4),
    'cifar100lt_ltdm_finetune': eval_command('cifar100lt_ltdm_finetune', 250000, 512, 2.0),
}
SCALE = 100000
EVAL_IMAGES = 20      # generated images an evaluation command draws and scores
SHRINK = ['--root', 'data', '--ch', '32', '--ch_mult', '1', '--ch_mult', '2',
          '--num_res_blocks', '1', '--T', '4']


def tokens(command):
    return shlex.split(command.replace('\\\n', ' '))


def scaled(command):
    """The appended overrides of a command: every step count divided by SCALE (a total of
    k * SCALE + 1 steps stays one past the last checkpoint)."""
    values, _ = flag_values(tokens(command))
    extra = list(SHRINK)
    for flag in ('--total_steps', '--save_step', '--sample_step', '--ckpt_step'):
        if flag in values:
            n = int(values[flag])
            extra += [flag, str(n // SCALE + (n % SCALE > 0))]
    if '--eval' in command:
        extra += ['--num_images', str(EVAL_IMAGES)]
    return extra


def flag_values(args):
    values, switches = {}, set()
    i = 0
    while i < len(args):
        if args[i].startswith('--') and i + 1 < len(args) and not args[i + 1].startswith('--'):
            values[args[i]] = args[i + 1]
            i += 2
        else:
            switches.add(args[i])
            i += 1
    return values, switches


def run_as_written(work, command, env):
    args = tokens(command)
    assert args[:2] == ['python', 'main.py']
    full = [sys.executable, os.path.join(ROOT, 'main.py'), *args[2:], *scaled(command)]
    out = subprocess.run(full, cwd=work, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, f'{" ".join(full)}\n{out.stderr[-3000:]}'
    return out


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A folder laid out as the README assumes: ./config, ./stats (a small FID reference set of
    100 fake CIFAR-100 images through random Inception weights), ./data, and ./logs to come."""
    tmp = tmp_path_factory.mktemp('seed')
    os.symlink(os.path.join(ROOT, 'config'), tmp / 'config')
    images, labels = write_cifar100(str(tmp / 'data'), per_class=100)
    random_inception_home(tmp / 'torch_home')
    env = {'TORCH_HOME': str(tmp / 'torch_home')}
    keep = np.concatenate([np.flatnonzero(labels == c)[:1] for c in range(100)])
    np.save(tmp / 'ref_images.npy', images[keep])
    np.save(tmp / 'ref_labels.npy', labels[keep])
    code = ('import sys, numpy as np; sys.path.insert(0, sys.argv[1]);'
            'from score.evaluate import make_stats; from score.inception import load_inception;'
            'make_stats(np.load("ref_images.npy"), np.load("ref_labels.npy"),'
            '"stats/cifar100.train.npz", load_inception(), batch_size=50, progress=False)')
    out = subprocess.run([sys.executable, '-c', code, ROOT], cwd=tmp, capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, env


def grid_shape(path):
    """(rows, columns) of a sample grid of 32 x 32 images: make_grid's 2-pixel padding, then
    shown at twice the size (grids.save_grid_png enlarges images under 64 pixels)."""
    width, height = Image.open(path).size
    return (height // 2 - 2) // 34, (width // 2 - 2) // 34


@pytest.fixture(scope='module')
def trained(work):
    tmp, env = work
    outputs = {}
    for run, command in (('cifar100lt_ddpm', TRAIN_DDPM), ('cifar100lt_ltdm', TRAIN_CBDM),
                         ('cifar100lt_ltdm_augm', TRAIN_CBDM_AUGM),
                         ('cifar100lt_ltdm_finetune', FINETUNE)):
        outputs[run] = run_as_written(tmp, command, env)
    return tmp, env, outputs


def test_training_commands(trained):
    tmp, _, outputs = trained
    logs = tmp / 'logs'
    expect = {'cifar100lt_ddpm': (4, [0, 1, 2, 3]), 'cifar100lt_ltdm': (4, [0, 1, 2, 3]),
              'cifar100lt_ltdm_augm': (6, [0, 1, 2, 3, 4, 5]),
              'cifar100lt_ltdm_finetune': (5, [3, 4])}
    for run, (end, saved) in expect.items():
        for step in saved:
            assert (logs / run / f'ckpt_{step}.pt').is_file(), (run, step)
        first = 3 if run.endswith('finetune') else 0  # the first step a run takes
        grids = sorted(int(p.stem) for p in (logs / run / 'sample').glob('*.png'))
        assert grids == list(range(first + 1, end)), (run, grids)
        # sample_size 64 of config/cifar100.txt: 10 class rows (head to tail) of 7, the last 1
        assert grid_shape(logs / run / 'sample' / f'{end - 1}.png') == (10, 7)
        last = outputs[run].stdout.strip().splitlines()[-1]
        assert last.startswith('wrote to ') and f'ckpt_{end - 1}.pt' in last, last
        assert 'flagfile.txt' in last and f'sample/{end - 1}.png' in last
    flagfile = (logs / 'cifar100lt_ltdm_finetune' / 'flagfile.txt').read_text()
    assert '--finetune' in flagfile and '--batch_size=48' in flagfile


def test_cb_trains_with_the_regulariser(trained):
    """--cb logs a non-zero class-balancing loss at step 0; --cfg alone logs exactly zero."""
    tmp, _, _ = trained
    logs = tmp / 'logs'
    cbdm = dict(event_scalars(logs / 'cifar100lt_ltdm')['loss_reg'])
    ddpm = dict(event_scalars(logs / 'cifar100lt_ddpm')['loss_reg'])
    assert cbdm[0] > 0 and ddpm[0] == 0


def test_augm_feeds_the_augmentation_embedding(trained):
    """With --augm the conditioning vectors are non-zero, so the augmentation embedding gets a
    gradient: Adam's first moment of its weight is non-zero (a zero conditioning gives it an
    exactly zero gradient, hence an exactly zero moment). The moment, not the weight: in the
    first steps of the warm-up the UNet's gain-1e-5 output layer makes the embeddings' updates
    smaller than a float32 ulp of their values."""
    tmp, _, _ = trained
    ckpt = load_checkpoint(str(tmp / 'logs' / 'cifar100lt_ltdm_augm' / 'ckpt_5.pt'))
    names = list(ckpt['net_model'])          # the UNet has no buffers: parameters in order
    moment = ckpt['optim']['state'][names.index('augm_embedding.weight')]['exp_avg']
    assert moment.abs().max() > 0 and moment.shape == (128, 9)
    no_augm = load_checkpoint(str(tmp / 'logs' / 'cifar100lt_ltdm' / 'ckpt_1.pt'))['net_model']
    assert 'augm_embedding.weight' not in no_augm


def test_finetune_starts_from_the_pretrained_ema(trained):
    """The fine-tuning run's first step (200,001 -> 3 here) trains at learning rate 0 (a new
    warm-up), so its network and EMA are the DDPM run's EMA weights of ckpt 200,000 (-> 2)
    exactly, not its raw weights."""
    tmp, _, _ = trained
    logs = tmp / 'logs'
    pretrained = load_checkpoint(str(logs / 'cifar100lt_ddpm' / 'ckpt_2.pt'))
    first = load_checkpoint(str(logs / 'cifar100lt_ltdm_finetune' / 'ckpt_3.pt'))
    for key, value in pretrained['ema_model'].items():
        assert torch.equal(first['net_model'][key], value), key
        assert torch.equal(first['ema_model'][key], value), key
    assert any(not torch.equal(pretrained['net_model'][k], v)
               for k, v in pretrained['ema_model'].items())


@pytest.mark.parametrize('run', list(EVALS))
def test_evaluation_commands(trained, run):
    tmp, env, _ = trained
    out = run_as_written(tmp, EVALS[run], env)
    logdir = tmp / 'logs' / run
    values, _ = flag_values(tokens(EVALS[run]))
    step = -(-int(values['--ckpt_step']) // SCALE)
    record = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    assert record['ckpt_step'] == step and record['num_images'] == EVAL_IMAGES
    assert record['omega'] == float(values['--omega']) and record['sample_method'] == 'cfg'
    assert record['inception_precision'] == 'fp32'
    assert np.isfinite(record['FID']) and record['FID'] > 0 and record['IS'] >= 1
    assert 0 <= record['precision'] <= 1 and 0 <= record['recall'] <= 1
    name = f'saved_N{EVAL_IMAGES}_STEP{step}'
    labels = np.load(logdir / f'cfg_{values["--omega"]}_labels_ema_{name}.npy')
    assert labels.shape == (EVAL_IMAGES,) and 0 <= labels.min() and labels.max() < 100
    with open(logdir / f'per_class_ema_cfg_{values["--omega"]}_{name}.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and all(r['n_real'] == '1' for r in rows)
    assert all(r['fid'] == '' for r in rows)  # 1 real image per class < --min_fid_images
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('wrote results to ') and f'res_ema_{name}.txt' in last, last


def normalised(text):
    return ' '.join(tokens(text))


@pytest.mark.parametrize('command', [TRAIN_DDPM, TRAIN_CBDM, TRAIN_CBDM_AUGM, FINETUNE,
                                     *EVALS.values()])
def test_commands_are_the_readmes(command):
    """The commands run above are our README's (and the seed README's, where it is at hand)."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    blocks = re.findall(r'```\n(.*?)```', readme, flags=re.S)
    ours = [normalised(line) for block in blocks
            for line in re.split(r'\n(?=python )', re.sub(r'#[^\n]*\n', '', block))]
    assert normalised(command) in ours
    seed = open(SEED_README).read()
    seed_blocks = [normalised(b) for b in re.findall(r'```\n(.*?)```', seed, flags=re.S)]
    assert normalised(command) in seed_blocks


def test_vendored_seed_readme_is_the_shared_one():
    """tests/data/seed_readme.md is a copy of the seed README; where the shared folder is at
    hand (a developer's checkout) it must be identical to it."""
    text = open(SEED_README).read()
    assert 'python main.py --train' in text and '--finetune' in text
    if os.path.isdir(os.path.dirname(SHARED_SEED_README)):
        assert open(SHARED_SEED_README).read() == text
