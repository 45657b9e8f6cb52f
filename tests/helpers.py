"""Running main.py as a user would, with a tiny model on the embedded digits data."""
import os
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--data_type=digitslt', '--imb_factor=0.1', '--img_size=8', '--ch=32', '--ch_mult=1',
        '--attn=-1', '--num_res_blocks=1', '--dropout=0.0', '--T=50', '--lr=1e-3', '--warmup=5',
        '--batch_size=16', '--num_workers=0', '--ema_decay=0.9', '--sample_size=20']


def doc(name):
    """The text of a documentation page, `name` relative to the repo root ('README.md',
    'docs/tdfa.md'): tests that run a documented command as written read it where it lives."""
    with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        return f.read()


def run_main(*args, timeout=300, env=None):
    """Run `python main.py ARGS` from the repo root; returns the CompletedProcess."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, 'main.py', *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def fake_cifar10lt_with_stats(tmp):
    """Fake CIFAR-10 on disk at tmp/data (12 training images per class, 1 test image), random
    Inception weights under tmp/torch_home and their FID statistics of the training set at
    tmp/stats/cifar10.train.npz: (the data flags of a cifar10lt run at imbalance 0.1 and 8x8,
    12, 9, 7, 5, 4, 3, 2, 2, 1, 1 images per class; the environment that finds the weights)."""
    from fakedata import write_cifar10, write_random_inception
    write_cifar10(str(tmp / 'data'), per_class=12, test_per_class=1)
    write_random_inception(tmp / 'torch_home')
    env = {'TORCH_HOME': str(tmp / 'torch_home')}
    data = ['--data_type=cifar10lt', '--imb_factor=0.1', f'--root={tmp}/data', '--img_size=8']
    out = run_main('--make_stats', *data, f'--fid_cache={tmp}/stats/cifar10.train.npz',
                   '--batch_size=60', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return data, env


def popen_main(*args):
    return subprocess.Popen([sys.executable, 'main.py', *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))


def parse_flags(tokens):
    """(flag -> last value, set of switches) of a command's arguments, e.g. a dry-run line."""
    values, switches = {}, set()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith('--') and i + 1 < len(tokens) and not tokens[i + 1].startswith('--'):
            values[t] = tokens[i + 1]
            i += 2
        else:
            switches.add(t)
            i += 1
    return values, switches


def event_scalars(folder):
    """{tag: [(step, value)]} of the tensorboard event files in `folder` (TFRecord framing:
    length u64, crc u32, Event proto, crc u32)."""
    from tensorboardX.proto import event_pb2
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith('events.out.tfevents'):
            continue
        with open(os.path.join(folder, name), 'rb') as f:
            data = f.read()
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
