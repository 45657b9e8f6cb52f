"""Sources of extra training images for the rare classes: a saved sample set (--synthetic), or
images drawn from a trained diffusion run (--synthetic_logdir) from noise or translated from
real images of other classes (--synthetic_source generate / translate), with the numbers drawn
per class (--synthetic_fill)."""
import copy
import hashlib
import json
import os

import numpy as np
import torch

import dataset as D
from checkpoint import CKPT_RE, ckpt_path
from recognition import translate
from runfolder import StopRequest, newest_loadable_checkpoint
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


# the generator's UNet and diffusion: always the run's own
MODEL_FLAGS = ('ch', 'ch_mult', 'attn', 'num_res_blocks', 'dropout', 'T', 'beta_1', 'beta_T',
               'var_type', 'img_size', 'conditional', 'augm')
# how a set is drawn: the run's own unless the classifier's command gives them
SAMPLING_FLAGS = ('sample_method', 'omega', 'sampler', 'sample_steps', 'spacing', 'skip_type',
                  'eta', 'clip_denoised')
# the data types whose training subset --imb_factor / --imb_type draw
LONG_TAIL_DRAWN = ('cifar10lt', 'cifar100lt', 'digitslt', 'mnistlt')


def generator_cfg(cfg):
    """The namespace of the generator run in --synthetic_logdir: cfg with the run's UNet and
    diffusion flags (MODEL_FLAGS), its sampling flags (SAMPLING_FLAGS) except those this command
    gives (cfg.given; listed in `sampling_given`), both read from the run's flagfile.txt by
    absl's parser (cfg.run_flags), logdir = the run and ckpt_step = --ckpt_step when given,
    else the run's newest loadable checkpoint. Prints which checkpoint and settings it draws
    with. UserError (nothing written) when the folder is no training run, the run's images are
    of another size, it was trained on other data than cfg's (unless --synthetic_other_data)
    or it would draw unlabelled images."""
    folder = cfg.synthetic_logdir
    path = os.path.join(folder, 'flagfile.txt')
    if not os.path.isfile(path):
        raise UserError(f'--synthetic_logdir {folder}: {path} not found (not a training run '
                        f'folder of main.py --train)')
    run = cfg.run_flags(path)
    check_generator_data(cfg, run, path)
    gen = copy.copy(cfg)
    for name in MODEL_FLAGS:
        setattr(gen, name, getattr(run, name))
    gen.sampling_given = [name for name in SAMPLING_FLAGS if name in cfg.given]
    for name in SAMPLING_FLAGS:
        if name not in cfg.given:
            setattr(gen, name, getattr(run, name))
    if gen.img_size != cfg.img_size:
        raise UserError(f'--synthetic_logdir {folder}: the run generates '
                        f'{gen.img_size}x{gen.img_size} images, the classifier uses --img_size '
                        f'{cfg.img_size}')
    if gen.sample_method == 'uncond':
        raise UserError(f'--synthetic_logdir {folder}: --sample_method uncond (from '
                        f'{"the command line" if "sample_method" in cfg.given else path}) gives '
                        f'unlabelled images; give --sample_method cfg or cond')
    gen.logdir = folder
    gen.ckpt_step = generator_step(cfg)
    print(f'--synthetic_logdir {folder}: drawing with '
          + ', '.join(f'--{name} {"unset" if getattr(gen, name) is None else getattr(gen, name)}'
                      for name in SAMPLING_FLAGS)
          + ' (from its flagfile.txt'
          + (f'; {", ".join("--" + n for n in gen.sampling_given)} from this command)'
             if gen.sampling_given else ')'))
    return gen


def generator_step(cfg):
    """The checkpoint step of --synthetic_logdir to draw from: --ckpt_step when given (0
    included), else the run's newest checkpoint that loads (printed; UserError when none)."""
    if 'ckpt_step' in cfg.given:
        return cfg.ckpt_step
    found = newest_loadable_checkpoint(cfg.synthetic_logdir)
    if found is None:
        raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: no loadable checkpoint '
                        f'(ckpt_*.pt); train the run first or give --ckpt_step')
    path = found[0]
    print(f'--synthetic_logdir {cfg.synthetic_logdir}: its newest loadable checkpoint is {path} '
          f'(--ckpt_step N picks another)')
    return int(CKPT_RE.match(os.path.basename(path)).group(1))


def flags_data_identity(flags):
    """The training data that a namespace of flags names: --data_type, with --imb_factor and
    --imb_type where they draw the subset, the folder of imagefolder (absolute) and the listing
    of ImageNet-LT / iNaturalist (the --list_file name, '' for the default)."""
    out = {'data_type': flags.data_type}
    if flags.data_type in LONG_TAIL_DRAWN:
        out.update(imb_factor=float(flags.imb_factor), imb_type=flags.imb_type)
    if flags.data_type == 'imagefolder':
        out['root'] = os.path.abspath(flags.root)
    if flags.data_type in ('imagenetlt', 'inat2018'):
        out['list_file'] = os.path.basename(flags.list_file)
    return out


def check_generator_data(cfg, run, path):
    """UserError unless the generator run (flags `run`, read from `path`) was trained on the
    classifier's data (flags_data_identity), or --synthetic_other_data accepts it anyway."""
    mine, theirs = flags_data_identity(cfg), flags_data_identity(run)
    if mine == theirs or cfg.synthetic_other_data:
        return
    differ = ', '.join(f'--{k} {theirs.get(k, "-")} (here {mine.get(k, "-")})'
                       for k in ('data_type', 'imb_factor', 'imb_type', 'root', 'list_file')
                       if mine.get(k) != theirs.get(k))
    raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: the generator was trained on '
                    f'other data than the classifier: {differ} (its {path}); pass '
                    f'--synthetic_other_data to use it anyway')


def weights_sha256(state_dict):
    """sha256 (hex) of a network's weights: every tensor's name, dtype, shape and bytes in name
    order, so the same weights give the same hash whatever file, device or step they came
    with."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def array_sha256(array):
    """sha256 (hex) of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f'{a.dtype}:{a.shape};'.encode() + a.tobytes()).hexdigest()


def synthetic_name(cfg, fill, settings):
    """Readable part of the file stem of the images drawn for this run (inside
    LOGDIR/synthetic/): the generator folder's name and checkpoint, guidance, the sampler
    settings as their tag (e.g. ddim50quad_eta1_clip), the variance, the numbers drawn and the
    seed. drawn_synthetic appends the set's key, which holds everything that made the set."""
    kind = 'balanced' if cfg.synthetic_only else 'fill'
    variance = f'_{cfg.var_type}' if settings.sampler == 'ddpm' else ''
    source = ''
    if cfg.synthetic_source == 'translate':
        source = (f'_translate{translate.strength_name(cfg.translate_strength)}from'
                  f'{str(cfg.translate_from).replace(",", "-").replace("+", "-")}')
    return (f'{os.path.basename(os.path.normpath(cfg.synthetic_logdir))}_{cfg.sample_method}_'
            f'{cfg.omega}_{settings.tag()}{variance}_STEP{cfg.ckpt_step}{source}_{kind}{fill}_'
            f'seed{cfg.seed}')


def set_key(gen, settings, labels, starts, start_t):
    """sha256 (hex) of everything that makes a drawn set: the generator's weights
    (gen.weights_sha256), UNet and diffusion flags and --amp, guidance, the sampler's settings
    (`settings`, GaussianDiffusionSampler.settings), the labels in order, the seed and, for
    translations, the start time and the real images translated (`starts`)."""
    parts = {'weights': gen.weights_sha256, 'model': {n: getattr(gen, n) for n in MODEL_FLAGS},
             'amp': gen.amp, 'sample_method': gen.sample_method, 'omega': float(gen.omega),
             'sampler': settings, 'labels': array_sha256(labels), 'seed': gen.seed,
             'start_t': start_t, 'starts': None if starts is None else array_sha256(starts)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def drawn_synthetic(cfg, inputs, out_dir, device):
    """Images drawn from --synthetic_logdir for this run: from noise (--synthetic_source
    generate) or translated from real images of other classes (translate, recognition.translate,
    with inputs.translate_sources the real images to start from), per_class[c] of every class c
    in class order, with the generator of inputs.generator (generator_cfg, with weights_sha256).
    Saved as LOGDIR/synthetic/NAME_KEY.npy + NAME_KEY_labels.npy (NAME: synthetic_name, KEY:
    the start of set_key), the settings in NAME_KEY_sampler.json (sampler, guidance, checkpoint,
    the generator's weights hash, the flags given on the command line, the full key) and, for
    translations, the indices of the real training images translated in NAME_KEY_sources.npy
    and a grid of source -> translated pairs in LOGDIR/translate_pairs_s{strength}.png. A set is
    reused only when its recorded key is this draw's (e.g. on resume; pass the .npy to
    --synthetic to reuse it elsewhere). Returns (uint8 images, int64 labels, path of the .npy), or
    None when SIGINT / SIGTERM stopped the drawing (between batches; nothing of it is saved)."""
    from evaluation import generate, save_settings
    from factory import build_sampler, sampler_settings
    gen, model = inputs.generator
    folder = os.path.join(out_dir, 'synthetic')
    resolved = sampler_settings(gen, 'synthetic')
    sampler = build_sampler(gen, model, inputs.num_class, 'synthetic').to(device)
    labels = np.repeat(np.arange(len(inputs.per_class)), inputs.per_class).astype(np.int64)
    translating = cfg.synthetic_source == 'translate'
    starts = start_t = None
    if translating:
        start_t = translate.start_step(sampler, cfg.translate_strength)
        starts = translate.real_images(inputs.real, inputs.translate_sources)
    settings = sampler.settings(gen.sample_method, gen.omega, start_t)
    # the time steps too: a change of a spacing's schedule (not of its name) draws anew
    timesteps = [int(t) for t in sampler.timesteps(start_t)]
    key = set_key(gen, {**settings, 'timesteps': timesteps}, labels, starts, start_t)
    name = f'{synthetic_name(gen, parse_fill(cfg.synthetic_fill), resolved)}_{key[:12]}'
    path = os.path.join(folder, name + '.npy')
    if (os.path.isfile(path) and os.path.isfile(D.synthetic_labels_path(path))
            and recorded_settings(path).get('set_key') == key):
        print(f'reusing the generated images {path}')
        return D.load_synthetic(path, inputs.num_class, cfg.img_size) + (path,)
    os.makedirs(folder, exist_ok=True)
    what = (f'translating {len(labels)} real images of classes {inputs.translate_classes} '
            f'(strength {cfg.translate_strength}: from time index {start_t})' if translating
            else f'drawing {len(labels)} images')
    checkpoint = ckpt_path(gen.logdir, gen.ckpt_step)
    print(f'{what} with {checkpoint} ({gen.sample_method}, omega {gen.omega}, '
          f'{resolved.describe()}, {settings["nfe_per_image"]} network evaluations per image), '
          f'per class {inputs.per_class.tolist()}')
    images = np.zeros((0, 3, cfg.img_size, cfg.img_size), np.float32)
    if len(labels):
        with StopRequest() as stop:
            images = generate(sampler, len(labels), cfg.batch_size, cfg.img_size, device,
                              gen.sample_method, gen.omega, cfg.seed,
                              'translating' if translating else 'generating', classes=labels,
                              starts=starts, start_t=start_t, stop=stop)
        if images is None:
            print(f'{stop.signal}: stopped while drawing the generated set, nothing of it saved; '
                  f'run the same command again to draw it')
            return None
        images, labels = images
    record = {**settings, 'sampler_flag': gen.sampler, 'seed': cfg.seed,
              'synthetic_source': cfg.synthetic_source, 'sample_method': gen.sample_method,
              'omega': gen.omega, 'ckpt_step': gen.ckpt_step, 'generator_checkpoint': checkpoint,
              'generator_weights_sha256': gen.weights_sha256,
              'sampling_given': gen.sampling_given, 'set_key': key}
    if translating:
        save_npy(path[:-len('.npy')] + '_sources.npy', inputs.translate_sources)
        strength = translate.strength_name(cfg.translate_strength)
        grid = translate.save_pairs_grid((starts + 1) / 2, torch.from_numpy(images), labels,
                                         os.path.join(out_dir, f'translate_pairs_s{strength}.png'))
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
    found = settings_path(path)
    if not os.path.isfile(found):
        return {}
    with open(found) as f:
        return json.load(f)

