"""scripts/sampler_digits.py on a tiny digits run: every sampler row is scored from one noise."""
import os
import subprocess
import sys

from helpers import ROOT, copy_run, tiny_cfg_t20_run


def table_rows(logdir):
    return [line.split('|')[1:8] for line in (logdir / 'sampler_digits.md').read_text().splitlines()
            if line.startswith('| ') and not line.startswith('| sampler')]


def test_sampler_digits_table(tmp_path):
    logdir = copy_run(tiny_cfg_t20_run(), tmp_path / 'run')     # TINY, T 20, --cfg, 2 steps
    cmd = [sys.executable, os.path.join(ROOT, 'scripts', 'sampler_digits.py'), f'--logdir={logdir}',
           '--ckpt_step=1', '--per_class=6', '--steps=2,4', '--samplers=dpm++2m',
           '--stochastic_ddim', '--batch_size=30']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = table_rows(logdir)
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ('ddpm', '20'), ('dpm++2m', '2'), ('dpm++2m', '4'), ('ddim, eta 1', '2'),
        ('ddim, eta 1', '4')]
    for row in rows:
        fid, precision, recall, acc = (float(v) for v in row[2:6])
        assert fid > 0 and 0 <= precision <= 1 and 0 <= recall <= 1 and 0 <= acc <= 1
    # --reuse scores the saved sets again: the same figures, nothing drawn
    out = subprocess.run(cmd + ['--reuse'], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert table_rows(logdir) == rows
    # --omega_sweep: one set per omega from the same noise, a table and a plot
    out = subprocess.run(cmd[:4] + ['--per_class=6', '--omega_sweep=0,2', '--sweep_steps=3',
                                    '--batch_size=30', f'--out={tmp_path}/sweep.md'],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = [line.split('|')[1:8] for line in (tmp_path / 'sweep.md').read_text().splitlines()
             if line.startswith('| ') and not line.startswith('| omega')]
    assert [float(r[0]) for r in sweep] == [0.0, 2.0]
    assert all(1 <= float(r[2]) <= 10 for r in sweep)  # IS of a 10-class softmax
    assert (tmp_path / 'sweep.png').stat().st_size > 1000
    assert 'best omega by FID' in (tmp_path / 'sweep.md').read_text()
