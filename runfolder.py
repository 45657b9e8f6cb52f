"""Run-folder mechanics shared by the training loops (train.py, recognition/loop.py,
recognition/feature_diffusion.py): the newest checkpoint that loads, stale temporaries, RNG
state, stop signals and the step-indexed batch order that makes a resumed run equal a straight
one, and the record of the training data a run folder was trained on.

A run folder holds `ckpt_{step}.pt` files written atomically (utils.atomic_write), so a crash
leaves at worst a `.NAME.*.tmp` file beside them; every checkpoint carries the process's RNG
states, so a resumed run continues the same random stream. Its DATA_RECORD (data.json) holds the
identity of its training data (dataset.data_identity), so that it is never resumed on other data.
"""
import glob
import json
import os
import random
import signal
import sys

import numpy as np
import torch
from torch.utils.data import Sampler

from checkpoint import list_checkpoints, load_checkpoint
from utils import UserError, save_text


def rng_state():
    """Every RNG state of this process: torch (and CUDA when present), NumPy, Python."""
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
             'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class StopRequest:
    """SIGINT/SIGTERM set `signal` (the signal's name); the loop saves after the current step.
    A context manager: the previous handlers come back on exit."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def newest_loadable_checkpoint(folder, verbose=True, load=load_checkpoint):
    """(path, checkpoint) of the newest ckpt_*.pt in `folder` that `load` reads, or None.
    Unreadable ones (truncated by a crash, foreign) are skipped with a warning."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except UserError as e:
            if verbose:
                print(f'warning: skipping unreadable checkpoint: {e}', file=sys.stderr)
    return None


class StepBatchSampler(Sampler):
    """Infinite batches of indices, a pure function of (seed, step): the batch of step s is
    slice s % E of the permutation of epoch s // E (E = N // batch_size, torch.Generator seeded
    with seed * 1_000_003 + epoch). Under DDP each rank yields its own contiguous part of the
    global batch."""

    def __init__(self, n, batch_size, seed, start_step, rank=0, world_size=1):
        if n < batch_size:
            raise UserError(f'--batch_size {batch_size} is larger than the data set ({n} images)')
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.per_epoch = n // batch_size
        self.local = batch_size // world_size

    def permutation(self, epoch):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        step = self.start_step
        epoch, perm = None, None
        while True:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = self.permutation(epoch)
            start = (step % self.per_epoch) * self.batch_size + self.rank * self.local
            yield perm[start:start + self.local].tolist()
            step += 1


def load_kind_checkpoint(path, kind, what):
    """torch.load of a checkpoint dict whose 'kind' is `kind` (a classifier's, a feature
    model's); UserError naming `what` when it is truncated, not a checkpoint or of another kind."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise UserError(f'checkpoint {path} is truncated or not a checkpoint '
                        f'({type(e).__name__})') from None
    if not isinstance(ckpt, dict) or ckpt.get('kind') != kind:
        raise UserError(f'{path} is not {what}')
    return ckpt


def remove_stale_temporaries(folder):
    """Delete temporary files left by a process killed while writing (see utils.atomic_write)."""
    for path in glob.glob(os.path.join(glob.escape(folder), '.*.tmp')):
        os.remove(path)


DATA_RECORD = 'data.json'
# the keys of a data identity in the order that explains a difference best; items_sha256 is
# named only when nothing before it differs
_DATA_KEYS = ('data_type', 'imb_type', 'imb_factor', 'img_size', 'images', 'class_counts',
              'items_sha256')


def _shown(value):
    """A recorded value for a one-line message: long lists and hashes shortened."""
    if isinstance(value, list) and len(value) > 10:
        return '[' + ', '.join(map(str, value[:10])) + ', ...]'
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + '...'
    return str(value)


def check_data_record(folder, identity, resume, flag='--logdir', verbose=True):
    """Before a run that resumes from `folder` writes anything: UserError (one line naming what
    differs) when the folder's DATA_RECORD is of other training data than `identity`
    (dataset.data_identity), whether or not there is training left to do; a warning line when
    a run folder (checkpoints or a flagfile.txt) has no record (written before records existed:
    its data cannot be checked; the run records its own). Nothing is checked without `resume`
    (--noresume: the run starts over and its record replaces the old one)."""
    path = os.path.join(folder, DATA_RECORD)
    if not resume:
        return
    if not os.path.isfile(path):
        if verbose and (list_checkpoints(folder)
                        or os.path.isfile(os.path.join(folder, 'flagfile.txt'))):
            print(f'warning: {flag} {folder} has no {DATA_RECORD} (written before run folders '
                  f'recorded their data): its training data could not be checked against this '
                  f'run\'s; recording this run\'s', file=sys.stderr)
        return
    try:
        with open(path) as f:
            recorded = json.load(f)
        if not isinstance(recorded, dict):
            raise ValueError('not a JSON object')
    except (OSError, ValueError) as e:
        raise UserError(f'{path} is not a readable data record ({type(e).__name__}); delete it '
                        f'to resume without the check, or pass --noresume') from None
    keys = list(_DATA_KEYS) + sorted((set(recorded) | set(identity)) - set(_DATA_KEYS))
    differ = [k for k in keys if recorded.get(k) != identity.get(k)]
    if len(differ) > 1 and 'items_sha256' in differ:
        differ.remove('items_sha256')
    if differ:
        what = '; '.join(f'{k} {_shown(recorded.get(k))} there, {_shown(identity.get(k))} now'
                         for k in differ)
        if differ == ['items_sha256']:
            what += ': other images (file names and sizes, or the indices drawn)'
        raise UserError(f'{flag} {folder} was trained on other data ({what}); rerun with its '
                        f'data, use another {flag}, or pass --noresume to start over')


def write_data_record(folder, identity):
    """Record `identity` (dataset.data_identity) as `folder`'s DATA_RECORD, atomically."""
    save_text(os.path.join(folder, DATA_RECORD), json.dumps(identity, indent=1) + '\n')
