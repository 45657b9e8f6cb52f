"""Samplers against the exact eps predictor of Gaussian data."""
import pytest
import torch

from diffusion import GaussianDiffusionSampler
from model import UNet
from oracle import GaussianOracle

SHAPE = (3, 2, 2)


def make_sampler(oracle, **kwargs):
    return GaussianDiffusionSampler(oracle, 1e-4, 0.02, 1000, num_class=len(oracle.means),
                                    img_size=2, **kwargs)


def sample(sampler, n, seed=0, **kwargs):
    torch.manual_seed(seed)
    x_T = torch.randn(n, *SHAPE)
    return sampler(x_T, **kwargs)


@pytest.mark.parametrize('var_type', ['fixedlarge', 'fixedsmall'])
def test_ddpm_reproduces_gaussian(var_type):
    mean, std = 0.1, 0.25  # keep the data well inside the clipping range [-1, 1]
    oracle = GaussianOracle(torch.full((1, *SHAPE), mean), [std])
    x, _ = sample(make_sampler(oracle, var_type=var_type), 4000, method='uncond')
    assert abs(x.mean().item() - mean) < 0.01
    assert abs(x.std().item() / std - 1) < 0.03


@pytest.mark.parametrize('var_type', ['fixedlarge', 'fixedsmall'])
def test_cond_reproduces_each_class(var_type):
    means = torch.tensor([-0.4, 0.0, 0.4]).view(3, 1, 1, 1).expand(3, *SHAPE).clone()
    stds = [0.1, 0.15, 0.15]
    sampler = make_sampler(GaussianOracle(means, stds), var_type=var_type)
    x, y = sample(sampler, 3000, method='cond')
    assert set(y.tolist()) == {0, 1, 2}
    for k in range(3):
        xk = x[y == k]
        assert abs(xk.mean().item() - means[k, 0, 0, 0].item()) < 0.01
        assert abs(xk.std().item() / stds[k] - 1) < 0.05


def test_uncond_reproduces_mixture():
    means = torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1).expand(2, *SHAPE).clone()
    sampler = make_sampler(GaussianOracle(means, [0.1, 0.1], priors=[0.25, 0.75]))
    x, y = sample(sampler, 4000, method='uncond')
    assert y is None
    upper = (x.flatten(1).mean(1) > 0).float().mean().item()
    assert abs(upper - 0.75) < 0.03


def test_cfg_pushes_away_from_unconditional_mean():
    # two overlapping classes at -0.05 and +0.05 (unconditional mean 0): the guided eps
    # (1 + w) eps(x, k) - w eps(x) extrapolates away from the other class, increasingly with w
    means = torch.tensor([-0.05, 0.05]).view(2, 1, 1, 1).expand(2, *SHAPE).clone()
    sampler = make_sampler(GaussianOracle(means, [0.2, 0.2]))
    y = torch.arange(2).repeat(1000)
    x0, _ = sample(sampler, 2000, method='cfg', omega=0.0, y=y)
    xc, _ = sample(sampler, 2000, method='cond', y=y)
    assert torch.equal(x0, xc)  # omega = 0 is plain conditional sampling
    for k, sign in [(0, -1), (1, 1)]:
        shifts = []
        for omega in [0.0, 1.0, 2.0]:
            x, _ = sample(sampler, 2000, method='cfg', omega=omega, y=y)
            shifts.append(sign * x[y == k].mean().item())
        assert abs(shifts[0] - 0.05) < 0.005
        assert shifts[1] > shifts[0] + 0.015 and shifts[2] > shifts[1] + 0.01


@pytest.mark.parametrize('method', ['cond', 'cfg'])
def test_ddim_50_steps_reproduces_gaussian(method):
    # 50 deterministic steps under-disperse slightly (a discretisation error of DDIM itself: 5.0%
    # of the narrow class's std here with quad steps over [0, T - 1], under 5% when they ended at
    # 0.8 T); 6% is the stated tolerance.
    means = torch.tensor([-0.3, 0.3]).view(2, 1, 1, 1).expand(2, *SHAPE).clone()
    stds = [0.15, 0.25]
    sampler = make_sampler(GaussianOracle(means, stds), sampler='ddim', sample_steps=50, eta=0.0)
    x, y = sample(sampler, 3000, method=method, omega=0.0)
    for k in range(2):
        assert abs(x[y == k].mean().item() - means[k, 0, 0, 0].item()) < 0.01
        assert abs(x[y == k].std().item() / stds[k] - 1) < 0.06


@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_ddim_error_vanishes_with_steps(eta):
    oracle = GaussianOracle(torch.full((1, *SHAPE), -0.2), [0.3])
    errors = []
    for steps in [10, 50, 1000]:
        sampler = make_sampler(oracle, sampler='ddim', sample_steps=steps, eta=eta)
        x, _ = sample(sampler, 4000, method='uncond')
        assert abs(x.mean().item() + 0.2) < 0.01
        errors.append(abs(x.std().item() / 0.3 - 1))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_batched_guidance_equals_two_passes():
    torch.manual_seed(0)
    net = UNet(T=1000, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0,
               cond=True, num_class=5).eval()
    for p in net.parameters():  # make the output depend on everything
        torch.nn.init.normal_(p, std=0.05)
    args = (net, 1e-4, 0.02, 1000, 5)
    batched = GaussianDiffusionSampler(*args, img_size=8, batched=True)
    two_pass = GaussianDiffusionSampler(*args, img_size=8, batched=False)
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    y = torch.tensor([0, 1, 2, 4])
    for method in ['cfg', 'cond', 'uncond']:
        mb, vb = batched.p_mean_variance(x, t, y, omega=1.5, method=method)
        mt, vt = two_pass.p_mean_variance(x, t, y, omega=1.5, method=method)
        assert torch.allclose(mb, mt, atol=1e-5)
        assert torch.equal(vb, vt)


def test_signature_and_ranges():
    net = UNet(T=1000, ch=32, ch_mult=[1], attn=[], num_res_blocks=1, dropout=0.0, cond=True,
               num_class=3)
    sampler = GaussianDiffusionSampler(net, 1e-4, 0.02, 1000, 3, img_size=4, sampler='ddim',
                                       sample_steps=5)
    x, y = sampler(torch.randn(6, 3, 4, 4), omega=1.0, method='cfg')
    assert x.shape == (6, 3, 4, 4) and x.dtype == torch.float32
    assert y.shape == (6,) and y.min() >= 0 and y.max() < 3
    y_given = torch.tensor([2, 2, 1, 0, 0, 1])
    _, y2 = sampler(torch.randn(6, 3, 4, 4), method='cond', y=y_given)
    assert torch.equal(y2, y_given)
