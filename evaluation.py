"""Flag checks, FID statistics, sampling and evaluation of trained runs (called by main.py).

File names follow the reference: with name = {sample_name}_N{num_images}_STEP{ckpt_step},
  LOGDIR/{method}_{omega}_samples_ema_{name}.npy   float32 N x 3 x H x W in [0, 1]
  LOGDIR/{method}_{omega}_labels_ema_{name}.npy    int64 N (-1 for unconditional samples)
  LOGDIR/{method}_{omega}_feats_ema_{name}.npz     Inception feats, probs, labels
  LOGDIR/{method}_{omega}_sampler_ema_{name}.json  the sampler settings that drew the samples
  LOGDIR/visual_ema_{method}_{omega}_{name}.png    16-wide grid of the first 256
  LOGDIR/res_ema_{name}.txt                        results, appended
  LOGDIR/eval.jsonl                                one JSON line per evaluation
  LOGDIR/per_class_ema_{method}_{omega}_{name}.csv per-class FID / precision / recall
"""
import copy
import glob
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import (ckpt_path, load_checkpoint, load_model_state, recorded_class_counts,
                        recorded_num_class)
from dataset import build_dataset, build_reference_dataset, num_classes, reference_split
from factory import build_model, build_sampler, sampler_settings
from grids import draw_grid, grid_layout, grid_noise, save_grid_png
from samplers import ImageNoise, default_settings
from train import setup_distributed
from utils import (UserError, append_jsonl, append_text, get_device, save_npy, save_npz,
                   save_text)

INCEPTION_AMP = 'none'


def check_flags(cfg):
    """Reject flag combinations that cannot work, before anything is written. (Each flag's own
    range is checked earlier, as the flags are parsed: main.FLAG_DOMAINS.)"""
    if cfg.train and (cfg.cb or cfg.cfg) and not cfg.conditional:
        flag = '--cb' if cfg.cb else '--cfg'
        raise UserError(f'{flag} needs --conditional (a label-conditional model)')
    if cfg.train and cfg.eval_step > 0:
        from score.evaluate import load_fid_cache
        from score.inception import weights_file
        load_fid_cache(cfg.fid_cache)  # not after hours of training
        weights_file(cfg.inception_weights or None)
    if cfg.amp == 'fp16' and not torch.cuda.is_available():
        raise UserError('--amp fp16 needs a CUDA GPU; use --amp bf16 or --amp none on the CPU')
    if cfg.omega_sweep and not (cfg.eval and cfg.sample_method == 'cfg'):
        raise UserError('--omega_sweep sweeps the guidance of --eval: use it with --eval and '
                        '--sample_method cfg')
    if cfg.eval or cfg.sample:
        if cfg.sample_method in ('cfg', 'cond') and not cfg.conditional:
            raise UserError(f'--sample_method {cfg.sample_method} needs a conditional model; '
                            f'use --sample_method uncond or --conditional')


def settings_suffix(cfg, use):
    """'' where `use` draws its images with its default sampler settings
    (samplers.default_settings), the default variance and --seed 0, so that the seed README's
    --eval files keep the reference's names; else '_' + what differs: the sampler settings' tag
    (e.g. '_ddim50quad_eta1_clip'), '_fixedsmall', '_seed3'. Two sets drawn differently never
    share a file name, so neither overwrites nor is mistaken for the other."""
    settings = sampler_settings(cfg, use)
    default = default_settings(use, skip_type=cfg.skip_type, T=cfg.T)
    parts = [] if settings.tag() == default.tag() else [settings.tag()]
    if cfg.var_type != 'fixedlarge' and settings.sampler == 'ddpm':
        parts.append(cfg.var_type)
    if cfg.seed:
        parts.append(f'seed{cfg.seed}')
    return ''.join(f'_{part}' for part in parts)


DEFAULT_SAMPLE_NAME = 'saved'


def sample_stem(cfg):
    """The file stem of --sample's grid and arrays in LOGDIR: --sample_name when it is given
    (not the default 'saved'), else sample_{method}_{omega}_STEP{ckpt_step} followed by
    settings_suffix(cfg, 'sample')."""
    if cfg.sample_name != DEFAULT_SAMPLE_NAME:
        return cfg.sample_name
    return (f'sample_{cfg.sample_method}_{cfg.omega}_STEP{cfg.ckpt_step}'
            f'{settings_suffix(cfg, "sample")}')


def sample_name(cfg, use='eval'):
    """{sample_name}_N{num_images}_STEP{ckpt_step} as the reference names an evaluation's
    files, followed by settings_suffix(cfg, use)."""
    return (f'{cfg.sample_name}_N{cfg.num_images}_STEP{cfg.ckpt_step}'
            f'{settings_suffix(cfg, use)}')


def run_files(cfg):
    name = sample_name(cfg)
    prefix = os.path.join(cfg.logdir, f'{cfg.sample_method}_{cfg.omega}')
    return {
        'samples': f'{prefix}_samples_ema_{name}.npy',
        'labels': f'{prefix}_labels_ema_{name}.npy',
        'feats': f'{prefix}_feats_ema_{name}.npz',
        'sampler': f'{prefix}_sampler_ema_{name}.json',
        'visual': os.path.join(cfg.logdir, f'visual_ema_{cfg.sample_method}_{cfg.omega}_{name}.png'),
        'res': os.path.join(cfg.logdir, f'res_ema_{name}.txt'),
        'jsonl': os.path.join(cfg.logdir, 'eval.jsonl'),
        'per_class': os.path.join(cfg.logdir, f'per_class_ema_{cfg.sample_method}_{cfg.omega}_'
                                              f'{name}.csv'),
        'per_class_plot': os.path.join(cfg.logdir, f'per_class_ema_{cfg.sample_method}_'
                                                   f'{cfg.omega}_{name}.png'),
        'groups_plot': os.path.join(cfg.logdir, f'groups_ema_{cfg.sample_method}_{cfg.omega}_'
                                                f'{name}.png'),
        'sweep_csv': os.path.join(cfg.logdir, f'omega_sweep_{cfg.sample_method}_{name}.csv'),
        'sweep_plot': os.path.join(cfg.logdir, f'omega_sweep_{cfg.sample_method}_{name}.png'),
    }


# ---------------------------------------------------------------------------------------------
# the model of a run

def load_ema_model(cfg, device):
    """EMA weights of LOGDIR/ckpt_{ckpt_step}.pt in a UNet built from the flags.
    Returns (model, num_class, checkpoint dict)."""
    path = ckpt_path(cfg.logdir, cfg.ckpt_step)
    ckpt = load_checkpoint(path)
    state = ckpt['ema_model']
    if cfg.sample_method != 'uncond' and 'label_embedding.weight' not in state:
        raise UserError(f'--sample_method {cfg.sample_method}: checkpoint {path} is '
                        f'unconditional; use --sample_method uncond')
    num_class = recorded_num_class(ckpt)
    if num_class is None:
        # an unconditional model saved before checkpoints recorded the class counts: only the
        # data set knows how many classes the run had
        num_class = num_classes(cfg.data_type, cfg.root, cfg.list_file)
    model = build_model(cfg, num_class)
    load_model_state(model, state, path)
    return model.to(device).eval(), num_class, ckpt


def draw_labels(num_class, num_images, seed, first_index=0):
    """Labels of images first_index .. first_index + num_images - 1 of a set seeded with `seed`:
    int64 [num_images], uniform over the classes, all drawn up front from one generator (so
    they depend on neither the batch size nor how the set is split over processes)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(num_class, (first_index + num_images,), generator=g)[first_index:]


def generate(sampler, num_images, batch_size, img_size, device, method, omega, seed, desc,
             classes=None, first_index=0, starts=None, start_t=None, stop=None):
    """num_images samples in batches: (float32 N x 3 x H x W in [0, 1], int64 labels or -1).

    The labels are `classes` (int64 [num_images]) when given, else drawn uniformly up front
    (draw_labels; none for 'uncond'). Image i (global index first_index + i) takes x_T and every
    step's noise from its own generator seeded from (seed, first_index + i) (samplers.ImageNoise),
    so a sample is a pure function of (seed, index, label, sampler settings): the same whatever
    the batch size, the batch it falls in or the number of processes sharing the set.
    With `starts` (float N x 3 x H x W in [-1, 1]) and `start_t`, image i is SDEdit from
    starts[i]: noised to time index start_t by the draw that is otherwise x_T, then denoised
    from there (the sampler's forward with start_t).
    `stop` (a runfolder.StopRequest) is looked at before every batch: once it has received a
    signal, generate returns None and nothing of what it drew."""
    if classes is not None:
        labels_all = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    elif method != 'uncond':
        labels_all = draw_labels(sampler.num_class, num_images, seed, first_index)
    else:
        labels_all = None
    images, labels = [], []
    with tqdm(total=num_images, desc=desc, dynamic_ncols=True, unit='img') as pbar:
        for start in range(0, num_images, batch_size):
            if stop is not None and stop.signal:
                return None
            n = min(batch_size, num_images - start)
            noise = ImageNoise(seed, range(first_index + start, first_index + start + n))
            x_T = noise.draw((3, img_size, img_size), device)
            if starts is not None:
                x_T = sampler.noise_to(torch.as_tensor(starts[start:start + n]).to(device),
                                       start_t, x_T)
            y = None if labels_all is None else labels_all[start:start + n].to(device)
            x, y = sampler(x_T, omega=omega, method=method, y=y, noise=noise, start_t=start_t)
            images.append(((x.float() + 1) / 2).cpu().numpy())
            labels.append(np.full(n, -1, np.int64) if y is None else y.cpu().numpy())
            pbar.update(n)
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def save_visual(images, path):
    """The first 256 of `images` (float N x 3 x H x W in [0, 1]) as a 16-wide PNG grid."""
    save_grid_png(torch.from_numpy(np.asarray(images[:256])), 16, path, enlarge=False)


# ---------------------------------------------------------------------------------------------
# --sample

def sample(cfg):
    """A class-per-row grid of `sample_size` images and the samples as .npy (no metrics): the
    run's training grid (the same noise and labels, grids.py) drawn from its checkpoint, the
    rows labelled with the class counts the checkpoint recorded."""
    device = get_device()
    stem = os.path.join(cfg.logdir, sample_stem(cfg))
    model, num_class, ckpt = load_ema_model(cfg, device)
    sampler = build_sampler(cfg, model, num_class, 'sample').to(device)
    x_T = grid_noise(cfg.seed, cfg.sample_size, cfg.img_size)
    labels, per_row = grid_layout(num_class, cfg.sample_size, cfg.sample_method != 'uncond')
    images = draw_grid(sampler, x_T.to(device), labels, cfg.sample_method, cfg.omega,
                       cfg.batch_size, cfg.seed)
    written = [save_grid_png(images, per_row, stem + '.png')]
    if labels is not None:  # rows named by class and training count
        from score.plots import labelled_grid
        written.append(labelled_grid(images.numpy(), labels.numpy(), class_counts_of(cfg, ckpt),
                                     per_row, stem + '_labelled.png'))
    save_npy(stem + '.npy', images.numpy().astype(np.float32))
    save_npy(stem + '_labels.npy', (np.full(len(images), -1, np.int64) if labels is None
                                    else labels.numpy().astype(np.int64)))
    save_settings(stem + '_sampler.json', {**sampler.settings(cfg.sample_method, cfg.omega),
                                           'sampler_flag': cfg.sampler, 'seed': cfg.seed})
    print(f'wrote {", ".join(written)}, {stem}.npy, {stem}_labels.npy, {stem}_sampler.json')


SETTINGS_KEYS = ('sampler', 'sample_steps', 'spacing', 'eta', 'clip_denoised', 'nfe_per_image')


def save_settings(path, settings):
    """The sampler settings of a saved set (GaussianDiffusionSampler.settings() and more) as
    JSON beside it, so that the set says how it was drawn."""
    save_text(path, json.dumps(settings, sort_keys=True) + '\n')


def saved_settings(path):
    """The settings save_settings wrote, or SETTINGS_KEYS -> None for a set saved without them
    (before they were recorded)."""
    if not os.path.isfile(path):
        return dict.fromkeys(SETTINGS_KEYS)
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# --make_stats

def default_fid_cache(data_type, split='auto'):
    """stats/{data set}.{train|test}.npz, e.g. stats/cifar100.train.npz (a long-tailed set
    and its balanced source share one: mnistlt -> stats/mnist.train.npz)."""
    base = data_type[:-2] if data_type in ('cifar10lt', 'cifar100lt', 'mnistlt') else data_type
    return os.path.join('stats', f'{base}.{reference_split(data_type, split)}.npz')


def make_stats(cfg):
    from score.evaluate import make_stats as write_stats
    from score.inception import load_inception
    device = get_device()
    fid_cache = (cfg.fid_cache if cfg.fid_cache_given
                 else default_fid_cache(cfg.data_type, cfg.ref_split))
    net = load_inception(cfg.inception_weights or None, device)
    dataset = build_reference_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.download,
                                      cfg.list_file, cfg.ref_split, test_root=cfg.test_root)
    targets = np.asarray(dataset.targets)
    if 0 < cfg.ref_images < len(dataset):
        keep = np.sort(np.random.RandomState(0).permutation(len(dataset))[:cfg.ref_images])
        dataset, targets = torch.utils.data.Subset(dataset, keep.tolist()), targets[keep]
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size,
                                         num_workers=cfg.num_workers)
    images = (((x + 1) / 2).clamp(0, 1) for x, _ in loader)
    print(f'{cfg.data_type}: computing statistics of {len(dataset)} reference images')
    out = write_stats(images, targets, fid_cache, net, batch_size=cfg.batch_size,
                      device=device, amp=INCEPTION_AMP)
    print(f'wrote {out["fid_cache"]} and {out["feats_path"]}')


# ---------------------------------------------------------------------------------------------
# --eval

def load_saved(files, cfg):
    """Samples and labels of a saved set (for --sampled), or a UserError listing what exists."""
    if not os.path.isfile(files['samples']) and not os.path.isfile(files['feats']):
        present = sorted(os.path.basename(p) for p in
                         glob.glob(os.path.join(glob.escape(cfg.logdir), '*_samples_ema_*.npy')))
        raise UserError(f'--sampled: no saved samples {files["samples"]}; saved sets in '
                        f'{cfg.logdir}: {", ".join(present) or "none"} (check --sample_name, '
                        f'--num_images, --ckpt_step, --sample_method, --omega)')
    if not os.path.isfile(files['samples']):
        return None, None
    images = np.load(files['samples'], mmap_mode='r')
    labels = np.load(files['labels']) if os.path.isfile(files['labels']) else None
    return images, labels


def features_of(images, labels, files, cfg, device, reuse):
    """Inception features of the set, reused from the feats file when present and `reuse`."""
    if reuse and os.path.isfile(files['feats']):
        data = np.load(files['feats'])
        if images is None or len(data['feats']) == len(images):
            return data['feats'], data['probs'], data['labels']
    from score.inception import compute_features, load_inception
    net = load_inception(cfg.inception_weights or None, device)
    # Inception runs in fp32 whatever --amp says: the FID cache was made in fp32
    feats, probs = compute_features(images, net, batch_size=cfg.batch_size, device=device,
                                    amp=INCEPTION_AMP)
    labels = np.full(len(feats), -1, np.int64) if labels is None else labels
    save_npz(files['feats'], feats=feats, probs=probs, labels=labels)
    return feats, probs, labels


def class_counts_of(cfg, ckpt):
    """Training-set images per class (np.int64 [num_class]): recorded in the checkpoint dict
    `ckpt`, else from the data set, else None."""
    counts = None if ckpt is None else recorded_class_counts(ckpt)
    if counts is not None:
        return counts
    # no checkpoint (--sampled alone) or one saved before the counts were recorded: the data
    # set of the flags is all there is to count
    try:
        return build_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.imb_factor, cfg.imb_type,
                             list_file=cfg.list_file).class_counts
    except UserError:
        return None


def compute_metrics(cfg, feats, probs, labels, class_counts, device):
    from score.evaluate import evaluate as score_evaluate
    from score.evaluate import load_fid_cache, load_ref_feats, ref_feats_path
    fid_cache = load_fid_cache(cfg.fid_cache)
    ref = load_ref_feats(ref_feats_path(cfg.fid_cache))
    if labels is not None and (labels < 0).all():
        labels = None
    return score_evaluate(feats, probs, labels, fid_cache, ref=ref, class_counts=class_counts,
                          prd=cfg.prd, improved_prd=cfg.improved_prd,
                          use_torch=cfg.fid_use_torch, device=device, many=cfg.many_shot,
                          few=cfg.few_shot, seed=cfg.seed, min_fid_images=cfg.min_fid_images,
                          log=print)


def record(cfg, files, results, rows, extra):
    """Append the results to the res text file and eval.jsonl, write the per-class CSV and the
    plots; returns the paths written."""
    from score.evaluate import format_results, write_per_class_csv
    from score.plots import plot_groups, plot_per_class
    text = format_results(results)
    header = (f'{time.strftime("%Y-%m-%d %H:%M:%S")} {cfg.sample_method} omega={cfg.omega} '
              f'ckpt_step={cfg.ckpt_step} sampler={extra.get("sampler")} '
              f'steps={extra.get("sample_steps")} clip_denoised={extra.get("clip_denoised")}\n')
    print(header + text)
    append_text(files['res'], header + text + '\n')
    append_jsonl(files['jsonl'], {**extra, 'inception_precision': 'fp32', **results})
    written = [files['res'], files['jsonl']]
    if rows:
        write_per_class_csv(files['per_class'], rows)
        written += [files['per_class'], plot_per_class(rows, files['per_class_plot'])]
    written.append(plot_groups(results, files['groups_plot']))
    return [path for path in written if path]


def sampler_record(cfg, settings):
    """What identifies a sample set in eval.jsonl: run, checkpoint, guidance and the sampler
    settings (`settings`: sampler, sample_steps, spacing, eta, clip_denoised, nfe_per_image;
    sampler_flag is --sampler as given, None when unset; a saved set's own when it has one)."""
    return {'logdir': cfg.logdir, 'ckpt_step': cfg.ckpt_step, 'sample_method': cfg.sample_method,
            'omega': cfg.omega, **{k: settings.get(k) for k in SETTINGS_KEYS},
            'sampler_flag': settings.get('sampler_flag', cfg.sampler), 'name': sample_name(cfg),
            'fid_cache': cfg.fid_cache, 'data_type': cfg.data_type}


def sample_for_eval(cfg, sampler, rank, world_size, device, settings):
    """--eval's num_images samples (split over torchrun ranks, gathered on rank 0, saved there
    with their `settings`). Image i is the same whatever the number of ranks (generate).
    Returns (images, labels) on rank 0 and (None, None) on the other ranks."""
    lo = rank * cfg.num_images // world_size
    hi = (rank + 1) * cfg.num_images // world_size
    desc = f'sampling omega={cfg.omega}' + (f' (rank {rank})' if world_size > 1 else '')
    images, labels = generate(sampler, hi - lo, cfg.batch_size, cfg.img_size, device,
                              cfg.sample_method, cfg.omega, cfg.seed, desc, first_index=lo)
    if world_size > 1:
        parts = [None] * world_size if rank == 0 else None
        dist.gather_object((images, labels), parts, dst=0)
        if rank != 0:
            return None, None
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    files = run_files(cfg)
    save_npy(files['samples'], images)
    save_npy(files['labels'], labels)
    save_settings(files['sampler'], {**settings, 'sampler_flag': cfg.sampler, 'seed': cfg.seed})
    return images, labels


def score_and_record(cfg, images, labels, ckpt, device, settings):
    """Features, metrics and result files of one sample set drawn with the sampler `settings`;
    returns the results dict."""
    files = run_files(cfg)
    if images is not None:
        save_visual(np.asarray(images[:256]), files['visual'])
    feats, probs, labels = features_of(images, labels, files, cfg, device, reuse=cfg.sampled)
    results, rows = compute_metrics(cfg, feats, probs, labels, class_counts_of(cfg, ckpt), device)
    written = record(cfg, files, results, rows, sampler_record(cfg, settings))
    samples = [] if cfg.sampled else [files['samples'], files['labels']]
    print(f'wrote results to {", ".join(written)}; samples and features: '
          f'{", ".join(samples + [files["feats"]])}')
    return results


def evaluate(cfg):
    """--eval: generate (or load with --sampled) num_images, compute and record the metrics;
    with --omega_sweep once per omega, from the same noise and labels."""
    from score.evaluate import load_fid_cache
    load_fid_cache(cfg.fid_cache)  # fail before hours of sampling, not after
    omegas = [float(w) for w in cfg.omega_sweep] or [cfg.omega]
    ckpt, sampler = None, None
    if cfg.sampled:
        rank, world_size, device = 0, 1, get_device()
        if os.path.isfile(ckpt_path(cfg.logdir, cfg.ckpt_step)):
            ckpt = load_checkpoint(ckpt_path(cfg.logdir, cfg.ckpt_step))
    else:
        rank, world_size, device = setup_distributed()
        model, num_class, ckpt = load_ema_model(cfg, device)
        sampler = build_sampler(cfg, model, num_class, 'eval').to(device)
    table = []
    for omega in omegas:
        run_cfg = copy.copy(cfg)
        run_cfg.omega = omega
        if cfg.sampled:
            images, labels = load_saved(run_files(run_cfg), run_cfg)
            settings = saved_settings(run_files(run_cfg)['sampler'])
        else:
            settings = sampler.settings(cfg.sample_method, omega)
            images, labels = sample_for_eval(run_cfg, sampler, rank, world_size, device,
                                             settings)
        if rank == 0:
            table.append({'omega': omega, **score_and_record(run_cfg, images, labels, ckpt,
                                                             device, settings)})
    if world_size > 1:
        dist.destroy_process_group()
    if rank != 0:
        return None
    if cfg.omega_sweep:
        write_sweep(cfg, table)
    return table[-1]


SWEEP_COLUMNS = ('omega', 'FID', 'IS', 'precision', 'recall', 'FID_tail', 'recall_tail')


def write_sweep(cfg, table):
    """The --omega_sweep table (CSV) and plot, and the best omega by FID on stdout."""
    from score.plots import plot_omega_sweep
    files = run_files(cfg)
    lines = [','.join(SWEEP_COLUMNS)]
    for row in table:
        lines.append(','.join('' if row.get(k) is None else f'{row[k]:.6g}'
                              for k in SWEEP_COLUMNS))
    save_text(files['sweep_csv'], '\n'.join(lines) + '\n')
    plot_omega_sweep(table, files['sweep_plot'])
    scored = [row for row in table if row.get('FID') is not None]
    best = min(scored, key=lambda row: row['FID']) if scored else None
    print('omega sweep: ' + ', '.join(
        f'{row["omega"]:g}: FID {row["FID"]:.3f}' if row.get('FID') is not None
        else f'{row["omega"]:g}: FID -' for row in table))
    print(f'best omega by FID: {best["omega"]:g} (FID {best["FID"]:.4f}); wrote '
          f'{files["sweep_csv"]}, {files["sweep_plot"]}' if best else
          f'no FID computed; wrote {files["sweep_csv"]}, {files["sweep_plot"]}')


def evaluate_during_training(cfg, ema_model, dataset, step, writer, out_dir):
    """--eval_step: evaluate the EMA model now, log to tensorboard and eval.jsonl."""
    device = next(ema_model.parameters()).device
    sampler = build_sampler(cfg, ema_model, dataset.num_class, 'eval').to(device)
    method = cfg.sample_method if cfg.conditional else 'uncond'
    images, labels = generate(sampler, cfg.num_images, cfg.batch_size, cfg.img_size, device,
                              method, cfg.omega, cfg.seed, f'eval step {step}')
    run_cfg = copy.copy(cfg)
    run_cfg.logdir, run_cfg.ckpt_step, run_cfg.sample_method = out_dir, step, method
    files = run_files(run_cfg)
    feats, probs, labels = features_of(images, labels, files, run_cfg, device, reuse=False)
    results, rows = compute_metrics(run_cfg, feats, probs, labels, dataset.class_counts, device)
    for key, value in results.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f'eval/{key}', value, step)
    record(run_cfg, files, results, rows, {**sampler_record(run_cfg, sampler.settings(
        method, cfg.omega)), 'during_training': True})
