"""Running main.py as a user would, with a tiny model on the embedded digits data."""
import os
import pathlib
import shutil
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


def shared_folder():
    """The folder of this pytest run that every xdist worker sees (tests/conftest.py)."""
    folder = os.environ.get('CBDM_TEST_SHARED')
    assert folder, 'CBDM_TEST_SHARED is set by tests/conftest.py'
    return folder


def built_once(name, build):
    """shared_folder()/name, made by `build(path)` once for the whole pytest run: the first
    worker to ask builds it while holding a file lock, the others wait and reuse it. A build
    that fails leaves nothing (the next one to ask tries again). Whoever changes what is in it
    works on a copy (shutil.copytree), since other tests read it."""
    from filelock import FileLock      # a dependency of torch: always installed with it
    path = os.path.join(shared_folder(), name)
    with FileLock(path + '.lock'):
        if not os.path.exists(path + '.done'):
            shutil.rmtree(path, ignore_errors=True)
            try:
                build(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            open(path + '.done', 'w').close()
    return path


def random_inception_home(torch_home):
    """Make `torch_home` a TORCH_HOME holding random FID Inception weights
    (fakedata.write_random_inception), linked to one copy made once per pytest run."""
    from fakedata import INCEPTION_WEIGHTS_NAME, write_random_inception
    home = built_once('torch_home', write_random_inception)
    folder = os.path.join(str(torch_home), 'hub', 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    os.symlink(os.path.join(home, 'hub', 'checkpoints', INCEPTION_WEIGHTS_NAME),
               os.path.join(folder, INCEPTION_WEIGHTS_NAME))
    return torch_home


def _build_cifar10lt_with_stats(tmp):
    from fakedata import write_cifar10
    write_cifar10(os.path.join(tmp, 'data'), per_class=12, test_per_class=1)
    random_inception_home(os.path.join(tmp, 'torch_home'))
    out = run_main('--make_stats', '--data_type=cifar10lt', '--imb_factor=0.1',
                   f'--root={tmp}/data', '--img_size=8',
                   f'--fid_cache={tmp}/stats/cifar10.train.npz', '--batch_size=60',
                   env={'TORCH_HOME': os.path.join(tmp, 'torch_home')}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def fake_cifar10lt_with_stats(tmp):
    """Fake CIFAR-10 on disk at tmp/data (12 training images per class, 1 test image), random
    Inception weights under tmp/torch_home and their FID statistics of the training set at
    tmp/stats/cifar10.train.npz: (the data flags of a cifar10lt run at imbalance 0.1 and 8x8,
    12, 9, 7, 5, 4, 3, 2, 2, 1, 1 images per class; the environment that finds the weights).
    Made once per pytest run: tmp/data and tmp/torch_home link to the shared copy, tmp/stats
    is a copy of its own."""
    shared = built_once('cifar10lt_stats', _build_cifar10lt_with_stats)
    for name in ('data', 'torch_home'):
        os.symlink(os.path.join(shared, name), tmp / name)
    shutil.copytree(os.path.join(shared, 'stats'), tmp / 'stats')
    env = {'TORCH_HOME': str(tmp / 'torch_home')}
    data = ['--data_type=cifar10lt', '--imb_factor=0.1', f'--root={tmp}/data', '--img_size=8']
    return data, env


def trained_once(name, *args):
    """The run folder of `main.py --train ARGS --logdir=.../name/run`, trained once per pytest
    run and shared (its name is `run`, as a test's own would be): read it (as
    --synthetic_logdir, for errors that must leave it alone), or copy_run it before writing
    into it."""
    def build(path):
        out = run_main('--train', *args, f'--logdir={path}/run')
        assert out.returncode == 0, out.stderr[-3000:]
    return pathlib.Path(built_once(name, build)) / 'run'


def tiny_cfg_run():
    """TINY conditional DDPM with classifier-free guidance trained 2 steps, ckpt_0 and ckpt_1
    saved, no grid: the generator of many tests (shared: copy_run it to write into it)."""
    return trained_once('tiny_cfg', *TINY, '--conditional', '--cfg', '--total_steps=2',
                        '--save_step=1', '--sample_step=0')


def tiny_cfg_t20_run():
    """tiny_cfg_run with T 20 (shared: copy_run it to write into it)."""
    return trained_once('tiny_cfg_t20', *TINY, '--T=20', '--conditional', '--cfg',
                        '--total_steps=2', '--save_step=1', '--sample_step=0')


def copy_run(run, dest):
    """A copy of the run folder `run` at `dest` whose flagfile.txt names `dest` as --logdir
    (so that `--flagfile DEST/flagfile.txt` writes into the copy)."""
    shutil.copytree(run, dest)
    path = os.path.join(dest, 'flagfile.txt')
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, 'w') as f:
        f.writelines(f'--logdir={dest}\n' if line.startswith('--logdir=') else line
                     for line in lines)
    return dest


def run_main_in_process(*args, env=None):
    """`python main.py ARGS` through main.main() in this process, for commands that must fail
    before any work (a process start costs seconds of importing torch): a CompletedProcess with
    the exit status, stdout and stderr (an uncaught exception as its traceback, status 1). The
    flags, sys.argv, the environment and the working directory are restored afterwards."""
    import contextlib
    import io
    import traceback
    from absl import flags
    import main
    old_argv, old_env, old_cwd = sys.argv, dict(os.environ), os.getcwd()
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.environ.update(env or {})
        os.chdir(ROOT)
        flags.FLAGS.unparse_flags()
        sys.argv = ['main.py', *map(str, args)]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        flags.FLAGS.unparse_flags()
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)
    return subprocess.CompletedProcess(['main.py', *map(str, args)], code, out.getvalue(),
                                       err.getvalue())


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
