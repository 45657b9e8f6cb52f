"""Run-folder mechanics shared by diffusion training (train.py) and the classifier
(recognition/loop.py): the newest checkpoint that loads, stale temporaries, RNG state and stop
signals.

A run folder holds `ckpt_{step}.pt` files written atomically (utils.atomic_write), so a crash
leaves at worst a `.NAME.*.tmp` file beside them; every checkpoint carries the process's RNG
states, so a resumed run continues the same random stream.
"""
import glob
import os
import random
import signal
import sys

import numpy as np
import torch

from checkpoint import list_checkpoints, load_checkpoint
from utils import UserError


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


def remove_stale_temporaries(folder):
    """Delete temporary files left by a process killed while writing (see utils.atomic_write)."""
    for path in glob.glob(os.path.join(glob.escape(folder), '.*.tmp')):
        os.remove(path)
