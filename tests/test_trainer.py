"""The class-balancing objective against its formula."""
import torch
from torch import nn

from diffusion import GaussianDiffusionTrainer
from model import UNet


class LabelTable(nn.Module):
    """eps_hat = 0.1 * x + E[y] (E a learnable per-class image; y < 0 or None -> 0)."""

    def __init__(self, num_class, shape):
        super().__init__()
        self.table = nn.Parameter(torch.randn(num_class, *shape))

    def forward(self, x, t, y=None, augm=None):
        if y is None:
            return 0.1 * x
        rows = self.table[y.clamp(min=0)] * (y >= 0).view(-1, 1, 1, 1)
        return 0.1 * x + rows


def make(model, **kwargs):
    args = dict(num_class=4, cb=True, tau=2.0, weight=[0.4, 0.3, 0.2, 0.1])
    args.update(kwargs)
    return GaussianDiffusionTrainer(model, 1e-4, 0.02, 1000, **args)


def fixed_batch():
    torch.manual_seed(1)
    return (torch.randn(6, 3, 4, 4), torch.tensor([0, 10, 200, 500, 900, 999]),
            torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1]))


def test_regulariser_zero_when_labels_ignored():
    net = UNet(T=1000, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=False)
    x_t, t, noise, y = fixed_batch()
    loss, reg = make(net).losses(x_t[..., :8, :8].repeat(1, 1, 2, 2), t, noise.repeat(1, 1, 2, 2), y)
    assert loss.shape == reg.shape == (6, 3, 8, 8)
    assert reg.abs().max() == 0


def test_regulariser_equals_formula_and_gradients_follow_stop_gradients():
    model = LabelTable(4, (3, 4, 4))
    trainer = make(model)
    x_t, t, noise, y = fixed_batch()
    torch.manual_seed(7)
    loss, reg = trainer.losses(x_t, t, noise, y)
    torch.manual_seed(7)
    y_bal = trainer.draw_balanced_labels(6, 'cpu')

    h = model(x_t, t, y)
    h_bal = model(x_t, t, y_bal)
    w = (2.0 * t.float() / 1000).view(-1, 1, 1, 1)
    expected = w * (h - h_bal) ** 2 * 1.25  # reg + 0.25 com have the same value
    assert torch.allclose(reg, expected, atol=1e-6)
    assert torch.allclose(loss, (h - noise) ** 2, atol=1e-6)

    # d reg / d E[y_i] = 2 w (h - h_bal) through h only (h_bal stopped);
    # d reg / d E[y_bal_i] = 0.25 * 2 w (h_bal - h) through h_bal only (h stopped)
    model.table.grad = None
    reg.sum().backward()
    grad = torch.zeros_like(model.table)
    diff = (h - h_bal).detach()
    for i in range(6):
        grad[y[i]] += 2 * w[i, 0] * diff[i]
        grad[y_bal[i]] += 0.5 * w[i, 0] * -diff[i]
    assert torch.allclose(model.table.grad, grad, atol=1e-5)


def test_balanced_labels_follow_target_distribution():
    trainer = make(LabelTable(4, (1, 1, 1)))
    torch.manual_seed(0)
    freq = torch.bincount(trainer.draw_balanced_labels(40000, 'cpu'), minlength=4) / 40000
    assert torch.allclose(freq, torch.tensor([0.4, 0.3, 0.2, 0.1]), atol=0.01)
    uniform = make(LabelTable(4, (1, 1, 1)), finetune=True)
    freq = torch.bincount(uniform.draw_balanced_labels(40000, 'cpu'), minlength=4) / 40000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.01)


def test_batched_pair_equals_two_passes():
    torch.manual_seed(0)
    net = UNet(T=1000, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0,
               cond=True, num_class=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x_t, t, noise, y = fixed_batch()
    x_t, noise = x_t.repeat(1, 1, 2, 2), noise.repeat(1, 1, 2, 2)
    out = []
    for batched in (True, False):
        torch.manual_seed(3)
        out.append(make(net, batched=batched).losses(x_t, t, noise, y))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-5)
    assert out[0][1].abs().max() > 0


def test_label_dropout_rate():
    model = LabelTable(4, (3, 4, 4))
    calls = []
    original = model.forward
    model.forward = lambda x, t, y=None, augm=None: calls.append(y is None) or original(x, t, y)
    trainer = make(model, cb=False, cfg=True)
    torch.manual_seed(0)
    for _ in range(2000):
        trainer(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    assert abs(sum(calls) / len(calls) - 0.1) < 0.02
    calls.clear()
    plain = make(model, cb=False, cfg=False)
    for _ in range(200):
        plain(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    assert not any(calls)
