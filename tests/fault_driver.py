"""Run main.py with faults injected from the environment (tests only):

CBDM_SLOW_SAVE=S   sleep S seconds inside every checkpoint write, after the bytes are written
                   to the temporary file and before the rename (so a kill lands mid-write)
CBDM_NAN_STEP=N    make the training loss NaN from the N-th trainer call on
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

slow = float(os.environ.get('CBDM_SLOW_SAVE', '0'))
if slow:
    real_replace = os.replace

    def slow_replace(src, dst):
        if os.path.basename(str(dst)).startswith('ckpt_'):
            print(f'WRITING {dst}', file=sys.stderr, flush=True)
            time.sleep(slow)
        real_replace(src, dst)

    utils.os.replace = slow_replace

nan_step = int(os.environ.get('CBDM_NAN_STEP', '-1'))
if nan_step >= 0:
    import diffusion
    real_forward = diffusion.GaussianDiffusionTrainer.forward
    calls = [0]

    def nan_forward(self, *args, **kwargs):
        loss, reg = real_forward(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] > nan_step:
            loss = loss * float('nan')
        return loss, reg

    diffusion.GaussianDiffusionTrainer.forward = nan_forward

import main  # noqa: E402

sys.argv[0] = 'main.py'
main.main()
