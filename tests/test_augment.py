"""--augm as the spec ("Augmentation") states the public pipeline: the draws and their
frequencies, the map from draws to the affine transform, Catmull-Rom bicubic resampling with
mirror padding and no clipping, the raw conditioning vector, and no other flip in training."""
import math

import pytest
import torch

import augment as A
from augment import AugmentPipe

N_DRAWS = 4000


def _within(count, n, p, sigmas=4.5):
    """count ~ Binomial(n, p) within `sigmas` standard deviations of its mean."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _draws(**values):
    """One image's draws a0..a7 (B = 1), zeros except `values` (a0=..., a3=...)."""
    d = torch.zeros(1, A.NUM_DRAWS)
    for key, v in values.items():
        d[0, int(key[1:])] = v
    return d


def _rot(t):
    return torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]],
                        dtype=torch.float64)


def _spec_map(d, width, height):
    """The spec's forward map X Y S R A D, written out independently: (2 x 2 linear part,
    translation applied first)."""
    a0, a1, a2, a3, a4, a5, a6, a7 = [float(v) for v in d[0]]
    s = 2 ** 0.2
    X = torch.diag(torch.tensor([1 - 2 * a0, 1.0], dtype=torch.float64))
    Y = torch.diag(torch.tensor([1.0, 1 - 2 * a1], dtype=torch.float64))
    S = torch.eye(2, dtype=torch.float64) * s ** a2
    R = _rot(-a3)
    An = _rot(a4) @ torch.diag(torch.tensor([s ** a5, s ** -a5], dtype=torch.float64)) @ _rot(-a4)
    shift = torch.tensor([a6 * width / 8, a7 * height / 8], dtype=torch.float64)
    return X @ Y @ S @ R @ An, shift


# ----------------------------------------------------------------------------------------------
# draws

def test_draw_frequencies_and_distributions():
    d = A.draw(N_DRAWS, generator=torch.Generator().manual_seed(0))
    assert d.shape == (N_DRAWS, 8) and d.dtype == torch.float32
    a0, a1, a2, a3, a4, a5, a6, a7 = d.unbind(1)
    # x-flip always drawn: {0, 1} with 1/2 each
    assert set(a0.unique().tolist()) == {0.0, 1.0} and _within(int(a0.sum()), N_DRAWS, 0.5)
    # y-flip: Bernoulli(0.12) * {0, 1}: 6%
    assert set(a1.unique().tolist()) == {0.0, 1.0} and _within(int(a1.sum()), N_DRAWS, 0.06)
    # each of scale, rotation, anisotropy (a4 and a5 together), translation (a6 and a7 together)
    # is applied to 12% of the images, independently
    on = {'scale': a2 != 0, 'rot': a3 != 0, 'aniso': a5 != 0, 'shift': a6 != 0}
    assert torch.equal(a4 != 0, on['aniso']) and torch.equal(a7 != 0, on['shift'])
    for name, mask in on.items():
        assert _within(int(mask.sum()), N_DRAWS, 0.12), name
    assert _within(int((on['scale'] & on['rot']).sum()), N_DRAWS, 0.12 ** 2)
    # raw values: N(0, 1) for a2, a5, a6, a7; U(-pi, pi) for a3, a4
    for name, v in (('a2', a2[on['scale']]), ('a5', a5[on['aniso']]), ('a6', a6[on['shift']]),
                    ('a7', a7[on['shift']])):
        se = 1 / math.sqrt(len(v))
        assert abs(v.mean()) < 4.5 * se and abs(v.std() - 1) < 4.5 * se / math.sqrt(2), name
    for name, v in (('a3', a3[on['rot']]), ('a4', a4[on['aniso']])):
        assert v.abs().max() <= math.pi and v.abs().max() > 0.9 * math.pi, name
        se = math.pi / math.sqrt(3 * len(v))
        assert abs(v.mean()) < 4.5 * se, name
        assert abs(v.abs().mean() - math.pi / 2) < 4.5 * se, name  # uniform, not N(0, 1)


def test_draw_honours_p_with_independent_operations_and_its_generator():
    """At another p (0.3): each of the five gated operations is on for a fraction p of the
    images, independently of the others (every pair together for p^2), the y-flip for p / 2;
    the values of one image are independent draws (a6 and a7, a2 and a5 uncorrelated). p 0 and
    p 1 switch the gated operations off and on for every image. The draws come from the given
    generator (same seed: same draws; another seed: others) or, without one, from the global
    torch RNG."""
    n, p = N_DRAWS, 0.3
    d = A.draw(n, p=p, generator=torch.Generator().manual_seed(5))
    a0, a1, a2, a3, a4, a5, a6, a7 = d.unbind(1)
    assert _within(int(a0.sum()), n, 0.5) and _within(int(a1.sum()), n, p / 2)
    on = {'yflip': None, 'scale': a2 != 0, 'rot': a3 != 0, 'aniso': a5 != 0, 'shift': a6 != 0}
    assert torch.equal(a4 != 0, on['aniso']) and torch.equal(a7 != 0, on['shift'])
    del on['yflip']        # its gate is seen only where the coin says 1: checked via p / 2
    for name, mask in on.items():
        assert _within(int(mask.sum()), n, p), name
    names = list(on)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            both = int((on[first] & on[second]).sum())
            assert _within(both, n, p * p), (first, second, both)
    # the x-flip and the y-flip coin are not the same draw
    assert _within(int((a0.bool() & a1.bool()).sum()), n, 0.5 * p / 2)
    shift, aniso = on['shift'], on['aniso'] & on['scale']
    for x, y in ((a6[shift], a7[shift]), (a2[aniso], a5[aniso])):
        r = torch.corrcoef(torch.stack([x, y]))[0, 1]
        assert abs(r) < 4.5 / math.sqrt(len(x)), r
    # p = 0: only the always-drawn x-flip; p = 1: every gated operation on every image
    off = A.draw(500, p=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.count_nonzero(off[:, 1:]) == 0 and 0 < int(off[:, 0].sum()) < 500
    full = A.draw(500, p=1.0, generator=torch.Generator().manual_seed(1))
    assert bool((full[:, 2:] != 0).all()) and _within(int(full[:, 1].sum()), 500, 0.5)
    # reproducible from the generator; another seed, other draws; the global RNG without one
    first = A.draw(64, p=p, generator=torch.Generator().manual_seed(5))
    assert torch.equal(A.draw(64, p=p, generator=torch.Generator().manual_seed(5)), first)
    other = A.draw(64, p=p, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other, first)
    torch.manual_seed(5)
    assert torch.equal(A.draw(64, p=p), first)
    torch.manual_seed(6)
    assert torch.equal(A.draw(64, p=p), other)


def test_conditioning_is_the_raw_draws():
    d = _draws(a0=1, a1=1, a2=0.7, a3=0.3, a4=0.5, a5=-1.2, a6=0.4, a7=-0.9)
    want = [1, 1, 0.7, math.cos(0.3) - 1, math.sin(0.3), -1.2 * math.cos(0.5),
            -1.2 * math.sin(0.5), 0.4, -0.9]
    cond = A.conditioning(d)
    assert cond.shape == (1, 9) and cond.dtype == torch.float32
    assert torch.allclose(cond[0], torch.tensor(want), atol=1e-6)
    # no augmentation is all zeros, the vector sampling passes
    assert torch.count_nonzero(A.conditioning(torch.zeros(3, 8))) == 0


def test_pipe_returns_image_and_conditioning_of_the_same_draws():
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    out, cond = AugmentPipe()(x, generator=torch.Generator().manual_seed(2))
    d = A.draw(32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cond, A.conditioning(d))
    assert torch.equal(out, AugmentPipe.apply(x, d))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert AugmentPipe(p=0.5)(x.half())[0].dtype == torch.float16
    # an image drawn with no operation at all comes back unchanged
    plain = (d.abs().sum(1) == 0).nonzero().flatten()
    assert len(plain) > 0 and torch.allclose(out[plain], x[plain], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the map: where a single bright pixel goes under each operation alone

def _dot(height, width, col, row):
    x = torch.zeros(1, 1, height, width)
    x[0, 0, row, col] = 1.0
    return x


def _moves_to(x, draws, col, row):
    """The bright pixel of x lands on (col, row) exactly. Where the map shrinks the image, the
    mirror padding brings in copies of it too, so it need not be the only peak."""
    out = AugmentPipe.apply(x, draws)[0, 0]
    assert out[row, col] == pytest.approx(1.0, abs=1e-5), out
    assert out.max() <= 1 + 1e-5
    if torch.linalg.svdvals(A.forward_matrix(draws, *x.shape[-2:])[0, :2, :2]).min() >= 1 - 1e-9:
        peak = divmod(int(out.argmax()), out.shape[1])
        assert peak == (row, col), (peak, (row, col))


@pytest.mark.parametrize('draws, dest', [
    # pixel (col 11, row 4) of a 16 x 16 image, centred (3.5, -3.5)
    (dict(a0=1), (4, 4)),                  # x-flip: column 15 - 11
    (dict(a1=1), (11, 11)),                # y-flip: row 15 - 4
    (dict(a3=math.pi / 2), (4, 4)),        # R = rot(-a3): (3.5, -3.5) -> (-3.5, -3.5), up-left
    (dict(a3=-math.pi / 2), (11, 11)),     # the other way: (3.5, 3.5)
    (dict(a6=1.0, a7=-2.0), (13, 0)),      # 1/8 of the width right, 2/8 of the height up
])
def test_single_operations_move_a_pixel_as_the_spec_says(draws, dest):
    _moves_to(_dot(16, 16, 11, 4), _draws(**draws), *dest)


@pytest.mark.parametrize('draws, dest', [
    # odd size: centred coordinates are integers; pixel (col 9, row 5) is (2, -2)
    (dict(a2=5.0), (11, 3)),                    # scale (2**0.2)**5 = 2: (4, -4)
    (dict(a2=-5.0), (8, 6)),                    # 1/2: (1, -1)
    (dict(a4=0.0, a5=5.0), (11, 6)),            # x stretched by 2, y shrunk by 2: (4, -1)
    (dict(a4=math.pi / 2, a5=5.0), (8, 3)),     # along y instead: (1, -4)
])
def test_scale_and_anisotropy_move_a_pixel_as_the_spec_says(draws, dest):
    _moves_to(_dot(15, 15, 9, 5), _draws(**draws), *dest)


def test_the_composed_map_is_x_y_s_r_a_d():
    """On a linear ramp, Catmull-Rom resampling is exact away from the border, so every interior
    output pixel q holds the ramp's value at the spec's M^-1 q: this pins the order of the
    operations, the rotation sign and the centre (size / 2 - 0.5)."""
    h = w = 32
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing='ij')
    ramp = (0.05 * cols - 0.03 * rows + 0.2)[None, None].float()
    d = _draws(a0=1, a1=1, a2=0.4, a3=0.7, a4=-1.1, a5=0.8, a6=0.3, a7=-0.2)
    out = AugmentPipe.apply(ramp, d)[0, 0].double()
    lin, shift = _spec_map(d, w, h)
    centre = torch.tensor([w / 2 - 0.5, h / 2 - 0.5], dtype=torch.float64)
    q = torch.stack([cols, rows], -1).reshape(-1, 2) - centre
    src = (torch.linalg.solve(lin, q.T).T - shift) + centre           # M^-1 q, absolute
    want = 0.05 * src[:, 0] - 0.03 * src[:, 1] + 0.2
    inside = ((src >= 1) & (src <= torch.tensor([w - 2, h - 2]))).all(1)
    assert inside.sum() > 300
    err = (out.reshape(-1) - want)[inside].abs().max()
    assert err < 1e-5, err


# ----------------------------------------------------------------------------------------------
# resampling: Catmull-Rom bicubic, mirror padding, no clipping

def test_half_pixel_shift_is_catmull_rom_and_not_clipped():
    """A step from -1 to 1 shifted by half a pixel: Catmull-Rom (the public code's bicubic)
    gives 1.125 and -1.125 next to the step (torch's bicubic, a = -0.75, would give 1.1875)."""
    x = torch.full((1, 1, 4, 16), -1.0)
    x[..., 8:] = 1.0
    out = AugmentPipe.apply(x, _draws(a6=0.25))[0, 0, 0]  # 0.25 / 8 * 16 = half a pixel right
    assert out[9].item() == pytest.approx(1.125, abs=1e-6)
    assert out[7].item() == pytest.approx(-1.125, abs=1e-6)
    assert out[8].item() == pytest.approx(0.0, abs=1e-6)
    assert out.max() > 1  # bicubic overshoot survives: values are not clipped


def test_kernel_on_a_random_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 1, 16, generator=g)
    out = AugmentPipe.apply(x, _draws(a6=0.25))[0, 0, 0]  # source of column j: j - 0.5
    f = x[0, 0, 0]
    for j in range(2, 14):
        want = (-f[j - 2] + 9 * f[j - 1] + 9 * f[j] - f[j + 1]) / 16  # Catmull-Rom at t = 1/2
        assert out[j].item() == pytest.approx(want.item(), abs=1e-6)


def test_reflect_padding_mirrors_about_the_edge_pixel():
    """Shift right by 2 pixels: columns 0 and 1 read the source columns -2 and -1, mirrored to 2
    and 1 (skimage's 'reflect'; an edge-repeating reflection would give 1 and 0)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 16, generator=g)
    d = _draws(a6=1.0).repeat(2, 1)  # 1/8 of 16 = 2 pixels
    out = AugmentPipe.apply(x, d)
    assert torch.allclose(out[..., 2:], x[..., :-2], atol=1e-6)
    assert torch.allclose(out[..., 0], x[..., 2], atol=1e-6)
    assert torch.allclose(out[..., 1], x[..., 1], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the training data path

def test_no_other_flip_with_augm(tmp_path):
    """With --augm, the training batch reaches AugmentPipe unflipped (its own x-flip is the only
    one); without it, the plain per-batch flip stays for data sets that allow flips."""
    from fakedata import write_cifar10
    import train
    from test_fidelity import make_cfg
    write_cifar10(str(tmp_path / 'data'), per_class=4, test_per_class=1)
    common = ['--data_type=cifar10', f'--root={tmp_path}/data', '--batch_size=8',
              f'--logdir={tmp_path}/run', '--total_steps=1']
    plain = train.prepare(make_cfg(*common))
    assert plain.flip_batches and not plain.dataset.hflip
    cfg = make_cfg(*common, '--augm')
    run = train.prepare(cfg)
    assert not run.flip_batches and not run.dataset.hflip
    train.build_state(cfg, run)
    train.restore(cfg, run)
    x = torch.arange(8 * 3 * 8 * 8, dtype=torch.float32).reshape(8, 3, 8, 8) / 1e3
    seen = {}

    def record(batch):
        seen['x'] = batch.clone()
        return batch, torch.zeros(batch.shape[0], 9)

    def trainer(x_0, y_0, augm):
        anchor = next(p for p in run.net_model.parameters() if p.requires_grad).sum() * 0
        return anchor + x_0.pow(2), anchor + torch.zeros_like(x_0)

    run.batches = iter([(x, torch.zeros(8, dtype=torch.long))])
    run.augment, run.trainer, run.last_saved_path = record, trainer, None
    for _ in range(3):  # a flip would hit about 7 of 8 images in 3 tries
        run.batches = iter([(x, torch.zeros(8, dtype=torch.long))])
        train.train_step(cfg, run, 0)
        assert torch.equal(seen['x'], x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_on_cuda_matches_cpu():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    d = A.draw(4, p=1.0, generator=torch.Generator().manual_seed(0))
    out = AugmentPipe.apply(x.cuda(), d.cuda())
    assert out.device.type == 'cuda'
    assert torch.allclose(out.cpu(), AugmentPipe.apply(x, d), atol=1e-5)
    y, cond = AugmentPipe()(x.cuda(), generator=torch.Generator('cuda').manual_seed(0))
    assert y.device.type == cond.device.type == 'cuda' and y.shape == x.shape
