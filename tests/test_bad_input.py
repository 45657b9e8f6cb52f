"""Bad input found before anything is written (issue 22, items 7-11): directory links that loop,
one-class folders, classes emptied by the long-tail draw, a data set too large for memory,
folders that cannot be written and write failures, corrupt image files, and SIGTERM while a
generated set is drawn.

The tests run as root, where permission bits do not stop a write: a folder that cannot be
written is a regular file standing where the folder should be, and EACCES / ENOSPC / EROFS are
raised by patching the calls that would meet them."""
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dataset as D
import utils
from helpers import ROOT, TINY, run_main
from utils import UserError

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt')]


def snapshot(folder):
    """{relative path: mtime} of every file under `folder`, None when it does not exist."""
    if not os.path.exists(folder):
        return None
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def one_line_error(out, *expect):
    """The run failed with exit status 2 and one 'error:' line holding every string of
    `expect`, no traceback. Returns the line."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('error: '), last
    for text in expect:
        assert text in last, last
    return last


def write_png(path, size=(12, 10), seed=0):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.RandomState(seed).randint(0, 256, size=size + (3,)).astype(np.uint8)
    Image.fromarray(arr).save(path, format='PNG')


def image_folder(root, counts):
    """root/CLASS/i.png for CLASS, n in `counts` ({class name: number of images})."""
    for c, n in counts.items():
        for i in range(n):
            write_png(os.path.join(root, c, f'{i}.png'), seed=i)
    return str(root)


FOLDER_TRAIN = ['--train', *TINY, '--data_type=imagefolder', '--batch_size=2',
                '--total_steps=1', '--save_step=1', '--sample_step=0']


# ----------------------------------------------------------------------------------------------
# 7: directory links, one class, classes emptied by the long-tail draw

def test_a_directory_link_that_loops_is_refused(tmp_path):
    """torchvision follows directory links: `cat/loop -> ..` would give class cat the images
    of every class, again and again down the loop."""
    root = image_folder(tmp_path / 'train', {'cat': 2, 'dog': 3})
    os.symlink('..', os.path.join(root, 'cat', 'loop'))
    with pytest.raises(UserError, match=r'--root .*train: .*cat/loop links to .*train'):
        D.build_dataset('imagefolder', root, img_size=8)
    out = run_main(*FOLDER_TRAIN, f'--root={root}', f'--logdir={tmp_path}/run')
    one_line_error(out, '--root', 'cat/loop', 'loop')
    assert not (tmp_path / 'run').exists()


def test_directory_links_out_of_the_tree_are_followed_but_not_twice(tmp_path):
    root = image_folder(tmp_path / 'train', {'cat': 2, 'dog': 3})
    image_folder(tmp_path / 'elsewhere', {'more': 4})
    os.symlink(os.path.join(tmp_path, 'elsewhere', 'more'), os.path.join(root, 'dog', 'more'))
    ds = D.build_dataset('imagefolder', root, img_size=8)
    assert ds.class_counts.tolist() == [2, 7]            # dog's 3 and the 4 behind the link
    # the same folder under two classes would give its images two labels
    os.symlink(os.path.join('..', 'dog'), os.path.join(root, 'cat', 'dogs'))
    with pytest.raises(UserError, match=r'cat/dogs links to .*dog.*already'):
        D.build_dataset('imagefolder', root, img_size=8)


def test_one_class_folder_refused_by_classify_and_a_warning_for_training(tmp_path):
    root = image_folder(tmp_path / 'train', {'cat': 4})
    test = image_folder(tmp_path / 'test', {'cat': 2})
    logdir = tmp_path / 'cls'
    out = run_main(*DIGITS, '--data_type=imagefolder', f'--root={root}', f'--test_root={test}',
                   '--cls_epochs=1', f'--logdir={logdir}')
    one_line_error(out, '--root', 'one class', 'cat', 'at least two')
    assert not logdir.exists()
    run = tmp_path / 'run'
    out = run_main(*FOLDER_TRAIN, f'--root={root}', f'--logdir={run}')
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and 'one class (cat)' in warnings[0], out.stderr[-3000:]


def test_classes_emptied_by_the_long_tail_draw_are_named_on_one_line(capsys):
    """digits-LT at 1e-9 keeps 148, 15, 1 and 0 images: the line names the empty classes and the
    smallest --imb_factor that keeps an image in every class, which does keep one."""
    ds = D.build_dataset('digitslt', '', img_size=8, imb_factor=1e-9)
    empty = np.flatnonzero(ds.class_counts == 0).tolist()
    assert empty == list(range(3, 10))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: --imb_factor 1e-09'), err
    assert 'classes 3, 4, 5, 6, 7, 8, 9' in err[0]
    smallest = float(re.search(r'--imb_factor (\S+) or more', err[0]).group(1))
    ok = D.build_dataset('digitslt', '', img_size=8, imb_factor=smallest)
    assert ok.class_counts.min() == 1 and capsys.readouterr().err == ''
    # just below it, a class is empty again: the figure is the smallest, not any that works
    labels = D.load_digits_images()[1][D.digits_split()[0]]
    below = D.long_tail_counts(np.bincount(labels, minlength=10), smallest * 0.99)
    assert min(below) == 0
    D.build_dataset('mnistlt', '', img_size=8, imb_factor=1e-6)     # every long-tail draw
    assert 'warning: --imb_factor 1e-06' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# 8: a data set that cannot fit in memory

def test_img_size_too_large_for_memory_is_refused_with_one_that_fits(monkeypatch):
    """MNIST is fitted to --img_size once and held as float32 tensors: 5000 x 3 x S x S x 4
    bytes and more. Compared with the memory available, before anything is allocated."""
    monkeypatch.setattr(utils, 'available_memory', lambda: 100e6)
    with pytest.raises(UserError, match=r'--img_size 100: .*GB.*available') as e:
        D.build_dataset('mnistlt', '', img_size=100, imb_factor=0.01)
    fits = int(re.search(r'--img_size (\d+) or less', str(e.value)).group(1))
    assert D.data_memory('mnistlt', fits) <= 100e6 < D.data_memory('mnistlt', fits + 1)
    assert D.build_dataset('mnistlt', '', img_size=fits, imb_factor=0.01).img_size == fits
    # digits and CIFAR are held at their own size and resized on access: any size is fine
    D.build_dataset('digitslt', '', img_size=100, imb_factor=0.1)


def test_img_size_too_large_for_memory_end_to_end(tmp_path):
    out = run_main('--train', *TINY, '--data_type=mnistlt', '--img_size=20000',
                   f'--logdir={tmp_path}/run')
    one_line_error(out, '--img_size 20000', 'GB', 'or less')
    assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------------------------
# 9: folders that cannot be written, write failures

def fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize('code', [errno.EACCES, errno.ENOSPC, errno.EROFS])
def test_write_failures_are_one_line_and_leave_nothing_half_written(tmp_path, monkeypatch, code):
    path = tmp_path / 'set.npy'
    utils.save_npy(str(path), np.arange(3))
    # the disk fills up (or the folder turns read-only) while the bytes are written
    monkeypatch.setattr(utils.os, 'fsync', fail_with(code))
    with pytest.raises(UserError, match=rf'cannot write {re.escape(str(path))} '
                                        rf'\({os.strerror(code)}\)'):
        utils.save_npy(str(path), np.arange(1000))
    monkeypatch.undo()
    assert np.load(path).tolist() == [0, 1, 2]                 # the old file, whole
    assert os.listdir(tmp_path) == ['set.npy']                 # no temporary left
    # the temporary file cannot even be created
    monkeypatch.setattr(utils.tempfile, 'mkstemp', fail_with(code))
    with pytest.raises(UserError, match=rf'cannot write .*other.txt \({os.strerror(code)}\)'):
        utils.save_text(str(tmp_path / 'other.txt'), 'x')


def test_writable_folder_check_writes_a_probe(tmp_path, monkeypatch):
    """Permission bits do not tell (root ignores them; a read-only mount, a full disk): the
    check creates and removes a file in the folder and reports what the system said."""
    folder = tmp_path / 'out'
    folder.mkdir()
    utils.check_writable_dir(str(folder), 'logdir')
    assert os.listdir(folder) == []                            # the probe is gone
    monkeypatch.setattr(utils.tempfile, 'mkstemp', fail_with(errno.EROFS))
    with pytest.raises(UserError, match=r'--logdir .*out: .*not writable \(Read-only file'):
        utils.check_writable_dir(str(folder), 'logdir')
    with pytest.raises(UserError, match=r'--logdir .*new/run: .*not writable'):
        utils.check_writable_dir(str(tmp_path / 'new' / 'run'), 'logdir')


@pytest.fixture(scope='module')
def generator(tmp_path_factory):
    """A tiny class-conditional diffusion run on digits-LT (checkpoint at step 1)."""
    logdir = tmp_path_factory.mktemp('gen') / 'run'
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--total_steps=2', '--save_step=1',
                   '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir


def drawing_args(generator, logdir, *extra):
    return [*DIGITS, '--cls_epochs=1', f'--synthetic_logdir={generator}', '--ckpt_step=1',
            '--sample_method=cfg', '--omega=1.0', f'--logdir={logdir}', *extra]


@pytest.mark.parametrize('sub', ['synthetic', 'feature_diffusion'])
def test_unwritable_subfolder_is_refused_before_any_work(tmp_path, generator, sub):
    """LOGDIR/synthetic (the drawn set) or LOGDIR/feature_diffusion (--feature_aug) that cannot
    be written: one line before the classifier is trained or a set drawn, the folder as it was."""
    logdir = tmp_path / 'cls'
    logdir.mkdir()
    (logdir / sub).write_text('a file where the folder should be')
    before = snapshot(str(logdir))
    extra = (['--sampler=ddim', '--sample_steps=2', '--synthetic_fill=2'] if sub == 'synthetic'
             else ['--feature_aug', '--feat_steps=2'])
    args = drawing_args(generator, logdir, *extra) if sub == 'synthetic' else [
        *DIGITS, '--cls_epochs=1', f'--logdir={logdir}', *extra]
    out = run_main(*args)
    one_line_error(out, str(logdir / sub))
    assert snapshot(str(logdir)) == before


# ----------------------------------------------------------------------------------------------
# 10: corrupt images

def test_corrupt_image_is_refused_before_anything_is_written(tmp_path):
    root = image_folder(tmp_path / 'train', {'cat': 3, 'dog': 2})
    bad = os.path.join(root, 'dog', '1.png')
    with open(bad, 'wb') as f:
        f.write(b'\x89PNG but then nothing of an image')
    run = tmp_path / 'run'
    out = run_main(*FOLDER_TRAIN, f'--root={root}', f'--logdir={run}')
    one_line_error(out, bad)
    assert not run.exists()


def test_corrupt_or_empty_listed_image_is_refused_when_the_list_is_read(tmp_path):
    names = ['a/0.png', 'a/1.png', 'b/0.png']
    for i, name in enumerate(names):
        write_png(str(tmp_path / name), seed=i)
    (tmp_path / 'ImageNet_LT_train.txt').write_text('a/0.png 0\na/1.png 0\nb/0.png 1\n')
    assert len(D.build_dataset('imagenetlt', str(tmp_path), img_size=8)) == 3
    (tmp_path / 'a' / '1.png').write_bytes(b'')
    with pytest.raises(UserError, match=r'image .*a/1.png cannot be read.*1 of 3'):
        D.build_dataset('imagenetlt', str(tmp_path), img_size=8)


# ----------------------------------------------------------------------------------------------
# 11: SIGTERM while drawing a generated set

def test_sigterm_while_drawing_stops_on_one_line_exit_zero_nothing_partial(tmp_path, generator):
    logdir = tmp_path / 'cls'
    args = drawing_args(generator, logdir, '--sampler=ddpm', '--synthetic_fill=400',
                        '--batch_size=8')
    proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    err = bytearray()

    def read_stderr():
        for chunk in iter(lambda: os.read(proc.stderr.fileno(), 4096), b''):
            err.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    start = time.time()
    while b'generating' not in err:          # the progress bar: drawing has begun
        assert proc.poll() is None, bytes(err).decode()[-3000:]
        assert time.time() - start < 240, 'drawing never began'
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = bytes(err).decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert 'Traceback' not in stderr
    line = [s for s in stdout.splitlines() if s.startswith('SIGTERM')]
    assert len(line) == 1 and 'stopped while drawing' in line[0], stdout[-3000:]
    assert 'run the same command again' in line[0]
    drawn = os.listdir(logdir / 'synthetic') if (logdir / 'synthetic').exists() else []
    assert drawn == []                       # nothing of the set, not even a temporary file
    assert not [n for n in os.listdir(logdir) if n.startswith('ckpt') or n == 'eval.jsonl']
