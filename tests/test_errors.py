"""Every bad input: one line naming the flag or file, non-zero exit, no traceback, nothing written."""
import os

import numpy as np
import pytest

from fakedata import write_cifar10
from helpers import TINY, run_main, run_main_in_process, tiny_cfg_run


def snapshot(folder):
    if not os.path.exists(folder):
        return None
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def fails(*args, expect, watch=()):
    """Run main.py, assert a one-line error containing every string of `expect` and that the
    folders in `watch` did not change."""
    before = [snapshot(str(w)) for w in watch]
    out = run_main_in_process(*args)
    assert out.returncode != 0
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    for text in expect:
        assert text in last, last
    assert [snapshot(str(w)) for w in watch] == before
    return last


@pytest.fixture(scope='module')
def run():
    """The shared tiny conditional run (ckpt_1): every test here leaves it alone."""
    return tiny_cfg_run()


@pytest.fixture(scope='module')
def uncond_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp('err') / 'uncond'
    out = run_main('--train', *TINY, '--total_steps=1', '--save_step=1', '--sample_step=0',
                   f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-2000:]
    return logdir


def train_args(logdir, *extra):
    return ['--train', *TINY, '--total_steps=2', '--sample_step=0', f'--logdir={logdir}', *extra]


def test_missing_dataset(tmp_path):
    logdir = tmp_path / 'run'
    fails(*train_args(logdir, '--data_type=cifar10lt', f'--root={tmp_path}/nodata'),
          expect=['cifar-10-batches-py', '--download'])
    assert not logdir.exists()


def test_corrupt_dataset(tmp_path):
    write_cifar10(str(tmp_path), per_class=4)
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_2').write_bytes(b'garbage')
    logdir = tmp_path / 'run'
    fails(*train_args(logdir, '--data_type=cifar10', f'--root={tmp_path}', '--img_size=32'),
          expect=['data_batch_2'])
    assert not logdir.exists()


def test_unknown_data_type(tmp_path):
    fails(*train_args(tmp_path / 'run', '--data_type=svhn'), expect=['--data_type'])
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('imb', ['0', '1.5', '-0.1'])
def test_imb_factor_out_of_range(tmp_path, imb):
    fails(*train_args(tmp_path / 'run', f'--imb_factor={imb}'), expect=['--imb_factor'])
    assert not (tmp_path / 'run').exists()


def test_img_size_the_model_cannot_take(tmp_path):
    fails(*train_args(tmp_path / 'run', '--ch_mult=2', '--img_size=9'),
          expect=['--img_size', 'img_size=9', 'divisible by 2^(levels - 1)'])
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flag', ['--cb', '--cfg'])
def test_guidance_flags_need_conditional(tmp_path, flag):
    fails(*train_args(tmp_path / 'run', flag), expect=[flag, '--conditional'])
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('mode', ['--sample', '--eval'])
def test_guided_sampling_of_unconditional_checkpoint(uncond_run, mode, tmp_path):
    np.savez(tmp_path / 'stats.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    fails(f'--flagfile={uncond_run}/flagfile.txt', '--notrain', mode, '--ckpt_step=0',
          '--sample_method=cfg', '--omega=1', '--conditional', f'--fid_cache={tmp_path}/stats.npz',
          expect=['--sample_method cfg', 'unconditional'], watch=[uncond_run])


def test_guided_flags_on_unconditional_flagfile(uncond_run):
    fails(f'--flagfile={uncond_run}/flagfile.txt', '--notrain', '--sample', '--ckpt_step=0',
          '--sample_method=cond', expect=['--sample_method cond', 'conditional'],
          watch=[uncond_run])


def test_negative_omega(run):
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--sample', '--ckpt_step=1',
          '--omega=-1', expect=['--omega'], watch=[run])


def test_missing_ckpt_step_lists_present(run):
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--sample', '--ckpt_step=7',
          expect=['ckpt_7.pt', 'steps present', '0, 1'], watch=[run])


def test_truncated_and_foreign_checkpoints(run, tmp_path):
    good = (run / 'ckpt_1.pt').read_bytes()
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'ckpt_5.pt').write_bytes(good[:len(good) // 2])
    (bad / 'ckpt_6.pt').write_bytes(b'not a checkpoint')
    np.save(bad / 'x.npy', np.zeros(3))
    os.replace(bad / 'x.npy', bad / 'ckpt_7.pt')
    for step in (5, 6, 7):
        fails(f'--flagfile={run}/flagfile.txt', f'--logdir={bad}', '--notrain', '--sample',
              f'--ckpt_step={step}', expect=[f'ckpt_{step}.pt'], watch=[bad])


def test_checkpoint_shapes_do_not_fit_flags(run):
    last = fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--sample', '--ckpt_step=1',
                 '--ch=64', expect=['does not fit', 'time_embedding.timembedding.0.weight (50, 32) vs model (50, 64)',
                         '--ch 32 --ch_mult 1 --attn -1'],
                 watch=[run])
    assert '--conditional' in last


def test_missing_and_malformed_fid_cache(run, tmp_path):
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=1',
          f'--fid_cache={tmp_path}/none.npz', expect=['--fid_cache', 'none.npz', '--make_stats'],
          watch=[run])
    np.savez(tmp_path / 'bad.npz', mu=np.zeros(4), sigma=np.zeros(3))
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=1',
          f'--fid_cache={tmp_path}/bad.npz', expect=['--fid_cache', 'bad.npz'], watch=[run])


def test_num_images_below_one(run):
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=1',
          '--num_images=0', expect=['--num_images'], watch=[run])


def test_run_folder_not_writable(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    fails(*train_args(blocker / 'run'), expect=['--logdir', 'not a folder'])


def test_sampled_without_saved_samples(run, tmp_path):
    np.savez(tmp_path / 'stats.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    fails(f'--flagfile={run}/flagfile.txt', '--notrain', '--eval', '--sampled', '--ckpt_step=1',
          '--num_images=10', f'--fid_cache={tmp_path}/stats.npz',
          expect=['--sampled', 'saved sets in', 'none'], watch=[run])


def test_batch_larger_than_the_data_set(tmp_path):
    fails(*train_args(tmp_path / 'run', '--batch_size=5000'),
          expect=['--batch_size 5000', '609 images'])
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('loss', ['ldam_drw', 'balanced_softmax', 'logit_adjust', 'ce_drw'])
def test_a_loss_that_needs_counts_refuses_an_empty_class_before_writing(tmp_path, loss):
    """digits-LT at imbalance 0.001 leaves classes 7-9 without images: the losses built on
    class counts cannot take that; the run stops before its folder exists."""
    logdir = tmp_path / 'cls'
    last = fails('--flagfile', 'config/classify_digitslt.txt', '--imb_factor=0.001',
                 f'--cls_loss={loss}', f'--logdir={logdir}', expect=['--cls_loss', '[7, 8, 9]'])
    assert 'no training images' in last and not logdir.exists()
