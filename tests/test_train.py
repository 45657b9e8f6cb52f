"""Training, fine-tuning and sampling through the command line, on a tiny model."""
import os

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint
from dataset import build_dataset
from diffusion import GaussianDiffusionTrainer
from helpers import ROOT, TINY, run_main
from model import UNet


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp('runs') / 'cbdm'
    out = run_main('--train', *TINY, '--conditional', '--cb', '--total_steps=60',
                   '--save_step=20', '--sample_step=60', '--omega=1.0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir


def tiny_unet():
    return UNet(T=50, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
                num_class=10)


def fixed_loss(state):
    """eps-MSE of a model on 256 digits with fixed t and noise."""
    net = tiny_unet()
    net.load_state_dict(state)
    data = build_dataset('digitslt', '', 8, 0.1)
    x = torch.stack([data[i][0] for i in range(0, len(data), 3)][:256])
    y = torch.as_tensor(data.targets[0:len(data):3][:256])
    g = torch.Generator().manual_seed(0)
    t = torch.randint(50, (len(x),), generator=g)
    noise = torch.randn(x.shape, generator=g)
    trainer = GaussianDiffusionTrainer(net, 1e-4, 0.02, 50)
    with torch.no_grad():
        loss, _ = trainer.losses(trainer.q_sample(x, t, noise), t, noise, y)
    return loss.mean().item()


def test_training_writes_checkpoints_grid_flagfile_and_lowers_loss(run):
    names = sorted(os.listdir(run))
    assert {'ckpt_0.pt', 'ckpt_20.pt', 'ckpt_40.pt', 'ckpt_59.pt', 'flagfile.txt'} <= set(names)
    assert os.path.isfile(run / 'sample' / '59.png')
    assert any(n.startswith('events.out.tfevents') for n in names)
    ckpt = load_checkpoint(str(run / 'ckpt_59.pt'))
    for key in ('net_model', 'ema_model', 'sched', 'optim', 'step', 'fixed_x_T'):
        assert key in ckpt
    assert ckpt['step'] == 59 and ckpt['fixed_x_T'].shape == (20, 3, 8, 8)
    assert fixed_loss(ckpt['net_model']) < 0.7 * fixed_loss(load_checkpoint(str(run / 'ckpt_0.pt'))['net_model'])
    flagfile = (run / 'flagfile.txt').read_text()
    assert '--cb' in flagfile and '--ch_mult=1' in flagfile and '--data_type=digitslt' in flagfile


def test_finetune_numbers_steps_on_from_ckpt_step(run):
    out = run_main('--train', *TINY, '--conditional', '--cb', '--total_steps=10',
                   '--save_step=5', '--sample_step=0', f'--logdir={run}', '--finetune',
                   '--finetuned_logdir=cbdm_ft', '--ckpt_step=20')
    assert out.returncode == 0, out.stderr[-3000:]
    ft = run.parent / 'cbdm_ft'  # a bare name is a sibling of --logdir
    assert sorted(n for n in os.listdir(ft) if n.startswith('ckpt_')) == ['ckpt_25.pt', 'ckpt_30.pt']
    ckpt = load_checkpoint(str(ft / 'ckpt_30.pt'))
    assert ckpt['step'] == 30
    start = load_checkpoint(str(run / 'ckpt_20.pt'))
    assert not torch.equal(ckpt['net_model']['head.weight'], start['net_model']['head.weight'])
    assert (ft / 'flagfile.txt').is_file()


def test_sample_entry_writes_class_rows_and_arrays(run):
    out = run_main('--notrain', '--sample', f'--flagfile={run}/flagfile.txt', '--ckpt_step=59',
                   '--sample_method=cfg', '--omega=1.0', '--sampler=ddim', '--sample_steps=10')
    assert out.returncode == 0, out.stderr[-3000:]
    stem = run / 'sample_cfg_1.0_STEP59_ddim10quad_clip'
    images = np.load(f'{stem}.npy')
    labels = np.load(f'{stem}_labels.npy')
    assert images.shape == (20, 3, 8, 8) and len(np.unique(images.reshape(20, -1), axis=0)) == 20
    assert labels.tolist() == np.repeat(np.arange(10), 2).tolist()
    assert os.path.isfile(f'{stem}.png')


def test_augm_run(tmp_path):
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--augm', '--total_steps=6',
                   '--save_step=5', '--sample_step=0', f'--logdir={tmp_path}')
    assert out.returncode == 0, out.stderr[-3000:]
    state = load_checkpoint(str(tmp_path / 'ckpt_5.pt'))['net_model']
    assert state['augm_embedding.weight'].shape == (128, 9)


def test_command_line_multi_flag_replaces_flagfile_values():
    from absl import flags
    import main
    try:
        argv = main.expand_argv(['main.py', '--flagfile', os.path.join(ROOT, 'config/cifar100.txt'),
                                 '--ch_mult', '1', '--ch_mult', '2'])
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        assert flags.FLAGS.ch_mult == [1, 2]
        assert flags.FLAGS.data_type == 'cifar100' and flags.FLAGS.attn == [1]
        argv = main.expand_argv(['main.py', f'--flagfile={ROOT}/config/cifar100.txt', '--attn=2'])
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        assert flags.FLAGS.ch_mult == [1, 2, 2, 2] and flags.FLAGS.attn == [2]
    finally:
        flags.FLAGS.unparse_flags()


def test_command_line_wins_whatever_its_position():
    from absl import flags
    import main
    try:
        argv = main.expand_argv(['main.py', '--notrain', '--batch_size', '7',
                                 f'--flagfile={ROOT}/config/demo.txt'])
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        assert flags.FLAGS.batch_size == 7 and not flags.FLAGS.train
        assert flags.FLAGS.data_type == 'digitslt'
    finally:
        flags.FLAGS.unparse_flags()
