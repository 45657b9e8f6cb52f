"""Long-tailed recognition with (and without) generated images: `main.py --classify`.

`classify(cfg, flags_text)` trains a classifier (classifier.py) on the long-tailed training set
that the diffusion run of the same flags uses (dataset.build_dataset), optionally with generated
images (`--synthetic PATH`, or drawn from a trained run with `--synthetic_logdir`), or on
generated images alone (`--synthetic_only`: the Classification Accuracy Score, CAS), and scores
it on the balanced held-out test split (dataset.build_test_dataset): top-1 overall, for the
many-shot (> --many_shot training images), medium and few-shot (< --few_shot) classes, and per
class. `cfg` is the plain namespace of main.py's flags; nothing here reads absl FLAGS.

Protocol (LDAM-DRW's CIFAR setting, the defaults): SGD momentum 0.9, lr 0.1, weight decay 2e-4,
batch 128, 200 epochs, linear warm-up over 5 epochs, lr x0.01 at epoch 160 and x0.0001 at 180,
random crop (zero padding img_size / 8, i.e. 4 at 32) and horizontal flip.

The run folder (`--logdir`) has the guarantees of diffusion training: it resumes exactly from
its newest checkpoint (the batch order is a pure function of (seed, epoch); crops, flips and
every RNG state are saved), files are written atomically, SIGINT/SIGTERM save and exit 0, and
nothing is written before every input has been checked.
"""
import copy
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import dataset as D
from checkpoint import save_checkpoint
from classifier import build_classifier, predict
from train import (StopRequest, newest_loadable_checkpoint, remove_stale_temporaries, rng_state,
                   set_rng_state)
from utils import (UserError, append_jsonl, check_writable_dir, get_device, save_npy,
                   save_text)

GROUPS = ('many', 'medium', 'few')
CONFUSION_PNG_MAX_CLASSES = 200  # a larger matrix is unreadable (and 8142^2 cells for iNat)


# ---------------------------------------------------------------------------------------------
# pure helpers: schedule, groups, accuracy, fill counts, loss, augmentation

def lr_factor(epoch, warmup, milestones, gamma):
    """Multiplier of --cls_lr in epoch `epoch` (0-based), as LDAM-DRW's adjust_learning_rate:
    (epoch + 1) / warmup during the first `warmup` epochs, then gamma ** (number of milestones
    <= epoch); with warmup 5, milestones 160 180 and gamma 0.01: 0.2 .. 1, 1, 0.01, 0.0001."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return gamma ** sum(1 for m in milestones if m <= epoch)


def class_groups(counts, many_shot, few_shot):
    """'many' (> many_shot training images), 'few' (< few_shot) or 'medium' per class."""
    return ['many' if n > many_shot else 'few' if n < few_shot else 'medium' for n in counts]


def accuracy_report(correct, total, counts, many_shot, few_shot):
    """Top-1 from per-class test results.

    correct, total: per-class numbers of correctly classified / all test images (length C);
    counts: per-class training images (they define the groups). Returns {'top1', 'top1_many',
    'top1_medium', 'top1_few' (fractions in [0, 1], None for a group without classes or test
    images), 'classes_many', ... (class counts per group), 'per_class' (C fractions, None for a
    class without test images)}.
    """
    correct, total = np.asarray(correct, np.int64), np.asarray(total, np.int64)
    groups = np.asarray(class_groups(counts, many_shot, few_shot))

    def frac(mask):
        n = int(total[mask].sum())
        return float(correct[mask].sum()) / n if n > 0 else None

    out = {'top1': frac(np.ones(len(total), bool))}
    for g in GROUPS:
        out[f'top1_{g}'] = frac(groups == g)
        out[f'classes_{g}'] = int((groups == g).sum())
    out['per_class'] = [float(c) / t if t > 0 else None for c, t in zip(correct, total)]
    return out


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


def weighted_loss(logits, y, weights):
    """Mean over the batch of weight * cross-entropy: logits B x C, y B, weights B (1 for real
    images, --synthetic_weight for generated ones, so real images keep their usual scale)."""
    return (F.cross_entropy(logits.float(), y, reduction='none') * weights).mean()


def augment(x, pad):
    """Random crop with `pad` pixels of zero (black, -1) padding, then random horizontal flip,
    per image; x: B x 3 x H x W in [-1, 1] -> same shape. Draws from the global torch RNG."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2))
    flips = torch.rand(b) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    out = torch.stack([padded[i, :, oy:oy + h, ox:ox + w]
                       for i, (oy, ox) in enumerate(offsets.tolist())])
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


# ---------------------------------------------------------------------------------------------
# data: real + generated images, deterministic batches

class TrainingSet(Dataset):
    """Real images followed by generated ones: items (x in [-1, 1], y, is_generated)."""

    def __init__(self, real, synthetic):
        self.parts = [p for p in (real, synthetic) if p is not None]
        self.n_real = len(real) if real is not None else 0
        self.targets = np.concatenate([p.targets for p in self.parts])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if i < self.n_real:
            x, y = self.parts[0][i]
            return x, y, False
        x, y = self.parts[-1][i - self.n_real]
        return x, y, True


class EpochBatchSampler(Sampler):
    """Batches of one epoch from batch `start` on: the permutation of epoch e comes from a
    torch.Generator seeded with seed * 1_000_003 + e, so a resumed run sees the same batches.
    A last batch of a single image is dropped (BatchNorm needs two)."""

    def __init__(self, n, batch_size, seed, epoch, start=0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = epoch, start

    def batches(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        out = [perm[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return out[:-1] if len(out) > 1 and len(out[-1]) < 2 else out

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self):
        return max(len(self.batches()) - self.start, 0)


def synthetic_dataset(images, labels, num_class, img_size):
    return D.ArrayImageDataset(torch.from_numpy(images), labels, num_class, img_size,
                               hflip=False)


# ---------------------------------------------------------------------------------------------
# generated images from a trained diffusion run

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


# ---------------------------------------------------------------------------------------------
# checkpoints of a classifier run

def load_classifier_checkpoint(path):
    """torch.load of a classifier checkpoint; UserError when missing, truncated or foreign."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise UserError(f'checkpoint {path} is truncated or not a checkpoint '
                        f'({type(e).__name__})') from None
    if not isinstance(ckpt, dict) or ckpt.get('kind') != 'classifier':
        raise UserError(f'{path} is not a classifier checkpoint of main.py --classify')
    return ckpt


def newest_classifier_checkpoint(folder):
    """(path, checkpoint) of the newest loadable ckpt_*.pt in `folder`, or None."""
    return newest_loadable_checkpoint(folder, load=load_classifier_checkpoint)


def classifier_from_run(folder, device):
    """The classifier of a finished (or stopped) --classify run folder, in eval mode."""
    found = newest_classifier_checkpoint(folder) if os.path.isdir(folder) else None
    if found is None:
        raise UserError(f'--filter_logdir {folder}: no classifier checkpoint (ckpt_*.pt of '
                        f'main.py --classify) there')
    path, ckpt = found
    model = build_classifier(ckpt['arch'], ckpt['num_class'])
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt['num_class']


# ---------------------------------------------------------------------------------------------
# inputs: everything is loaded and checked before the run folder is touched

def check_sources(cfg):
    """Combinations of the generated-image flags that cannot work."""
    if cfg.synthetic and cfg.synthetic_logdir:
        raise UserError('pass either --synthetic PATH (a saved set) or --synthetic_logdir (draw '
                        'from a trained run), not both')
    has_source = bool(cfg.synthetic or cfg.synthetic_logdir)
    for flag in ('synthetic_only', 'synthetic_filter'):
        if getattr(cfg, flag) and not has_source:
            raise UserError(f'--{flag} needs generated images: --synthetic PATH or '
                            f'--synthetic_logdir LOGDIR --ckpt_step N')
    if cfg.synthetic_logdir and cfg.sample_method == 'uncond':
        raise UserError('--synthetic_logdir: --sample_method uncond gives unlabelled images; '
                        'use cfg or cond')
    if cfg.synthetic_logdir:
        parse_fill(cfg.synthetic_fill)


def load_inputs(cfg, device):
    """Training set, test split, generated set or generator, filter classifier: a namespace.
    Raises UserError naming the flag or file of the first defect; writes nothing."""
    import types
    real = D.build_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.imb_factor, cfg.imb_type,
                           train=True, download=cfg.download, hflip=False,
                           list_file=cfg.list_file)
    test = D.build_test_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.cls_test_list,
                                cfg.download)
    num_class = real.num_class
    if test.num_class > num_class:
        raise UserError(f'test split of {cfg.data_type}: labels up to {test.num_class - 1}, but '
                        f'the training set has {num_class} classes')
    test.num_class = num_class
    inputs = types.SimpleNamespace(real=real, test=test, num_class=num_class, synthetic=None,
                                   generator=None, per_class=None, filter_model=None)
    if cfg.synthetic:
        inputs.synthetic = D.load_synthetic(cfg.synthetic, num_class, cfg.img_size)
        if cfg.synthetic_only and len(inputs.synthetic[1]) < 2:
            raise UserError(f'--synthetic {cfg.synthetic}: {len(inputs.synthetic[1])} image; '
                            f'--synthetic_only needs at least 2')
    if cfg.synthetic_logdir:
        from evaluation import load_ema_model
        gen = generator_cfg(cfg)
        model, gen_classes, _ = load_ema_model(gen, device)
        if gen_classes != num_class:
            raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: the model has '
                            f'{gen_classes} classes, {cfg.data_type} has {num_class}')
        inputs.generator = (gen, model)
        inputs.per_class = fill_counts(real.class_counts, cfg.synthetic_fill, cfg.synthetic_only)
    if cfg.synthetic_filter and cfg.filter_logdir:
        inputs.filter_model, filter_classes = classifier_from_run(cfg.filter_logdir, device)
        if filter_classes != num_class:
            raise UserError(f'--filter_logdir {cfg.filter_logdir}: the classifier has '
                            f'{filter_classes} classes, {cfg.data_type} has {num_class}')
    return inputs


def drawn_synthetic(cfg, inputs, out_dir, device):
    """Images drawn from --synthetic_logdir for this run, saved as
    LOGDIR/synthetic/NAME.npy + NAME_labels.npy (reused when present, e.g. on resume; pass the
    .npy to --synthetic to reuse it in another run). Returns (uint8 images, int64 labels)."""
    from train import build_sampler
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


def filter_synthetic(cfg, inputs, images, labels, out_dir, device):
    """Keep the generated images that a classifier trained on the real long-tailed data assigns
    to their own class with probability >= --filter_threshold. The classifier comes from
    --filter_logdir, else it is trained first into LOGDIR/filter_real. Returns (images, labels,
    dropped per class np.int64)."""
    model = inputs.filter_model
    if model is None:
        sub = copy.copy(cfg)
        sub.logdir = os.path.join(out_dir, 'filter_real')
        sub.synthetic = sub.synthetic_logdir = ''
        sub.synthetic_only = sub.synthetic_filter = False
        print(f'--synthetic_filter: training the real-data classifier into {sub.logdir}')
        real_only = copy.copy(inputs)
        real_only.synthetic = real_only.generator = None
        if run_training(sub, real_only, None, device) == 'stopped':
            return None
        model, _ = classifier_from_run(sub.logdir, device)
    data = synthetic_dataset(images, labels, inputs.num_class, cfg.img_size)
    probs, _ = predict(model, DataLoader(data, batch_size=cfg.cls_batch_size), device)
    own = probs[torch.arange(len(labels)), torch.from_numpy(labels)].numpy()
    keep = own >= cfg.filter_threshold
    dropped = np.bincount(labels[~keep], minlength=inputs.num_class).astype(np.int64)
    print(f'--synthetic_filter (threshold {cfg.filter_threshold}): dropped {int(dropped.sum())} '
          f'of {len(labels)} generated images; per class {dropped.tolist()}')
    return images[keep], labels[keep], dropped


def classify(cfg, flags_text):
    """--classify: check the inputs, then train and evaluate into --logdir (see the module
    docstring). Returns 'done', 'complete' (nothing to do) or 'stopped' (signal; resumable)."""
    check_sources(cfg)
    check_writable_dir(cfg.logdir, 'logdir')
    device = get_device()
    torch.manual_seed(cfg.seed)
    inputs = load_inputs(cfg, device)
    # every input has been checked: only now touch the run folder
    os.makedirs(cfg.logdir, exist_ok=True)
    remove_stale_temporaries(cfg.logdir)
    save_text(os.path.join(cfg.logdir, 'flagfile.txt'), flags_text)
    counts = inputs.real.class_counts
    print(f'{cfg.data_type}: {len(inputs.real)} training images, {inputs.num_class} classes, '
          f'per-class counts {counts.max()}..{counts.min()}; test split {len(inputs.test)} images')
    source, dropped = None, None
    if inputs.synthetic is not None:
        images, labels = inputs.synthetic
        source = cfg.synthetic
    elif inputs.generator is not None:
        images, labels, source = drawn_synthetic(cfg, inputs, cfg.logdir, device)
    if source is not None and cfg.synthetic_filter:
        filtered = filter_synthetic(cfg, inputs, images, labels, cfg.logdir, device)
        if filtered is None:
            return 'stopped'
        images, labels, dropped = filtered
    synthetic = None
    if source is not None:
        synthetic = dict(images=images, labels=labels, path=source, dropped=dropped)
    return run_training(cfg, inputs, synthetic, device)


# ---------------------------------------------------------------------------------------------
# training

def build_training(cfg, inputs, synthetic):
    """(TrainingSet, weight of generated images, generated images per class np.int64)."""
    syn_set, gen_counts = None, np.zeros(inputs.num_class, np.int64)
    if synthetic is not None:
        syn_set = synthetic_dataset(synthetic['images'], synthetic['labels'], inputs.num_class,
                                    cfg.img_size)
        gen_counts = syn_set.class_counts
    real = None if (cfg.synthetic_only and syn_set is not None) else inputs.real
    data = TrainingSet(real, syn_set)
    if len(data) < 2:
        raise UserError(f'the training set has {len(data)} images; a classifier needs at least 2')
    weight = 1.0 if real is None else float(cfg.synthetic_weight)
    return data, weight, gen_counts


def new_state(cfg, num_class, device):
    """Model, SGD optimiser and the per-epoch LambdaLR schedule of the protocol."""
    model = build_classifier(cfg.cls_arch, num_class).to(device)
    optim = torch.optim.SGD(model.parameters(), lr=cfg.cls_lr, momentum=cfg.cls_momentum,
                            weight_decay=cfg.cls_wd)
    milestones = sorted(cfg.cls_milestones)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda e: lr_factor(e, cfg.cls_warmup, milestones, cfg.cls_gamma))
    return model, optim, sched


def make_loader(data, sampler, cfg, device):
    # generator=: the loader's own seed draw must not touch the global RNG (exact resumption)
    return DataLoader(data, batch_sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=device.type == 'cuda', generator=torch.Generator())


def run_training(cfg, inputs, synthetic, device):
    """Train cfg.cls_epochs epochs into cfg.logdir (resuming from its newest checkpoint), then
    evaluate and write the reports. Returns 'done', 'complete' or 'stopped'."""
    out_dir = cfg.logdir
    os.makedirs(out_dir, exist_ok=True)
    data, weight, gen_counts = build_training(cfg, inputs, synthetic)
    torch.manual_seed(cfg.seed)
    model, optim, sched = new_state(cfg, inputs.num_class, device)
    per_epoch = len(EpochBatchSampler(len(data), cfg.cls_batch_size, cfg.seed, 0).batches())
    epoch, batch, stats = 0, 0, [0.0, 0, 0]
    found = newest_classifier_checkpoint(out_dir) if cfg.resume else None
    if found:
        path, ckpt = found
        try:
            model.load_state_dict(ckpt['model'])
        except RuntimeError:
            raise UserError(f'checkpoint {path} holds a {ckpt.get("arch")} with '
                            f'{ckpt.get("num_class")} classes, not this --cls_arch '
                            f'{cfg.cls_arch} / {inputs.num_class} classes; use another '
                            f'--logdir or --noresume') from None
        optim.load_state_dict(ckpt['optim'])
        sched.load_state_dict(ckpt['sched'])
        set_rng_state(ckpt['rng'])
        epoch, batch, stats = ckpt['epoch'], ckpt['batch'], list(ckpt['stats'])
        print(f'resuming from {path} at epoch {epoch + 1}, batch {batch}')
        if epoch >= cfg.cls_epochs and os.path.isfile(os.path.join(out_dir, 'eval.jsonl')):
            print(f'{out_dir}: classifier training already complete ({epoch} epochs); '
                  f'nothing to do')
            return 'complete'
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(out_dir)
    keep = cfg.keep_ckpt if cfg.keep_ckpt > 0 else 2

    def save(epoch, batch, stats):
        state = {'kind': 'classifier', 'arch': cfg.cls_arch, 'num_class': inputs.num_class,
                 'model': model.state_dict(), 'optim': optim.state_dict(),
                 'sched': sched.state_dict(), 'epoch': epoch, 'batch': batch, 'stats': stats,
                 'rng': rng_state(), 'class_counts': inputs.real.class_counts}
        return save_checkpoint(state, out_dir, epoch * per_epoch + batch, keep=keep)

    with StopRequest() as stop:
        while epoch < cfg.cls_epochs:
            sampler = EpochBatchSampler(len(data), cfg.cls_batch_size, cfg.seed, epoch, batch)
            loader = make_loader(data, sampler, cfg, device)
            batch, stats = train_epoch(cfg, model, optim, loader, weight, device, epoch, batch,
                                       per_epoch, stats, stop)
            if batch < per_epoch:  # stopped by a signal inside the epoch
                path = save(epoch, batch, stats)
                print(f'{stop.signal}: saved {path}; run the same command again to resume')
                writer.close()
                return 'stopped'
            log_epoch(cfg, writer, model, inputs, device, epoch, stats, optim)
            sched.step()
            epoch, batch, stats = epoch + 1, 0, [0.0, 0, 0]
            path = save(epoch, 0, stats)
            if stop.signal and epoch < cfg.cls_epochs:
                print(f'{stop.signal}: saved {path}; run the same command again to resume')
                writer.close()
                return 'stopped'
    evaluate_and_report(cfg, model, inputs, synthetic, gen_counts, device, writer, epoch)
    writer.close()
    return 'done'


def train_epoch(cfg, model, optim, loader, weight, device, epoch, batch, per_epoch, stats, stop):
    """Batches `batch`.. of one epoch; stops early after the batch in which a signal arrived.
    stats = [loss sum, correct, seen] of the epoch so far. Returns (next batch, stats)."""
    model.train()
    pad = cfg.img_size // 8
    with tqdm(total=per_epoch, initial=batch, desc=f'epoch {epoch + 1}/{cfg.cls_epochs}',
              dynamic_ncols=True, leave=False) as pbar:
        for x, y, generated in loader:
            x = augment(x, pad).to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            w = torch.where(generated, weight, 1.0).to(device)
            logits = model(x)
            loss = weighted_loss(logits, y, w)
            if not torch.isfinite(loss):
                raise UserError(f'epoch {epoch + 1}, batch {batch}: the loss is {loss.item()}; '
                                f'lower --cls_lr, then resume')
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            stats = [stats[0] + loss.item() * len(y), stats[1] + int((logits.argmax(1) == y).sum()),
                     stats[2] + len(y)]
            batch += 1
            pbar.update(1)
            pbar.set_postfix(loss=f'{stats[0] / stats[2]:.3f}')
            if stop.signal and batch < per_epoch:
                break
    return batch, stats


def log_epoch(cfg, writer, model, inputs, device, epoch, stats, optim):
    """Tensorboard: training loss / accuracy and lr every epoch, test top-1 every
    --cls_eval_every epochs."""
    step = epoch + 1
    writer.add_scalar('train/loss', stats[0] / max(stats[2], 1), step)
    writer.add_scalar('train/top1', stats[1] / max(stats[2], 1), step)
    writer.add_scalar('lr', optim.param_groups[0]['lr'], step)
    if cfg.cls_eval_every > 0 and step % cfg.cls_eval_every == 0 and step < cfg.cls_epochs:
        correct, total, _ = test_results(cfg, model, inputs, device)
        report = accuracy_report(correct, total, inputs.real.class_counts, cfg.many_shot,
                                 cfg.few_shot)
        for key in ('top1',) + tuple(f'top1_{g}' for g in GROUPS):
            if report[key] is not None:
                writer.add_scalar(f'test/{key}', report[key], step)
        print(f'epoch {step}: test top-1 {report["top1"]:.4f}')


# ---------------------------------------------------------------------------------------------
# evaluation and reports

def test_results(cfg, model, inputs, device):
    """Per-class (correct, total) on the test split (np.int64, length C) and the confusion
    matrix (C x C np.int64, rows = true class; None above CONFUSION_PNG_MAX_CLASSES classes)."""
    loader = DataLoader(inputs.test, batch_size=cfg.cls_batch_size, num_workers=cfg.num_workers)
    probs, labels = predict(model, loader, device)
    pred = probs.argmax(1).numpy()
    labels = labels.numpy()
    c = inputs.num_class
    total = np.bincount(labels, minlength=c).astype(np.int64)
    correct = np.bincount(labels[pred == labels], minlength=c).astype(np.int64)
    confusion = None
    if c <= CONFUSION_PNG_MAX_CLASSES:
        confusion = np.bincount(labels * c + pred, minlength=c * c).reshape(c, c).astype(np.int64)
    return correct, total, confusion


def save_confusion_png(confusion, path, title):
    """Row-normalised confusion matrix (rows: true class) as a PNG, written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from utils import atomic_write
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * len(rows), 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title, fontsize=9)
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)


def per_class_csv(counts, gen_counts, groups, total, report, dropped):
    lines = ['class,train_count,generated_count,filtered_out,group,test_count,accuracy']
    for c, acc in enumerate(report['per_class']):
        lines.append(f'{c},{counts[c]},{gen_counts[c]},'
                     f'{"" if dropped is None else dropped[c]},{groups[c]},{total[c]},'
                     f'{"" if acc is None else f"{acc:.6f}"}')
    return '\n'.join(lines) + '\n'


def run_record(cfg, synthetic, gen_counts, epochs):
    """The configuration part of the eval.jsonl record."""
    mode = 'ce' if synthetic is None else 'cas' if cfg.synthetic_only else 'ce+synthetic'
    rec = {'kind': 'classify', 'mode': mode, 'logdir': cfg.logdir, 'data_type': cfg.data_type,
           'imb_factor': cfg.imb_factor, 'imb_type': cfg.imb_type, 'arch': cfg.cls_arch,
           'epochs': epochs, 'batch_size': cfg.cls_batch_size, 'lr': cfg.cls_lr,
           'wd': cfg.cls_wd, 'momentum': cfg.cls_momentum, 'warmup': cfg.cls_warmup,
           'milestones': sorted(cfg.cls_milestones), 'gamma': cfg.cls_gamma, 'seed': cfg.seed,
           'img_size': cfg.img_size, 'many_shot': cfg.many_shot, 'few_shot': cfg.few_shot,
           'num_generated': int(gen_counts.sum())}
    if synthetic is not None:
        rec.update(synthetic=synthetic['path'], synthetic_weight=cfg.synthetic_weight,
                   synthetic_filter=cfg.synthetic_filter)
        if cfg.synthetic_filter:
            rec.update(filter_threshold=cfg.filter_threshold,
                       filtered_out=synthetic['dropped'].tolist())
    if synthetic is not None and cfg.synthetic_logdir:
        # the generator's evaluation keys, so collect_results.py can put its FID beside
        rec.update(generator=os.path.basename(os.path.normpath(cfg.synthetic_logdir)),
                   synthetic_logdir=cfg.synthetic_logdir, ckpt_step=cfg.ckpt_step,
                   sample_method=cfg.sample_method, omega=cfg.omega, sampler=cfg.sampler,
                   synthetic_fill=str(cfg.synthetic_fill))
    return rec


def evaluate_and_report(cfg, model, inputs, synthetic, gen_counts, device, writer, epochs):
    """Score on the test split; write results.txt, per_class.csv, confusion.png (up to 200
    classes), tensorboard test/*, one eval.jsonl record (last: it marks the run complete)."""
    out = cfg.logdir
    counts = inputs.real.class_counts
    correct, total, confusion = test_results(cfg, model, inputs, device)
    report = accuracy_report(correct, total, counts, cfg.many_shot, cfg.few_shot)
    groups = class_groups(counts, cfg.many_shot, cfg.few_shot)
    dropped = None if synthetic is None else synthetic['dropped']
    rec = run_record(cfg, synthetic, gen_counts, epochs)
    rec.update({k: v for k, v in report.items() if k != 'per_class'},
               test_images=int(total.sum()))

    def pct(v):
        return '-' if v is None else f'{100 * v:.2f}'
    text = (f'{rec["mode"]} {cfg.data_type} imb {cfg.imb_factor} {cfg.cls_arch} {epochs} epochs'
            f' ({int(gen_counts.sum())} generated images): top-1 {pct(report["top1"])}, many '
            f'{pct(report["top1_many"])} ({report["classes_many"]} classes), medium '
            f'{pct(report["top1_medium"])} ({report["classes_medium"]}), few '
            f'{pct(report["top1_few"])} ({report["classes_few"]})\n')
    print(text, end='')
    for key in ('top1',) + tuple(f'top1_{g}' for g in GROUPS):
        if report[key] is not None:
            writer.add_scalar(f'test/{key}', report[key], epochs)
    written = ['results.txt', 'per_class.csv']
    save_text(os.path.join(out, 'results.txt'), text)
    save_text(os.path.join(out, 'per_class.csv'),
              per_class_csv(counts, gen_counts, groups, total, report, dropped))
    if confusion is not None:
        save_confusion_png(confusion, os.path.join(out, 'confusion.png'), text.strip())
        written.append('confusion.png')
    append_jsonl(os.path.join(out, 'eval.jsonl'), rec)
    written.append('eval.jsonl')
    print(f'wrote {", ".join(written)}, tensorboard events and checkpoints to {out}')
    return rec
