"""Sources of extra training images for the rare classes: a saved sample set (--synthetic) or
images drawn from a trained diffusion run (--synthetic_logdir), with the numbers drawn per class
(--synthetic_fill)."""
import copy
import os

import numpy as np

import dataset as D
from utils import UserError, save_npy


def parse_fill(fill):
    """--synthetic_fill: 'head' or a positive integer (as int)."""
    if str(fill) == 'head':
        return 'head'
    try:
        n = int(fill)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UserError(f'--synthetic_fill {fill}: must be "head" or a positive integer')
    return n


def fill_counts(counts, fill, synthetic_only=False):
    """Generated images to draw per class (np.int64, length C).

    'head': every class up to the largest class's count (max - n_c; with synthetic_only, the
    max for every class, a balanced set); an integer N: N per class.
    """
    counts = np.asarray(counts, np.int64)
    fill = parse_fill(fill)
    if fill == 'head':
        top = int(counts.max())
        return np.full_like(counts, top) if synthetic_only else top - counts
    return np.full_like(counts, fill)


MODEL_FLAGS = {'ch': int, 'ch_mult': int, 'attn': int, 'num_res_blocks': int, 'dropout': float,
               'T': int, 'beta_1': float, 'beta_T': float, 'var_type': str, 'img_size': int,
               'conditional': bool, 'augm': bool}


def generator_cfg(cfg):
    """cfg with the UNet flags of the run in --synthetic_logdir (read from its flagfile.txt)
    and logdir = that run; the sampling flags (--sampler, --omega, ...) stay the caller's."""
    path = os.path.join(cfg.synthetic_logdir, 'flagfile.txt')
    if not os.path.isfile(path):
        raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: {path} not found (not a '
                        f'training run folder of main.py --train)')
    gen = copy.copy(cfg)
    multi = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            name, _, value = line.lstrip('-').partition('=')
            if name in MODEL_FLAGS and MODEL_FLAGS[name] is not bool and value:
                if name in ('ch_mult', 'attn'):
                    multi.setdefault(name, []).append(int(value))
                else:
                    setattr(gen, name, MODEL_FLAGS[name](value))
            elif name in MODEL_FLAGS and not value:
                setattr(gen, name, True)
            elif name.startswith('no') and MODEL_FLAGS.get(name[2:]) is bool:
                setattr(gen, name[2:], False)
    for name, values in multi.items():
        setattr(gen, name, values)
    if gen.img_size != cfg.img_size:
        raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: the run generates '
                        f'{gen.img_size}x{gen.img_size} images, the classifier uses --img_size '
                        f'{cfg.img_size}')
    gen.logdir = cfg.synthetic_logdir
    return gen


def synthetic_name(cfg, fill):
    """File stem of the images drawn for this run (inside LOGDIR/synthetic/)."""
    kind = 'balanced' if cfg.synthetic_only else 'fill'
    return (f'{os.path.basename(os.path.normpath(cfg.synthetic_logdir))}_{cfg.sample_method}_'
            f'{cfg.omega}_{cfg.sampler}_STEP{cfg.ckpt_step}_{kind}{fill}_seed{cfg.seed}')


def draw_synthetic(sampler, per_class, batch_size, img_size, device, method, omega, seed):
    """Generate per_class[c] images of every class c: (float32 N x 3 x H x W in [0, 1], int64
    N), classes in order; the noise comes from a generator seeded with `seed`."""
    from evaluation import generate
    labels = np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)
    if not len(labels):
        return np.zeros((0, 3, img_size, img_size), np.float32), labels
    return generate(sampler, len(labels), batch_size, img_size, device, method, omega, seed,
                    'generating', classes=labels)


def drawn_synthetic(cfg, inputs, out_dir, device):
    """Images drawn from --synthetic_logdir for this run, saved as
    LOGDIR/synthetic/NAME.npy + NAME_labels.npy (reused when present, e.g. on resume; pass the
    .npy to --synthetic to reuse it in another run). Returns (uint8 images, int64 labels)."""
    from factory import build_sampler
    gen, model = inputs.generator
    folder = os.path.join(out_dir, 'synthetic')
    path = os.path.join(folder, synthetic_name(cfg, parse_fill(cfg.synthetic_fill)) + '.npy')
    if not (os.path.isfile(path) and os.path.isfile(D.synthetic_labels_path(path))):
        os.makedirs(folder, exist_ok=True)
        sampler = build_sampler(gen, model, inputs.num_class).to(device)
        print(f'drawing {int(inputs.per_class.sum())} images from {cfg.synthetic_logdir} '
              f'ckpt_{cfg.ckpt_step}.pt ({cfg.sample_method}, omega {cfg.omega}, {cfg.sampler}),'
              f' per class {inputs.per_class.tolist()}')
        images, labels = draw_synthetic(sampler, inputs.per_class, cfg.batch_size, cfg.img_size,
                                        device, cfg.sample_method, cfg.omega, cfg.seed)
        save_npy(D.synthetic_labels_path(path), labels)
        save_npy(path, images)  # last: its presence means the set is complete
    else:
        print(f'reusing the generated images {path}')
    return D.load_synthetic(path, inputs.num_class, cfg.img_size) + (path,)
