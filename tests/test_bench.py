"""scripts/bench.py end to end with the tiniest settings: every row of the markdown table is
there, with times, peak memory and a numeric ratio, and --out writes the same markdown."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'scripts', 'bench.py')
TINY = ['--ch', '32', '--ch_mult', '1', '--attn', '0', '--num_res_blocks', '1', '--img_size', '8',
        '--batch', '2', '--T', '10', '--full_sample_T', '10', '--sample_steps', '3',
        '--sample_batch', '2', '--feat_n', '200', '--feat_dim', '64', '--repeats', '1',
        '--device', 'cpu', '--amp', 'bf16']
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


def table_rows(text):
    lines = [l for l in text.splitlines() if l.startswith('| ')]
    assert lines[0].startswith('| benchmark | baseline | time | peak mem | optimised |')
    return [[c.strip() for c in l.strip().strip('|').split('|')] for l in lines[1:]]


def test_bench_tiny_table(tmp_path):
    out = tmp_path / 'bench.md'
    text = run_bench('--out', str(out))
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


def test_bench_rejects_bad_config():
    proc = subprocess.run([sys.executable, BENCH, '--ch', '48'], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert 'multiple of 32' in proc.stderr
