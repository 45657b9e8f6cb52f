"""Small shared helpers: user-facing errors, the device, and atomic file writes.

Every file a run produces (checkpoints, sample arrays, flagfiles, results) goes through
`atomic_write`, so a crash or a kill -9 at any moment leaves earlier files intact and never
leaves a half-written file under the final name.
"""
import contextlib
import errno
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch


class UserError(Exception):
    """Bad input from the user: `main.py` prints the message on one line and exits non-zero."""


def run_script(main):
    """Run a script's `main()`; a UserError becomes one line 'error: ...' on stderr and exit
    status 2, as main.py does."""
    try:
        main()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


def get_device():
    """CUDA when present, else CPU."""
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def available_memory():
    """Bytes of memory available to a new allocation now (Linux: MemAvailable of /proc/meminfo,
    else free physical pages), or None when the system does not say."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def _fsync_dir(dirname):
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# what a write meets when the disk is full or the folder may not be written: one line, not a
# traceback (other OSErrors are bugs or hardware and keep theirs)
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def write_failure(path, e):
    """The UserError for OSError `e` met writing `path` (one of WRITE_ERRNOS)."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    hint = ('free space on that disk' if full else 'make its folder writable or choose another')
    return UserError(f'cannot write {path} ({e.strerror}); nothing was written under that name: '
                     f'{hint} and run the same command again')


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is untouched; a full disk or a
    folder that may not be written (WRITE_ERRNOS) becomes a UserError naming `path`.
    """
    path = os.fspath(path)
    dirname = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                                   dir=dirname)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_failure(path, e) from None
        raise
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(dirname)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            raise write_failure(path, e) from None
        raise


def save_torch(obj, path):
    """`torch.save` atomically (serialised in memory first, so a slow disk never sees a partial file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path) as f:
        f.write(buf.getbuffer())


def save_npy(path, array):
    with atomic_write(path) as f:
        np.save(f, array)


def save_npz(path, **arrays):
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def save_text(path, text):
    with atomic_write(path, 'w') as f:
        f.write(text)


def append_text(path, text):
    """Append `text` to `path` by rewriting it atomically (result files are small)."""
    old = ''
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    save_text(path, old + text)


def append_jsonl(path, record):
    append_text(path, json.dumps(record, sort_keys=True) + '\n')


def check_writable_dir(path, flag):
    """Raise UserError unless `path` is, or can be created as, a folder we may write to. The
    nearest folder that exists on the way takes a probe file, created and removed at once:
    permission bits say nothing to root, nor about a read-only mount. Leaves nothing behind."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(f'--{flag} {path}: {probe} is a file, not a folder; choose another '
                        f'--{flag}')
    try:
        fd, tmp = tempfile.mkstemp(prefix='.write_probe.', suffix='.tmp', dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise UserError(f'--{flag} {path}: {probe} is not writable ({e.strerror}); choose a '
                        f'folder you can write to') from None
