import math
import os

import pytest
import torch

from model import AttnBlock, UNet, check_config

SPEC = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'spec', 'unet_state_dict.tsv')


def reference_layout():
    rows = [line.rstrip('\n').split('\t') for line in open(SPEC) if not line.startswith('#')]
    return {key: tuple(int(d) for d in shape.split('x')) for key, shape in rows}


def cifar100_unet(**kwargs):
    args = dict(T=1000, ch=128, ch_mult=[1, 2, 2, 2], attn=[1], num_res_blocks=2, dropout=0.1,
                cond=True, augm=True, num_class=100)
    args.update(kwargs)
    return UNet(**args)


@pytest.mark.skipif(not os.path.exists(SPEC), reason='shared/spec not beside the checkout')
def test_state_dict_layout_matches_reference():
    layout = reference_layout()
    state = cifar100_unet().state_dict()
    assert list(state) == list(layout)  # same keys, same order
    for key, shape in layout.items():
        assert tuple(state[key].shape) == shape, key


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(cifar100_unet(augm=False)) == 35925507
    assert count(cifar100_unet()) == 35930115
    assert count(cifar100_unet(cond=False, augm=False, num_class=10)) == 35874307


def tiny(**kwargs):
    torch.manual_seed(0)
    args = dict(T=100, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, cond=True,
                augm=True, num_class=4)
    args.update(kwargs)
    net = UNet(**args).eval()
    with torch.no_grad():  # the gain-1e-5 output layers would hide most differences
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_sdpa_equals_explicit_attention():
    net = tiny()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 50, 99])
    y = torch.tensor([0, 3, -1])
    fused = net(x, t, y)
    net.set_sdpa(False)
    explicit = net(x, t, y)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_negative_label_means_unconditional():
    net = tiny()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 60])
    none = net(x, t, None)
    neg = net(x, t, torch.tensor([-1, -1]))
    assert torch.allclose(none, neg, atol=1e-6)
    mixed = net(x, t, torch.tensor([2, -1]))
    assert torch.allclose(mixed[1], none[1], atol=1e-6)
    assert not torch.allclose(mixed[0], none[0], atol=1e-4)


def test_zero_augm_equals_no_augm():
    net = tiny()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 60]), torch.tensor([1, 2])
    assert torch.allclose(net(x, t, y, torch.zeros(2, 9)), net(x, t, y), atol=1e-6)
    assert not torch.allclose(net(x, t, y, torch.ones(2, 9)), net(x, t, y), atol=1e-4)


def test_reference_initialisation():
    """The initialisation as it ends up in the public code (spec "Model"): xavier-uniform,
    zero bias, gain 1e-5 for the last conv of every res block and the UNet's tail; the attention
    output projection re-initialised by its ResBlock with gain 1; the augmentation embedding
    with nn.Linear's default (kaiming-uniform with a = sqrt(5): bound 1 / sqrt(fan_in))."""
    torch.manual_seed(0)
    net = cifar100_unet()
    assert net.tail[-1].weight.abs().max() < 1e-4
    assert net.downblocks[0].block2[-1].weight.abs().max() < 1e-4
    assert net.head.bias.abs().max() == 0
    for attn in [m for m in net.modules() if isinstance(m, AttnBlock)]:
        c = attn.proj.weight.shape[0]
        bound = math.sqrt(6 / (c + c))            # xavier-uniform, gain 1, 1x1 conv C -> C
        w = attn.proj.weight
        assert bound * 0.99 < w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert attn.proj.bias.abs().max() == 0
    w = net.augm_embedding.weight                 # Linear(9, 4 ch), no bias
    bound = 1 / math.sqrt(9)
    assert bound * 0.99 < w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_config_checks():
    assert check_config(128, [1, 2, 2, 2], [1], 32) is None
    assert 'multiple of 32' in check_config(48, [1], [], 32)
    assert '--img_size' in check_config(32, [1, 2, 2, 2], [1], 20)
    assert '--attn' in check_config(32, [1, 2], [3], 32)
