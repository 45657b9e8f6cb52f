"""Sources of extra training images for the rare classes: a saved sample set (--synthetic), or
images drawn from a trained diffusion run (--synthetic_logdir) from noise or translated from
real images of other classes (--synthetic_source generate / translate), with the numbers drawn
per class (--synthetic_fill)."""
import copy
import os

import numpy as np
import torch

import dataset as D
import recognition.translate as T
from runfolder import StopRequest
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


def synthetic_name(cfg, fill, settings):
    """File stem of the images drawn for this run (inside LOGDIR/synthetic/): everything that
    changes them (the generator run and checkpoint, guidance, the sampler settings as their tag,
    e.g. ddim50quad_eta1_clip, the variance, the numbers drawn and the seed), so that a set is
    reused only when it is the set these flags would draw."""
    kind = 'balanced' if cfg.synthetic_only else 'fill'
    variance = f'_{cfg.var_type}' if settings.sampler == 'ddpm' else ''
    source = ''
    if cfg.synthetic_source == 'translate':
        source = (f'_translate{T.strength_name(cfg.translate_strength)}from'
                  f'{str(cfg.translate_from).replace(",", "-").replace("+", "-")}')
    return (f'{os.path.basename(os.path.normpath(cfg.synthetic_logdir))}_{cfg.sample_method}_'
            f'{cfg.omega}_{settings.tag()}{variance}_STEP{cfg.ckpt_step}{source}_{kind}{fill}_'
            f'seed{cfg.seed}')


def drawn_synthetic(cfg, inputs, out_dir, device):
    """Images drawn from --synthetic_logdir for this run: from noise (--synthetic_source
    generate) or translated from real images of other classes (translate, recognition.translate,
    with inputs.translate_sources the real images to start from), per_class[c] of every class c
    in class order. Saved as LOGDIR/synthetic/NAME.npy + NAME_labels.npy, the sampler settings in
    NAME_sampler.json and, for translations, the indices of the real training images translated
    in NAME_sources.npy and a grid of source -> translated pairs in
    LOGDIR/translate_pairs_s{strength}.png. A set is reused when present (e.g. on resume; pass
    the .npy to --synthetic to reuse it elsewhere): NAME holds every setting that changes it.
    Returns (uint8 images, int64 labels, path of the .npy), or None when SIGINT / SIGTERM
    stopped the drawing (between batches; nothing of the set is saved)."""
    from evaluation import generate, save_settings
    from factory import build_sampler, sampler_settings
    gen, model = inputs.generator
    folder = os.path.join(out_dir, 'synthetic')
    resolved = sampler_settings(gen, 'synthetic')
    name = synthetic_name(gen, parse_fill(cfg.synthetic_fill), resolved)
    path = os.path.join(folder, name + '.npy')
    if os.path.isfile(path) and os.path.isfile(D.synthetic_labels_path(path)):
        print(f'reusing the generated images {path}')
        return D.load_synthetic(path, inputs.num_class, cfg.img_size) + (path,)
    os.makedirs(folder, exist_ok=True)
    sampler = build_sampler(gen, model, inputs.num_class, 'synthetic').to(device)
    labels = np.repeat(np.arange(len(inputs.per_class)), inputs.per_class).astype(np.int64)
    translate = cfg.synthetic_source == 'translate'
    starts = start_t = None
    if translate:
        start_t = T.start_step(sampler, cfg.translate_strength)
        starts = T.real_images(inputs.real, inputs.translate_sources)
    settings = sampler.settings(cfg.sample_method, cfg.omega, start_t)
    what = (f'translating {len(labels)} real images of classes {inputs.translate_classes} '
            f'(strength {cfg.translate_strength}: from time index {start_t})' if translate
            else f'drawing {len(labels)} images')
    print(f'{what} with {cfg.synthetic_logdir} ckpt_{cfg.ckpt_step}.pt ({cfg.sample_method}, '
          f'omega {cfg.omega}, {resolved.describe()}, {settings["nfe_per_image"]} network '
          f'evaluations per image), per class {inputs.per_class.tolist()}')
    images = np.zeros((0, 3, cfg.img_size, cfg.img_size), np.float32)
    if len(labels):
        with StopRequest() as stop:
            images = generate(sampler, len(labels), cfg.batch_size, cfg.img_size, device,
                              cfg.sample_method, cfg.omega, cfg.seed,
                              'translating' if translate else 'generating', classes=labels,
                              starts=starts, start_t=start_t, stop=stop)
        if images is None:
            print(f'{stop.signal}: stopped while drawing the generated set, nothing of it saved; '
                  f'run the same command again to draw it')
            return None
        images, labels = images
    record = {**settings, 'sampler_flag': cfg.sampler, 'seed': cfg.seed,
              'synthetic_source': cfg.synthetic_source}
    if translate:
        save_npy(path[:-len('.npy')] + '_sources.npy', inputs.translate_sources)
        grid = T.save_pairs_grid((starts + 1) / 2, torch.from_numpy(images), labels,
                                 os.path.join(out_dir, 'translate_pairs_s'
                                              f'{T.strength_name(cfg.translate_strength)}.png'))
        record.update(translate_strength=cfg.translate_strength, translate_start_t=start_t,
                      translate_from=cfg.translate_from, translate_classes=inputs.translate_classes)
        print(f'source -> translated pairs: {grid}')
    save_npy(D.synthetic_labels_path(path), labels)
    save_settings(settings_path(path), record)
    save_npy(path, images)  # last: its presence means the set is complete
    return D.load_synthetic(path, inputs.num_class, cfg.img_size) + (path,)


def settings_path(path):
    """The sampler settings file beside a saved set (evaluation.save_settings): `--eval` names
    it *_sampler_ema_*.json beside *_samples_ema_*.npy, `--sample` and --classify X_sampler.json
    beside X.npy."""
    folder, name = os.path.split(path)
    if '_samples_ema_' in name:
        return os.path.join(folder, name.replace('_samples_ema_', '_sampler_ema_', 1)[:-4] + '.json')
    return path[:-len('.npy')] + '_sampler.json'


def recorded_settings(path):
    """The sampler settings recorded beside the saved set `path` ({} when it has none: a set
    saved by other tools, or before settings were recorded)."""
    import json
    found = settings_path(path)
    if not os.path.isfile(found):
        return {}
    with open(found) as f:
        return json.load(f)

