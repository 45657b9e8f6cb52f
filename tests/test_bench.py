"""scripts/bench.py end to end with the tiniest settings: every row of the markdown table is
there, with times, peak memory and a numeric ratio, the sampler throughput table has a row per
sampler, and --out writes the same markdown."""
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
    text, _ = bench_run
    assert '| sampler (cfg, bf16, batched) | steps | network GFLOP per image (all steps) |' in text
    rows = markdown_tables(text)[1]
    assert [(r[0], r[1]) for r in rows] == [('ddpm', '10'), ('ddim', '4'), ('dpm++2m', '4'),
                                            ('unipc', '4')]
    gflop = [float(r[2].replace(',', '')) for r in rows]
    assert gflop[0] == pytest.approx(2.5 * gflop[1], rel=0.01)  # 10 steps against 4
    for name, steps, _, per_step, per_s, total in rows:
        assert TIME.match(per_step), (name, per_step)
        assert float(per_s) > 0, (name, per_s)
        assert re.match(r'^\d+(\.\d+)? (s|min|h)$', total), (name, total)
    assert re.search(r'one network evaluation of one image is \d+\.\d{3} GFLOP', text)


def test_bench_rejects_bad_config():
    proc = subprocess.run([sys.executable, BENCH, '--ch', '48'], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert 'multiple of 32' in proc.stderr
