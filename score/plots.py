"""Figures of an evaluation, beside its tables (matplotlib, Agg backend; files written atomically).

- `plot_per_class(rows, path)`: per-class FID and recall against the class's training count (log
  scale), head to tail, from the rows of `score.evaluate.evaluate`.
- `plot_groups(results, path)`: precision and recall per head / medium / tail group.
- `plot_omega_sweep(table, path)`: FID, IS, precision, recall and the tail group's FID against the
  guidance strength omega.
- `labelled_grid(images, labels, class_counts, per_row, path)`: a class-per-row sample grid with
  each row labelled by class index and training count.
"""
import os

import matplotlib

matplotlib.use('Agg')  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GROUPS = ('head', 'medium', 'tail')


def _save(fig, path):
    """Write the figure to `path` through a temporary file, then close it."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{name}.tmp.png')
    fig.savefig(tmp, dpi=120, bbox_inches='tight')
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_per_class(rows, path):
    """Per-class FID (left) and recall (right) against training images per class (log x axis).

    rows: dicts with 'train_count', 'fid', 'recall' (None where not computed). Classes without a
    training count are left out. Returns `path`, or None when there is nothing to plot.
    """
    counted = [r for r in rows if r.get('train_count') is not None]
    if not counted:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], 'fid', 'per-class FID'), (axes[1], 'recall', 'recall')):
        points = [(r['train_count'], r[key]) for r in counted if r.get(key) is not None]
        if points:
            x, y = np.array(points, dtype=np.float64).T
            ax.scatter(np.maximum(x, 1), y, s=14)
        else:
            ax.text(0.5, 0.5, f'no {label} (too few images)', ha='center', va='center',
                    transform=ax.transAxes)
        ax.set_xscale('log')
        ax.invert_xaxis()  # head (many images) on the left, tail on the right
        ax.set_xlabel('training images of the class (log, head to tail)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_groups(results, path):
    """Bars of precision and recall per head / medium / tail group; None if no group has them."""
    values = {g: (results.get(f'precision_{g}'), results.get(f'recall_{g}')) for g in GROUPS}
    if all(p is None and r is None for p, r in values.values()):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(GROUPS))
    for offset, (i, label) in zip((-0.2, 0.2), enumerate(('precision', 'recall'))):
        heights = [np.nan if values[g][i] is None else values[g][i] for g in GROUPS]
        ax.bar(x + offset, heights, width=0.4, label=label)
    ax.set_xticks(x, [f'{g}\n({results.get(f"classes_{g}", "?")} classes)' for g in GROUPS])
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(axis='y', alpha=0.3)
    return _save(fig, path)


def plot_omega_sweep(table, path, few_key='FID_tail'):
    """FID, IS, precision, recall and the tail group's FID against omega.

    table: list of dicts with 'omega' and the keys above (None where not computed).
    """
    keys = [('FID', 'FID'), ('IS', 'IS'), ('precision', 'precision'), ('recall', 'recall'),
            (few_key, 'few-shot (tail) FID')]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
    omegas = np.array([row['omega'] for row in table], dtype=np.float64)
    for ax, (key, label) in zip(axes, keys):
        y = np.array([np.nan if row.get(key) is None else row[key] for row in table],
                     dtype=np.float64)
        ax.plot(omegas, y, marker='o')
        ax.set_xlabel('omega')
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def labelled_grid(images, labels, class_counts, per_row, path):
    """A sample grid, one class per row, each row labelled 'class c (n training images)'.

    images: N x 3 x H x W in [0, 1]; labels: N ints (row-major, per_row per row); class_counts:
    training images per class or None.
    """
    images = np.asarray(images, dtype=np.float32)
    n, _, h, w = images.shape
    rows = -(-n // per_row)
    canvas = np.ones((rows * (h + 2) + 2, per_row * (w + 2) + 2, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, per_row)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = \
            images[i].transpose(1, 2, 0)
    scale = max(1.0, 48.0 / h)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] * scale / 100 + 1.6,
                                    canvas.shape[0] * scale / 100 + 0.2))
    ax.imshow(canvas, interpolation='nearest')
    ticks = [2 + r * (h + 2) + h / 2 for r in range(rows)]
    names = []
    for r in range(rows):
        c = int(labels[r * per_row])
        count = '' if class_counts is None else f' (n={int(class_counts[c])})'
        names.append(f'class {c}{count}' if c >= 0 else '')
    ax.set_yticks(ticks, names)
    ax.set_xticks([])
    for side in ('top', 'right', 'bottom', 'left'):
        ax.spines[side].set_visible(False)
    return _save(fig, path)
