"""Resume exactly, survive kills and signals, stop on NaN."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import list_checkpoints, load_checkpoint
from helpers import ROOT, TINY, run_main

RUN = [*TINY, '--conditional', '--cb', '--sample_step=0', '--seed=3']


def driver(*args, env=None):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'fault_driver.py'),
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))


def wait_for(path, proc, timeout=120):
    start = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < timeout, f'{path} never appeared'
        time.sleep(0.02)


def assert_same_state(a, b):
    for part in ('net_model', 'ema_model'):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for sa, sb in zip(a['optim']['state'].values(), b['optim']['state'].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key])
    assert a['step'] == b['step'] and a['sched'] == b['sched']


def test_killed_and_resumed_equals_straight(tmp_path):
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    args = [*RUN, '--total_steps=24', '--save_step=4']
    out = run_main('--train', *args, f'--logdir={straight}')
    assert out.returncode == 0, out.stderr[-2000:]

    proc = driver('--train', *args, f'--logdir={resumed}')
    wait_for(resumed / 'ckpt_4.pt', proc)
    proc.kill()  # SIGKILL, somewhere after step 4
    proc.wait()
    killed_at = max(s for s, _ in list_checkpoints(str(resumed)))
    assert killed_at < 23, 'the run finished before it was killed'
    out = run_main('--train', *args, f'--logdir={resumed}')
    assert out.returncode == 0, out.stderr[-2000:]
    assert f'resuming from {resumed}/ckpt_{killed_at}.pt' in out.stdout
    assert_same_state(load_checkpoint(str(straight / 'ckpt_23.pt')),
                      load_checkpoint(str(resumed / 'ckpt_23.pt')))


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    args = [*RUN, '--total_steps=12', '--save_step=4']
    proc = driver('--train', *args, f'--logdir={tmp_path}', env={'CBDM_SLOW_SAVE': '5'})
    # the step-0 save is slow too: wait until it lands, then kill during the step-4 save
    wait_for(tmp_path / 'ckpt_0.pt', proc)
    start = time.time()
    while not any(n.startswith('.ckpt_4.pt') for n in os.listdir(tmp_path)):
        assert time.time() - start < 120
        time.sleep(0.02)
    time.sleep(0.5)  # the bytes are in the temporary file; the rename has not happened
    proc.kill()
    proc.wait()
    assert sorted(os.listdir(tmp_path)) != []
    assert not (tmp_path / 'ckpt_4.pt').exists()
    assert load_checkpoint(str(tmp_path / 'ckpt_0.pt'))['step'] == 0
    out = run_main('--train', *args, f'--logdir={tmp_path}')
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'ckpt_0.pt at step 1' in out.stdout
    assert load_checkpoint(str(tmp_path / 'ckpt_11.pt'))['step'] == 11
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_exits_zero(tmp_path, sig):
    proc = driver('--train', *RUN, '--total_steps=100000', '--save_step=100000',
                  f'--logdir={tmp_path}')
    wait_for(tmp_path / 'ckpt_0.pt', proc)
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    steps = [s for s, _ in list_checkpoints(str(tmp_path))]
    assert len(steps) == 2 and steps[1] > 0
    assert f'saved {tmp_path}/ckpt_{steps[1]}.pt' in stdout + stderr
    assert 'run the same command again to resume' in stdout + stderr
    assert load_checkpoint(str(tmp_path / f'ckpt_{steps[1]}.pt'))['step'] == steps[1]


def test_nan_loss_stops_with_message_and_saves_nothing(tmp_path):
    proc = driver('--train', *RUN, '--total_steps=50', '--save_step=2', f'--logdir={tmp_path}',
                  env={'CBDM_NAN_STEP': '5'})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('error: step 5: the loss is nan')
    assert f'Last good checkpoint: {tmp_path}/ckpt_4.pt' in last
    assert 'Traceback' not in stderr
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [0, 2, 4]


def test_keep_ckpt_deletes_only_older_periodic_checkpoints(tmp_path):
    out = run_main('--train', *RUN, '--total_steps=9', '--save_step=2', '--keep_ckpt=2',
                   f'--logdir={tmp_path}')
    assert out.returncode == 0, out.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [6, 8]


def test_checkpoint_of_a_kind_refuses_truncated_and_foreign_files(tmp_path):
    """The classifier's and the feature model's checkpoint loaders share one check."""
    import pytest
    import torch
    from recognition.feature_diffusion import load_feature_checkpoint
    from recognition.loop import load_classifier_checkpoint
    from utils import UserError
    good = tmp_path / 'cls.pt'
    torch.save({'kind': 'classifier', 'epoch': 3}, good)
    assert load_classifier_checkpoint(str(good))['epoch'] == 3
    with pytest.raises(UserError, match='is not a feature-diffusion checkpoint'):
        load_feature_checkpoint(str(good))
    (tmp_path / 'cut.pt').write_bytes(good.read_bytes()[:20])
    with pytest.raises(UserError, match='truncated or not a checkpoint'):
        load_classifier_checkpoint(str(tmp_path / 'cut.pt'))
