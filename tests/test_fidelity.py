"""Training fidelity with the public CBDM code (the spec's "Command line" and "Training
objective"): its flagfiles load, fine-tuning and warm starts begin from the EMA weights with a
new Adam and warm-up, a changed --lr on resume is honoured."""
import json
import shutil

import numpy as np
import pytest
import torch

from checkpoint import list_checkpoints, load_checkpoint
from helpers import TINY, fake_cifar10lt_with_stats, run_main, run_main_in_process
from utils import UserError

WARNING = 'warning: ignoring flags of the public CBDM code'
PUBLIC_ONLY = ('--cotrain', '--improve', '--logit', '--num_class', '--private_num_images',
               '--weight')


def make_cfg(*args):
    """The cfg namespace main.py builds from TINY + args (parsed in this process)."""
    from absl import flags
    import main
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(main.expand_argv(['main.py', *TINY, *args]))
        return main.config()
    finally:
        flags.FLAGS.unparse_flags()


def public_flag_values():
    """A fresh FlagValues holding every flag of the public CBDM main.py (the union of its stored
    versions), with its names, types and defaults."""
    from absl import flags
    fv = flags.FlagValues()
    for name, default in (('train', False), ('eval', False), ('improve', False),
                          ('parallel', False), ('conditional', False), ('weight', False),
                          ('cotrain', False), ('logit', False), ('augm', False), ('cfg', False),
                          ('fid_use_torch', False), ('sampled', False), ('prd', True),
                          ('improved_prd', True), ('cb', False), ('finetune', False)):
        flags.DEFINE_bool(name, default, 'public', flag_values=fv)
    for name, default in (('ch', 128), ('num_res_blocks', 2), ('T', 1000),
                          ('total_steps', 800000), ('img_size', 32), ('warmup', 5000),
                          ('batch_size', 128), ('num_workers', 4), ('sample_size', 64),
                          ('sample_step', 10000), ('save_step', 100000), ('eval_step', 0),
                          ('num_images', 50000), ('private_num_images', 0), ('ckpt_step', 0)):
        flags.DEFINE_integer(name, default, 'public', flag_values=fv)
    for name, default in (('dropout', 0.1), ('beta_1', 1e-4), ('beta_T', 0.02), ('lr', 2e-4),
                          ('grad_clip', 1.), ('ema_decay', 0.9999), ('imb_factor', 0.01),
                          ('num_class', 0), ('omega', 0.0), ('tau', 1.0)):
        flags.DEFINE_float(name, default, 'public', flag_values=fv)
    for name, default in (('root', './'), ('data_type', 'cifar100'), ('logdir', './logs/'),
                          ('fid_cache', './stats/cifar10.train.npz'), ('sample_name', 'saved'),
                          ('sample_method', 'cfg'), ('finetuned_logdir', '')):
        flags.DEFINE_string(name, default, 'public', flag_values=fv)
    flags.DEFINE_multi_integer('ch_mult', [1, 2, 2, 2], 'public', flag_values=fv)
    flags.DEFINE_multi_integer('attn', [1], 'public', flag_values=fv)
    flags.DEFINE_enum('var_type', 'fixedlarge', ['fixedlarge', 'fixedsmall'], 'public',
                      flag_values=fv)
    return fv


def public_flagfile(*args, num_class):
    """What the public main.py writes to LOGDIR/flagfile.txt for a training run with `args`
    (it sets num_class itself before writing)."""
    fv = public_flag_values()
    fv(['main.py', *args])
    fv.num_class = num_class
    return fv.flags_into_string()


# ----------------------------------------------------------------------------------------------
# item 1: flagfiles of the public code load

def test_public_only_flags_are_dropped_with_one_warning(capsys):
    import main
    argv = main.expand_argv(['main.py', '--noimprove', '--weight', '--cotrain=false', '--nologit',
                             '--num_class', '100', '--private_num_images=5', '--ch=64',
                             '--nocfg', '--attn=1'])
    assert argv == ['main.py', '--ch=64', '--nocfg', '--attn=1']
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(WARNING)
    assert all(name in lines[0] for name in PUBLIC_ONLY)
    # nothing dropped, nothing said
    assert main.expand_argv(['main.py', '--train']) == ['main.py', '--train']
    assert capsys.readouterr().err == ''


def test_public_only_flags_are_not_ours():
    """They must never reach our own flagfile.txt, and a flag neither defines stays an error."""
    from absl import flags
    import main
    assert not set(main.PUBLIC_ONLY_FLAGS) & set(flags.FLAGS)
    public = set(public_flag_values())
    assert set(main.PUBLIC_ONLY_FLAGS) == public - set(flags.FLAGS)
    out = run_main_in_process('--notrain', '--sample', '--nosuchflag')
    assert out.returncode == 2 and 'nosuchflag' in out.stderr


@pytest.fixture(scope='module')
def public_run(tmp_path_factory):
    """A run folder as the public code leaves it: its flagfile.txt (every public flag, in
    absl's serialisation) beside a tiny checkpoint of ours; fake CIFAR-10 and FID statistics."""
    tmp = tmp_path_factory.mktemp('public')
    data, env = fake_cifar10lt_with_stats(tmp)
    logdir = tmp / 'cifar10lt_ddpm'
    model = ['--ch=32', '--ch_mult=1', '--attn=0', '--num_res_blocks=1', '--dropout=0.0',
             '--T=50']
    tiny = [a for a in TINY if not a.startswith(('--ch_mult', '--attn'))]  # multi-valued
    out = run_main('--train', *tiny, *model, *data, '--conditional', '--cfg', '--total_steps=2',
                   '--save_step=0', '--sample_step=0', f'--logdir={logdir}', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    text = public_flagfile('--train', *model, *data, '--conditional', '--cfg', '--lr=1e-3',
                           '--warmup=5', '--batch_size=16', '--num_workers=0', '--ema_decay=0.9',
                           '--sample_size=20', '--total_steps=2', f'--logdir={logdir}',
                           num_class=10)
    for line in ('--noimprove', '--nocotrain', '--nologit', '--noweight', '--num_class=10',
                 '--private_num_images=0', '--attn=0', '--train'):
        assert line in text.splitlines(), line
    (logdir / 'flagfile.txt').write_text(text)
    return tmp, logdir, env


def _one_warning(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.startswith(WARNING)]
    assert len(lines) == 1, stderr[-3000:]
    assert all(name in lines[0] for name in PUBLIC_ONLY)


def test_public_flagfile_samples(public_run):
    _, logdir, env = public_run
    out = run_main('--notrain', '--sample', f'--flagfile={logdir}/flagfile.txt', '--ckpt_step=1',
                   '--omega=1.0', '--sampler=ddim', '--sample_steps=5', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    _one_warning(out.stderr)
    # what the public flagfile asks for (20 images of 8 x 8, 10 classes), drawn with the flags
    stem = logdir / 'sample_cfg_1.0_STEP1_ddim5quad_clip'
    images, labels = np.load(f'{stem}.npy'), np.load(f'{stem}_labels.npy')
    assert images.shape == (20, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert labels.shape == (20,) and 0 <= labels.min() and labels.max() < 10
    settings = json.loads(open(f'{stem}_sampler.json').read())
    assert (settings['sampler'], settings['sample_steps'], settings['clip_denoised']) == (
        'ddim', 5, True)


def test_public_flagfile_evaluates(public_run):
    tmp, logdir, env = public_run
    out = run_main('--notrain', '--eval', f'--flagfile={logdir}/flagfile.txt', '--ckpt_step=1',
                   '--num_images=20', '--batch_size=20', '--omega=1.0', '--sampler=ddim',
                   '--sample_steps=5', f'--fid_cache={tmp}/stats/cifar10.train.npz',
                   '--fid_use_torch', '--noprd', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    _one_warning(out.stderr)
    assert 'FID' in (logdir / 'res_ema_saved_N20_STEP1_ddim5quad.txt').read_text()


def test_public_flagfile_finetunes(public_run):
    _, logdir, env = public_run
    out = run_main('--train', f'--flagfile={logdir}/flagfile.txt', '--finetune',
                   '--finetuned_logdir=cifar10lt_ft', '--ckpt_step=1', '--cb', '--total_steps=2',
                   env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    _one_warning(out.stderr)
    ft = logdir.parent / 'cifar10lt_ft'
    assert [s for s, _ in list_checkpoints(str(ft))] == [3]
    ours = (ft / 'flagfile.txt').read_text()  # ours: without the public-only flags
    assert '--finetune' in ours.splitlines() and 'cotrain' not in ours and 'num_class' not in ours


# ----------------------------------------------------------------------------------------------
# items 2 and 6: fine-tuning and warm starts begin from the EMA weights; --lr on resume

@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """Tiny CBDM run: ckpt_0, ckpt_2, ckpt_3 (lr 1e-3, warm-up 5); EMA (decay 0.9) != net."""
    logdir = tmp_path_factory.mktemp('pre') / 'run'
    out = run_main('--train', *TINY, '--conditional', '--cb', '--total_steps=4', '--save_step=2',
                   '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir


def _restored(*args):
    import train
    cfg = make_cfg('--train', '--conditional', '--cb', *args)
    run = train.prepare(cfg)
    train.build_state(cfg, run)
    train.restore(cfg, run)
    return run


def _equal_states(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _assert_started_from_ema(run, ckpt, lr):
    assert not _equal_states(ckpt['net_model'], ckpt['ema_model'])  # the test means something
    assert _equal_states(run.net_model.state_dict(), ckpt['ema_model'])
    assert _equal_states(run.ema_model.state_dict(), ckpt['ema_model'])
    assert run.optim.state_dict()['state'] == {}  # a new Adam: no moments
    assert run.sched.last_epoch == 0 and run.sched.base_lrs == [lr]
    assert run.optim.param_groups[0]['lr'] == 0.0  # warm-up from this run's first step


def test_finetune_starts_from_the_ema_with_new_adam_and_warmup(pretrained):
    run = _restored(f'--logdir={pretrained}', '--finetune', '--finetuned_logdir=ft_state',
                    '--ckpt_step=2', '--lr=5e-4', '--total_steps=3')
    _assert_started_from_ema(run, load_checkpoint(str(pretrained / 'ckpt_2.pt')), 5e-4)
    assert (run.first_step, run.start, run.end_step) == (3, 3, 6)


def test_finetune_cli_first_step_keeps_the_ema_and_resume_keeps_its_own_state(pretrained):
    """Step 3 runs at warm-up lr 0, so the fine-tuned net after it is the pretrained EMA; a
    second command resumes the fine-tune run's own state, not the pretrained run's."""
    args = ['--train', *TINY, '--conditional', '--cb', f'--logdir={pretrained}', '--finetune',
            '--finetuned_logdir=ft_cli', '--ckpt_step=2', '--sample_step=0', '--save_step=0']
    out = run_main(*args, '--total_steps=1')
    assert out.returncode == 0, out.stderr[-3000:]
    ema = load_checkpoint(str(pretrained / 'ckpt_2.pt'))['ema_model']
    first = load_checkpoint(str(pretrained.parent / 'ft_cli' / 'ckpt_3.pt'))
    assert _equal_states(first['net_model'], ema) and _equal_states(first['ema_model'], ema)
    assert first['sched']['last_epoch'] == 1 and first['optim']['state']
    run = _restored(f'--logdir={pretrained}', '--finetune', '--finetuned_logdir=ft_cli',
                    '--ckpt_step=2', '--total_steps=3')
    assert run.start == 4 and run.sched.last_epoch == 1
    assert _equal_states(run.net_model.state_dict(), first['net_model'])
    key = next(iter(first['optim']['state']))  # the first parameter with a gradient
    saved = first['optim']['state'][key]['exp_avg_sq']
    assert torch.equal(run.optim.state_dict()['state'][key]['exp_avg_sq'], saved)


def test_resume_with_another_lr_honours_it(pretrained, capsys):
    run = _restored(f'--logdir={pretrained}', '--total_steps=6')  # TINY's lr 1e-3
    assert run.start == 4 and run.sched.last_epoch == 4
    assert run.optim.param_groups[0]['lr'] == pytest.approx(1e-3 * 4 / 5)
    assert '--lr' not in capsys.readouterr().out
    run = _restored(f'--logdir={pretrained}', '--total_steps=6', '--lr=5e-4')
    assert run.start == 4 and run.sched.base_lrs == [5e-4]
    assert run.optim.param_groups[0]['lr'] == pytest.approx(5e-4 * 4 / 5)
    assert run.optim.param_groups[0]['initial_lr'] == 5e-4
    assert run.optim.state_dict()['state']  # Adam's moments are kept
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('--lr')]
    assert len(said) == 1 and '0.0005' in said[0] and '0.001' in said[0]


def test_warm_start_from_ckpt_step_without_finetune(pretrained, tmp_path):
    """--train --ckpt_step N: the run folder's ckpt_N.pt's EMA weights, new Adam and warm-up,
    steps N + 1 .. total_steps - 1 (the public code's warm start)."""
    shutil.copy(pretrained / 'ckpt_2.pt', tmp_path / 'ckpt_2.pt')
    run = _restored(f'--logdir={tmp_path}', '--ckpt_step=2', '--total_steps=5', '--lr=5e-4')
    _assert_started_from_ema(run, load_checkpoint(str(tmp_path / 'ckpt_2.pt')), 5e-4)
    assert (run.first_step, run.start, run.end_step) == (3, 3, 5)
    with pytest.raises(UserError, match='--total_steps'):
        _restored(f'--logdir={tmp_path}', '--ckpt_step=2', '--total_steps=3')
    # a checkpoint newer than N in the run folder: resume wins
    run = _restored(f'--logdir={pretrained}', '--ckpt_step=2', '--total_steps=6')
    assert run.start == 4 and run.optim.state_dict()['state']
    newest = load_checkpoint(str(pretrained / 'ckpt_3.pt'))
    assert _equal_states(run.net_model.state_dict(), newest['net_model'])


def test_warm_start_cli(pretrained, tmp_path):
    shutil.copy(pretrained / 'ckpt_2.pt', tmp_path / 'ckpt_2.pt')
    out = run_main('--train', *TINY, '--conditional', '--cb', f'--logdir={tmp_path}',
                   '--ckpt_step=2', '--total_steps=5', '--save_step=0', '--sample_step=0')
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'warm start from' in out.stdout
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 4]
    assert load_checkpoint(str(tmp_path / 'ckpt_4.pt'))['sched']['last_epoch'] == 2
