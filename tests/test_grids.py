"""--sample's class-per-row grid: pinned pixel for pixel against the grid that the code drew
before the grid helpers moved out of train.py (tests/data/sample_grid_ref.npz), and the class
counts it labels its rows with read from the checkpoint, not from the data set."""
import numpy as np
import pytest
import torch

from checkpoint import save_checkpoint
from dataset import build_dataset
from helpers import TINY, run_main
from model import UNet

REF = 'tests/data/sample_grid_ref.npz'
# tests/helpers.py TINY at T = 50: 20 images of 8x8 in batches of 16 (a full and a partial one)
SAMPLE = [*TINY, '--notrain', '--sample', '--ckpt_step=0', '--omega=1.0']


def digits_counts():
    """Training images per class of digits-LT at --imb_factor 0.1 (TINY's data)."""
    return build_dataset('digitslt', '', 8, 0.1, 'exp').class_counts


def write_checkpoint(folder, conditional, class_counts=None):
    """ckpt_0.pt of TINY's UNet with seeded random weights (no training: its numbers do not
    depend on the CPU's training arithmetic), N(0, 0.05) so that the network's eps is far from
    zero and the grid depends on it."""
    net = UNet(T=50, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0,
               cond=conditional, num_class=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    state = {'net_model': net.state_dict(), 'ema_model': net.state_dict(), 'step': 0}
    if class_counts is not None:
        state['class_counts'] = class_counts
    save_checkpoint(state, str(folder), 0)


def sample(folder, *extra):
    out = run_main(*SAMPLE, f'--logdir={folder}', *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize('kind', ['cfg', 'uncond'])
def test_sample_grid_is_the_one_drawn_before_the_grid_helpers_moved(tmp_path, kind):
    """The images, labels and PNG of `--sample` (default sampler: --sampler auto, clipped) are
    those the code before the move drew for the same flags (the reference was written by it;
    the comparison there was bit for bit, here 1e-5 leaves room for another CPU's
    arithmetic). A change to the grid noise, labels, per-image step noise, batching, rows or
    upscaling changes them."""
    from PIL import Image
    write_checkpoint(tmp_path, kind == 'cfg', digits_counts())
    flags = ['--conditional', '--sample_method=cfg'] if kind == 'cfg' else [
        '--noconditional', '--sample_method=uncond']
    sample(tmp_path, *flags)
    stem = tmp_path / f'sample_{kind}_1.0_STEP0'
    ref = np.load(REF)
    images = np.load(f'{stem}.npy')
    assert images.shape == (20, 3, 8, 8) and images.dtype == np.float32
    np.testing.assert_allclose(images, ref[f'{kind}_images'], rtol=0, atol=1e-5)
    assert np.load(f'{stem}_labels.npy').tolist() == ref[f'{kind}_labels'].tolist()
    png = np.asarray(Image.open(f'{stem}.png').convert('RGB')).astype(int)
    assert png.shape == ref[f'{kind}_png'].shape  # rows x images per row, 8x8 shown at 64x64
    assert np.abs(png - ref[f'{kind}_png']).max() <= 1  # a rounding flip, no more


def load(folder, *flags):
    """load_ema_model of an unconditional ckpt_0.pt in `folder` with TINY + flags."""
    from evaluation import class_counts_of, load_ema_model
    from test_fidelity import make_cfg
    cfg = make_cfg('--noconditional', '--sample_method=uncond', f'--logdir={folder}', *flags)
    _, num_class, ckpt = load_ema_model(cfg, torch.device('cpu'))
    return num_class, class_counts_of(cfg, ckpt)


def test_classes_and_counts_are_read_from_the_checkpoint(tmp_path):
    """An unconditional model's number of classes and the counts that label a grid's rows come
    from what training recorded in the checkpoint: the data set of the flags is not read (here
    it does not even exist)."""
    counts = np.array([7, 5, 3], np.int64)
    write_checkpoint(tmp_path, False, counts)
    num_class, found = load(tmp_path, '--data_type=imagefolder', f'--root={tmp_path}/none')
    assert num_class == 3 and found.tolist() == [7, 5, 3]


def test_a_checkpoint_without_counts_counts_the_data_set(tmp_path):
    """A checkpoint saved before the counts were recorded: the data set of the flags is counted
    (TINY's digits-LT), and one that cannot be read is an error naming the flag."""
    from utils import UserError
    write_checkpoint(tmp_path, False)
    num_class, found = load(tmp_path)
    assert num_class == 10 and found.tolist() == digits_counts().tolist()
    with pytest.raises(UserError, match='--root'):
        load(tmp_path, '--data_type=imagefolder', f'--root={tmp_path}/none')
