"""Head-to-tail translation (`--synthetic_source translate`): extra images for the rare classes
made from real images of other classes.

Each translated image starts from a real training image x_0 of a source class (the many-shot
classes by default, `--translate_from`), noised to a strength s (`--translate_strength`, a
fraction of T): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at t = round(s T) - 1; the
reverse process then runs from there with the target class's label under guidance (SDEdit,
Meng et al. ICLR 2022, with a class-conditional model). A small s keeps the source (its stroke,
layout and texture); s near 1 keeps almost nothing of it and draws a fresh sample. The idea of
transferring the head's diversity to the tail is M2m's (Kim et al. CVPR 2020, which translates
with a classifier's gradient instead of a diffusion model).

The sources of target class c are drawn uniformly with replacement from the source classes'
real training images other than c's own, by a generator seeded with (seed, c), so the set is a
pure function of the flags.
"""
import numpy as np
import torch

from utils import UserError, atomic_write

GROUP_NAMES = ('many', 'medium', 'few')


def parse_from(spec):
    """--translate_from: 'all', groups joined by '+' ('many', 'many+medium') or comma-separated
    class indices ('0,1,2'). Returns ('groups', names) / ('all', None) / ('classes', [ids]);
    ValueError for anything else."""
    spec = str(spec).strip()
    if spec == 'all':
        return 'all', None
    if spec and all(part in GROUP_NAMES for part in spec.split('+')):
        return 'groups', sorted(set(spec.split('+')), key=GROUP_NAMES.index)
    parts = spec.split(',')
    if spec and all(p.strip().isdigit() for p in parts):
        return 'classes', sorted({int(p) for p in parts})
    raise ValueError(f'--translate_from {spec!r}: give all, many, medium, few (joined by +, '
                     f'e.g. many+medium) or class indices (e.g. 0,1,2)')


def source_classes(spec, counts, many_shot, few_shot):
    """The classes translated images start from: a sorted list of class indices. Groups as the
    reports define them: many (> many_shot training images), few (< few_shot), medium."""
    kind, value = parse_from(spec)
    counts = np.asarray(counts)
    if kind == 'all':
        return list(range(len(counts)))
    if kind == 'classes':
        bad = [c for c in value if c >= len(counts)]
        if bad:
            raise UserError(f'--translate_from {spec}: class(es) {bad} do not exist '
                            f'({len(counts)} classes)')
        return value
    group = np.where(counts > many_shot, 'many', np.where(counts < few_shot, 'few', 'medium'))
    return [int(c) for c in np.flatnonzero(np.isin(group, value))]


def choose_sources(targets, per_class, classes, seed):
    """Indices of the real training images translated into each class: int64 [sum per_class],
    per_class[c] for class c in class order, drawn with replacement from the images of
    `classes` other than c by a generator seeded with (seed, c). targets: the real set's labels.
    UserError when a class needs images and has no source image."""
    targets = np.asarray(targets)
    chosen = []
    for c, n in enumerate(per_class):
        if n <= 0:
            continue
        pool = np.flatnonzero(np.isin(targets, [k for k in classes if k != c]))
        if not len(pool):
            raise UserError(f'--translate_from: no source images for class {c} (the source '
                            f'classes {classes} hold none but its own); widen --translate_from')
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), c])))
        chosen.append(pool[rng.integers(0, len(pool), int(n))])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def start_step(sampler, strength):
    """The time index a translation of strength s in (0, 1] starts from: t = round(s T) - 1 in
    [0, T - 1], T the sampler's. The sampler runs from there with its schedule respaced over
    [0, t] (GaussianDiffusionSampler's start_t), so every strength has its own start and
    strength 1 is the full run. UserError for a strength outside (0, 1] or below the first step
    (s T < 0.5 rounds to no step at all)."""
    return start_index(strength, sampler.T)


def start_index(strength, T):
    """round(strength T) - 1 (see start_step); UserError when it is not in [0, T - 1]."""
    t = int(round(strength * T)) - 1 if 0 < strength <= 1 else -1
    if t < 0:
        raise UserError(f'--translate_strength {strength:g}: below the first of the '
                        f'generator\'s T = {T} noise steps (strength x T, rounded, is the number '
                        f'of steps a source is noised by); give 1/T = {1 / T:g} to 1')
    return t


def strength_name(strength):
    """The strength in file names (translate_pairs_s{name}.png, the set's name): the short
    '%g' form (0.5, 1) where it reads back as the same number, else the float's repr, so two
    strengths never share a name."""
    short = f'{strength:g}'
    return short if float(short) == strength else repr(float(strength))


def real_images(dataset, indices, batch=512):
    """float32 len(indices) x 3 x H x W in [-1, 1]: the dataset's items (never flipped)."""
    out = []
    for i in range(0, len(indices), batch):
        out.append(torch.stack([dataset[int(j)][0] for j in indices[i:i + batch]]))
    return torch.cat(out) if out else torch.zeros(0)


def save_pairs_grid(sources, translated, labels, path, pairs=5, max_rows=10):
    """A PNG of source -> translated pairs: one row per target class (up to max_rows, the
    classes with translated images, tail classes last), `pairs` pairs per row, each pair the
    source image then its translation. sources, translated: float N x 3 x H x W in [0, 1]."""
    from torchvision.utils import make_grid, save_image
    rows = []
    for c in sorted(set(labels.tolist()))[-max_rows:]:
        idx = np.flatnonzero(labels == c)[:pairs]
        row = []
        for i in idx:
            row += [sources[i], translated[i]]
        row += [torch.ones_like(sources[0])] * (2 * pairs - len(row))
        rows += row
    if not rows:
        return None
    grid = make_grid(torch.stack(rows), nrow=2 * pairs, pad_value=1.0)
    scale = max(1, 64 // sources.shape[-1])
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale,
                                               mode='nearest')[0]
    with atomic_write(path) as f:
        save_image(grid, f, format='png')
    return path
