"""scripts/sampler_table.py's bookkeeping: which settings run in which order, and the "≈ DDPM"
mark against the unclipped DDPM reference (the end-to-end run is in test_mnistlt.py)."""
import argparse
import os
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import sampler_table as st  # noqa: E402
from utils import UserError  # noqa: E402


def args(**kw):
    base = dict(samplers='ddim,unipc', steps='10,20', seeds='0,1,2', ddpm_clip_seeds='')
    return argparse.Namespace(**{**base, **kw})


def test_few_step_settings_first_and_ddpm_last():
    rows = st.settings_list(args(), 1000)
    assert [r[:3] for r in rows[:2]] == [('ddim', 10, False), ('ddim', 10, True)]
    assert len(rows) == 2 * 2 * 2 + 2
    assert rows[-2] == ('ddpm', 1000, False, [0, 1, 2])
    assert rows[-1] == ('ddpm', 1000, True, [0, 1, 2])
    assert st.settings_list(args(ddpm_clip_seeds='0'), 1000)[-1] == ('ddpm', 1000, True, [0])
    assert st.settings_list(args(ddpm_clip_seeds='none'), 1000)[-1] == (
        'ddpm', 1000, False, [0, 1, 2])
    with pytest.raises(UserError, match='--ddpm_clip_seeds'):
        st.settings_list(args(ddpm_clip_seeds='0,x'), 1000)
    with pytest.raises(UserError, match='--samplers'):
        st.settings_list(args(samplers='euler'), 1000)


def summary(acc, precision, recall, fid):
    return {'acc': acc, 'precision': precision, 'recall': recall, 'FID': fid}


def test_near_ddpm_is_within_twice_the_reference_spread():
    ref = summary((0.90, 0.01), (0.80, 0.02), (0.70, 0.05), (100.0, 10.0))
    assert st.near_ddpm(summary((0.881, 0), (0.77, 0), (0.61, 0), (119.0, 0)), ref)
    assert not st.near_ddpm(summary((0.879, 0), (0.80, 0), (0.70, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.90, 0), (0.759, 0), (0.70, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.90, 0), (0.80, 0), (0.59, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.95, 0), (0.90, 0), (0.80, 0), (121.0, 0)), ref)


def test_ddpm_rows_are_shown_first_reference_on_top():
    rows = [(('ddim', 10, False), 'a'), (('ddpm', 1000, True), 'c'), (('ddim', 10, True), 'b'),
            (('ddpm', 1000, False), 'r')]
    assert [s for _, s in st.ordered(rows)] == ['r', 'c', 'a', 'b']


def test_readme_digits_command_as_written(tmp_path):
    """docs/samplers.md's sampler_table.py command on the digits demo run, as written (from the
    README's folder), on a 2-step demo run with T 10; fewer images, seeds, steps and samplers
    appended."""
    import re
    import shlex
    import subprocess
    from helpers import doc, run_main
    readme = doc('docs/samplers.md')
    line = re.search(r'\n(python scripts/sampler_table.py --logdir logs/demo_digitslt_cbdm '
                     r'[^\n]*)\n', readme).group(1)
    logdir = tmp_path / 'logs' / 'demo_digitslt_cbdm'
    out = run_main('--train', '--flagfile', 'config/demo.txt', '--T=10', '--total_steps=2',
                   '--save_step=1', '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    args = shlex.split(line)
    cmd = [sys.executable, os.path.join(ROOT, args[1]), *args[2:], '--ckpt_step', '1',
           '--per_class', '2', '--seeds', '0,1', '--steps', '2', '--samplers', 'dpm++2m-sde']
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stderr[-3000:]
    text = (tmp_path / 'docs' / 'sampler_digits_demo.md').read_text()
    rows = [r for r in text.split('Class acc per class')[0].splitlines() if r.startswith('| ')]
    assert rows[1].startswith('| ddpm | 10 | off | 20 | 2 |') and rows[1].endswith('reference |')
    assert rows[2].startswith('| ddpm | 10 | on | 20 | 1 |')        # --ddpm_clip_seeds 0
    assert [r.split(' | ')[:3] for r in rows[3:]] == [['| dpm++2m-sde', '2', 'off'],
                                                      ['| dpm++2m-sde', '2', 'on']]
    # the plot: 1100 x 400, the dpm++2m-sde series drawn in colour (the axes alone are grey)
    import numpy as np
    from PIL import Image
    image = np.asarray(Image.open(tmp_path / 'docs' / 'sampler_digits_demo.png').convert('RGB'))
    assert image.shape == (400, 1100, 3)
    assert (image.astype(int).max(2) - image.astype(int).min(2) > 100).sum() > 100
