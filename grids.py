"""Sample grids: the fixed noise and class-per-row labels of a run's grid, drawing it with a
sampler and saving it as a PNG. Training draws its grids every --sample_step (train.save_grid)
and `--sample` redraws them from a checkpoint (evaluation.sample) with these same functions, so
the two show the same images for the same flags.

Beside samplers.py (whose per-image noise they use) rather than in it: they write image files,
which the sampler settings, noise and solvers never do.
"""
import os

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from samplers import ImageNoise

GRID_MAX_CLASSES = 10


def grid_noise(seed, sample_size, img_size):
    """x_T of a run's grid: float32 sample_size x 3 x img_size x img_size standard normal from a
    CPU generator seeded with `seed` (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sample_size, 3, img_size, img_size, generator=g)


def grid_labels(num_class, sample_size):
    """Labels of a class-per-row sample grid: (labels int64 [sample_size], images per row).

    Up to 10 classes spread evenly from the head (class 0) to the tail (class num_class - 1),
    one row each, in that order; every image gets a label, so the last row may be shorter.
    sample_size >= 1, num_class >= 1.
    """
    if sample_size < 1 or num_class < 1:
        raise ValueError(f'grid_labels needs sample_size >= 1 and num_class >= 1, got '
                         f'{sample_size}, {num_class}')
    rows = min(GRID_MAX_CLASSES, num_class, sample_size)
    per_row = -(-sample_size // rows)
    rows = -(-sample_size // per_row)  # ceil twice: no row left empty
    # linspace over [0, C - 1] with rows <= C points has steps >= 1, so the rounded classes differ
    classes = np.round(np.linspace(0, num_class - 1, rows)).astype(np.int64)
    labels = np.repeat(classes, per_row)[:sample_size]
    return torch.from_numpy(labels), per_row


def grid_layout(num_class, sample_size, conditional):
    """(labels int64 [sample_size] or None, images per row) of a grid: a class per row
    (grid_labels) for a conditional draw, else no labels in a near-square of
    floor(sqrt(sample_size)) images per row."""
    if conditional:
        return grid_labels(num_class, sample_size)
    return None, max(1, int(sample_size ** 0.5))


def draw_grid(sampler, x_T, y, method, omega, batch_size, seed=0):
    """Sample from x_T (B x 3 x H x W on the sampler's device; labels y int64 [B] or None) in
    batches: float32 B x 3 x H x W in [0, 1] on the CPU.

    Image i's step noise comes from its own generator seeded from (seed, i) (ImageNoise), so
    the grid does not depend on the batch size; the global RNG is forked besides, so grids
    never change the training run's random stream."""
    images = []
    devices = [x_T.device] if x_T.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, x_T.shape[0], batch_size):
            x_b = x_T[i:i + batch_size]
            yb = None if y is None else y[i:i + batch_size].to(x_T.device)
            noise = ImageNoise(seed, range(i, i + x_b.shape[0]))
            x, _ = sampler(x_b, omega=omega, method=method, y=yb, noise=noise)
            images.append((x.float().cpu() + 1) / 2)
    return torch.cat(images)


def save_grid_png(images, nrow, path, enlarge=True):
    """`images` (B x 3 x H x W in [0, 1]) as a PNG grid of `nrow` per row, written atomically;
    with `enlarge`, images under 64 pixels are enlarged (nearest neighbour) to 64, as 8x8 digits
    are hard to see. Returns path."""
    grid = make_grid(images, nrow=nrow, pad_value=1.0)
    scale = max(1, 64 // images.shape[-1]) if enlarge else 1
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode='nearest')[0]
    tmp = path + '.tmp.png'
    save_image(grid, tmp)
    os.replace(tmp, path)
    return path
