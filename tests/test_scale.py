"""Mixed precision and multi-process (DDP, gloo on CPU) training."""
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import list_checkpoints, load_checkpoint
from dataset import build_dataset
from diffusion import GaussianDiffusionTrainer, autocast
from helpers import ROOT, TINY
from model import UNet


def short_run(amp, steps=60):
    """Mean training loss of the last 20 of `steps` steps on digits-LT with a tiny UNet."""
    torch.manual_seed(0)
    net = UNet(T=1000, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=10)
    trainer = GaussianDiffusionTrainer(net, 1e-4, 0.02, 1000, num_class=10, cb=True,
                                       weight=[0.1] * 10)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = build_dataset('digitslt', '', 8, 0.1)
    x_all = torch.stack([data[i][0] for i in range(len(data))])
    y_all = torch.as_tensor(data.targets)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(x_all), (32,))
        with autocast('cpu', amp):
            loss_ddpm, loss_reg = trainer(x_all[idx], y_all[idx])
            loss = loss_ddpm.mean() + loss_reg.mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def test_bf16_loss_within_tolerance_of_fp32():
    fp32, bf16 = short_run('none'), short_run('bf16')
    assert fp32 < 0.5  # it learned something
    assert abs(bf16 - fp32) / fp32 < 0.15, (fp32, bf16)  # stated tolerance: 15% after 60 steps


def test_ddp_two_cpu_processes_train_and_save(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           'main.py', '--train', *TINY, '--conditional', '--cb', '--total_steps=6',
           '--save_step=5', '--sample_step=0', f'--logdir={tmp_path}']
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [0, 5]
    ckpt = load_checkpoint(str(tmp_path / 'ckpt_5.pt'))
    net = UNet(T=50, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=10)
    net.load_state_dict(ckpt['net_model'], strict=True)
    assert ckpt['step'] == 5


def test_compile_falls_back_on_compilation_errors_only(monkeypatch, capsys):
    """--compile runs eagerly, with one line naming the error, when the model cannot be compiled
    (a backend failing for want of a C++ compiler, as torch reports it); any other error of a
    compiled call (here out of memory) is raised, not hidden by a silent eager rerun."""
    import factory
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    def compiled_raising(error):
        def compile_(model):
            def call(*args, **kwargs):
                raise error
            return call
        return compile_

    def inductor(gm, example_inputs):
        return gm
    net = UNet(T=50, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=3).eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, -1])
    failed = BackendCompilerFailed(inductor, InvalidCxxCompiler(), None)
    monkeypatch.setattr(torch, 'compile', compiled_raising(failed))
    wrapped = factory.compile_model(net)
    assert torch.equal(wrapped(x, t, y), net(x, t, y))
    err = capsys.readouterr().err
    assert err.startswith('warning: --compile unavailable (BackendCompilerFailed / '
                          'InvalidCxxCompiler: No working C++ compiler found') and \
        err.endswith('running eagerly\n') and err.count('\n') == 1, err
    assert torch.equal(wrapped(x, t, y), net(x, t, y))  # stays eager, warns once
    assert capsys.readouterr().err == ''

    monkeypatch.setattr(torch, 'compile', compiled_raising(torch.OutOfMemoryError('no room')))
    with pytest.raises(torch.OutOfMemoryError, match='no room'):
        factory.compile_model(net)(x, t, y)
    monkeypatch.setattr(torch, 'compile', compiled_raising(RuntimeError('shape mismatch')))
    with pytest.raises(RuntimeError, match='shape mismatch'):
        factory.compile_model(net)(x, t, y)
    assert capsys.readouterr().err == ''


def test_compile_refused_by_the_platform_runs_eagerly(monkeypatch, capsys):
    import factory

    def refuse(model):
        raise RuntimeError('torch.compile is not supported on Python 3.15+')
    monkeypatch.setattr(torch, 'compile', refuse)
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    assert torch.equal(factory.compile_model(net)(x), net(x))
    assert capsys.readouterr().err == ('warning: --compile unavailable (RuntimeError: '
                                       'torch.compile is not supported on Python 3.15+); '
                                       'running eagerly\n')
