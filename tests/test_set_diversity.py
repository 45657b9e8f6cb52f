"""scripts/set_diversity.py on sets whose answers are known: real digits, noise, copies of the
real tail images, a binarised set."""
import os
import subprocess
import sys

import numpy as np

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import set_diversity as sd  # noqa: E402


def save_set(folder, name, images, labels):
    path = folder / f'{name}.npy'
    np.save(path, images.astype(np.float32))
    np.save(folder / f'{name}_labels.npy', labels.astype(np.int64))
    return f'{name}={path}'


def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'set_diversity.py'),
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_set_diversity_on_known_sets(tmp_path):
    import dataset as D
    real, real_y = sd.real_set(D.build_test_dataset('mnist', '', 16))
    train, train_y = sd.real_set(D.build_dataset('mnistlt', '', 16))
    rng = np.random.default_rng(0)
    copies = np.repeat(train[train_y == 9][:1], 50, axis=0)            # one real tail image
    # every class one real image 100 times over: no spread within a class (only between them)
    first = np.array([np.flatnonzero(real_y == c)[0] for c in range(10)])
    collapsed_y = np.repeat(np.arange(10), 100)
    specs = [save_set(tmp_path, 'real', real, real_y),
             save_set(tmp_path, 'noise', rng.random(real.shape), real_y),
             save_set(tmp_path, 'binary', (real > 0.5).astype(np.float32), real_y),
             save_set(tmp_path, 'copies', np.concatenate([real, copies]),
                      np.concatenate([real_y, np.full(50, 9)])),
             save_set(tmp_path, 'collapsed', real[first[collapsed_y]], collapsed_y),
             save_set(tmp_path, 'shuffled', real, rng.permutation(real_y))]
    out_md = tmp_path / 'table.md'
    p = run('--sets', *specs, '--judge_dir', tmp_path / 'judge', '--judge_epochs', '2',
            '--out', out_md)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {}
    for line in out_md.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = dict(zip([k for k, _, _ in sd.COLUMNS], map(float, cells[1:])))
    assert rows['real']['n'] == 1000 and rows['real']['acc'] > 0.8
    # spread is within-class: a class of copies has none, a class holding every digit (labels
    # shuffled) far more than a real class
    assert rows['collapsed']['spread'] < 0.01 and rows['collapsed']['acc'] > 0.5
    assert rows['shuffled']['spread'] > 1.3 * rows['real']['spread']
    assert 0.8 < rows['real']['spread'] < 1.25       # the real test split is the reference
    assert rows['noise']['acc'] < 0.3 and rows['noise']['unsure'] > rows['real']['unsure']
    assert rows['binary']['saturated'] == 1.0 and rows['real']['saturated'] < 1.0
    # 50 copies of one real tail image pull the tail's nearest-real distance towards 0
    assert rows['copies']['tail_nn'] < rows['real']['tail_nn']
    assert rows['real']['tail_nn'] > 1.0


def test_set_diversity_refuses_a_set_without_labels(tmp_path):
    np.save(tmp_path / 'a.npy', np.zeros((2, 3, 16, 16), np.float32))
    p = run('--sets', f'a={tmp_path}/a.npy', '--judge_dir', tmp_path / 'judge')
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and 'a_labels.npy does not exist' in lines[0]
    assert not (tmp_path / 'judge').exists()
    p = run('--sets', 'nonpy', '--judge_dir', tmp_path / 'judge')
    assert p.returncode == 2 and 'NAME=PATH.npy' in p.stderr


def test_readme_command_as_written(tmp_path):
    """docs/tdfa.md's set_diversity.py block as written (run from the README's folder, on small
    sets placed at the paths it names), with the judge's folder and epochs appended."""
    import re
    from helpers import doc
    readme = doc('docs/tdfa.md')
    block = re.search(r'```\n(S=logs/tdfa\npython scripts/set_diversity.py [^\n]*)\n```',
                      readme).group(1)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    for path in re.findall(r'=\$S/(\S+\.npy)', block):
        folder = tmp_path / 'logs' / 'tdfa' / os.path.dirname(path)
        folder.mkdir(parents=True, exist_ok=True)
        save_set(folder, os.path.basename(path)[:-4], rng.random((60, 3, 16, 16)), labels)
    script = block.replace('python scripts/', f'{sys.executable} {ROOT}/scripts/')
    p = subprocess.run(['bash', '-c', f'{script} --judge_dir {tmp_path}/judge --judge_epochs 1'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stderr[-3000:]
    lines = (tmp_path / 'docs' / 'set_diversity_mnistlt.md').read_text().splitlines()
    assert [line.split(' | ')[0].lstrip('| ') for line in lines[2:]] == [
        'DDPM_unclipped', 'DDPM_clipped', 'CBDM_unclipped', 'CBDM_clipped']
