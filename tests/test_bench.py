"""scripts/bench.py end to end with the tiniest settings: every row of the markdown table is
there, with times, peak memory and a numeric ratio, the sampler throughput table has a row per
sampler (dpm++2m-sde and the recommended setting included) with its clipping and speed-up over
DDPM, and --out writes the same markdown."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'scripts', 'bench.py')
TINY = ['--ch', '32', '--ch_mult', '1', '--attn', '0', '--num_res_blocks', '1', '--img_size', '8',
        '--batch', '2', '--T', '10', '--full_sample_T', '10', '--sample_steps', '3',
        '--sample_batch', '2', '--fast_steps', '4', '--feat_n', '200', '--feat_dim', '64',
        '--repeats', '1', '--device', 'cpu', '--amp', 'bf16']
ROWS = ['train step plain', 'train step --cfg', 'train step --cb', 'sampling step cond',
        'sampling step cfg', 'full cfg sample', 'full cfg sample', 'improved P/R', 'FID distance']
TIME = re.compile(r'^\d+(\.\d+)? (us|ms|s)$')
MEM = re.compile(r'^\d+(\.\d+)? (MiB|GiB)$')
RATIO = re.compile(r'^\d+\.\d\dx$')


def run_bench(*extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, BENCH, *TINY, *extra], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def markdown_tables(text):
    """Every markdown table of the output: a list of row lists (header and separator dropped)."""
    tables, current = [], None
    for line in text.splitlines() + ['']:
        if line.startswith('|'):
            current = (current or []) + [line]
        elif current:
            tables.append(current)
            current = None
    return [[[c.strip() for c in l.strip().strip('|').split('|')] for l in t[2:]] for t in tables]


def table_rows(text):
    assert text.split('\n| ')[1].startswith('benchmark | baseline | time | peak mem | optimised |')
    return markdown_tables(text)[0]


@pytest.fixture(scope='module')
def bench_run(tmp_path_factory):
    """(stdout, --out file) of one tiny run, shared by the tests of its two tables."""
    out = tmp_path_factory.mktemp('bench') / 'bench.md'
    return run_bench('--out', str(out)), out


def test_bench_tiny_table(bench_run):
    text, out = bench_run
    assert text.startswith('Machine: ')
    assert 'torch ' + __import__('torch').__version__ in text.splitlines()[0]
    rows = table_rows(text)
    assert len(rows) == len(ROWS)
    for row, name in zip(rows, ROWS):
        assert row[0].startswith(name), (row[0], name)
    for name, base, bt, bm, opt, ot, om, ratio in rows:
        for t in (bt, ot):
            assert TIME.match(t), (name, t)
        for m in (bm, om):
            assert MEM.match(m), (name, m)
        assert RATIO.match(ratio), (name, ratio)
        assert float(ratio[:-1]) > 0
    assert 'DDIM 3 steps' in text and 'DDPM 10 steps' in text
    # the chunked metrics agree with the brute force
    line = next(l for l in text.splitlines() if 'chunked (precision, recall)' in l)
    nums = re.findall(r'\((\d\.\d+), (\d\.\d+)\)', line)
    assert len(nums) == 2 and nums[0] == nums[1]
    assert out.read_text() == text


def test_bench_sampler_throughput(bench_run):
    from samplers import RECOMMENDED
    text, _ = bench_run
    assert ('| sampler (cfg, bf16, batched) | steps | clip | network GFLOP per image (all steps) |'
            in text)
    rows = markdown_tables(text)[1]
    # every fast sampler (the SDE solver included) and the setting --sampler auto stands for,
    # read from samplers.RECOMMENDED (its steps capped at --T 10, as auto caps them)
    recommended = min(RECOMMENDED['sample_steps'], 10)
    assert [(r[0], r[1], r[2]) for r in rows[:-1]] == [
        ('ddpm', '10', 'off'), ('ddim', '4', 'on'), ('dpm++2m', '4', 'on'),
        ('dpm++2m-sde', '4', 'on'), ('unipc', '4', 'on')]
    assert rows[-1][0].startswith(f'auto = {RECOMMENDED["sampler"]} {RECOMMENDED["spacing"]}')
    assert rows[-1][1:3] == [str(recommended), 'on' if RECOMMENDED['clip_denoised'] else 'off']
    gflop = [float(r[3].replace(',', '')) for r in rows]
    assert gflop[0] == pytest.approx(2.5 * gflop[1], rel=0.01)  # 10 steps against 4
    assert gflop[-1] == pytest.approx(gflop[0] * recommended / 10, rel=0.01)
    for name, steps, clip, _, per_step, per_s, speed_up, total in rows:
        assert TIME.match(per_step), (name, per_step)
        assert float(per_s) > 0, (name, per_s)
        assert re.match(r'^\d+\.\dx$', speed_up), (name, speed_up)
        assert re.match(r'^\d+(\.\d+)? (s|min|h)$', total), (name, total)
    assert rows[0][6] == '1.0x'  # DDPM against itself
    # speed-up = images/s over DDPM's images/s (both rounded in the table)
    for row in rows[1:]:
        ratio = float(row[5]) / float(rows[0][5])
        assert float(row[6][:-1]) == pytest.approx(ratio, rel=0.05, abs=0.06), row
    assert re.search(r'one network evaluation of one image is \d+\.\d{3} GFLOP', text)


def test_bench_rejects_bad_config():
    proc = subprocess.run([sys.executable, BENCH, '--ch', '48'], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert 'multiple of 32' in proc.stderr
