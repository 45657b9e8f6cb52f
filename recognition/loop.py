"""The classifier's training loop (LDAM-DRW's CIFAR protocol by default): SGD with momentum,
linear warm-up, step decay at the milestones; exact resumption from the newest checkpoint of
the run folder; SIGINT/SIGTERM save and stop."""
import hashlib
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import dataset as D
from checkpoint import save_checkpoint
from recognition.data import EpochBatchSampler, TrainingSet, augment, make_loader, synthetic_dataset
from recognition.losses import (LongTailLoss, counts_source, loss_settings, training_settings,
                                uses_cosine_head)
from recognition.models import build_classifier
from recognition.reports import GROUPS, accuracy_report, evaluate_and_report, test_results
from recognition.sources import array_sha256
from runfolder import (StopRequest, check_data_record, load_kind_checkpoint,
                       newest_loadable_checkpoint, rng_state, set_rng_state)
from utils import UserError


def lr_factor(epoch, warmup, milestones, gamma):
    """Multiplier of --cls_lr in epoch `epoch` (0-based), as LDAM-DRW's adjust_learning_rate:
    (epoch + 1) / warmup during the first `warmup` epochs, then gamma ** (number of milestones
    <= epoch); with warmup 5, milestones 160 180 and gamma 0.01: 0.2 .. 1, 1, 0.01, 0.0001."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return gamma ** sum(1 for m in milestones if m <= epoch)


def load_classifier_checkpoint(path):
    """torch.load of a classifier checkpoint; UserError when truncated or foreign."""
    return load_kind_checkpoint(path, 'classifier', 'a classifier checkpoint of main.py --classify')


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
    model = build_classifier(ckpt['arch'], ckpt['num_class'], cosine=ckpt.get('cosine', False))
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt['num_class']


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


def build_criterion(cfg, inputs, gen_counts):
    """The --cls_loss of the run (recognition.losses.LongTailLoss) and the class counts it
    uses: those of the real training set, plus the generated images with
    --cls_counts_with_synthetic, or those of the generated images alone with --synthetic_only."""
    source = counts_source(cfg.synthetic_only, cfg.cls_counts_with_synthetic,
                           int(gen_counts.sum()) > 0)
    counts = {'real': inputs.real.class_counts, 'generated': gen_counts,
              'real+generated': inputs.real.class_counts + gen_counts}[source]
    return LongTailLoss(cfg.cls_loss, counts, cfg.cls_drw_epoch, cfg.cls_la_tau), source


def check_training_data(cfg, real):
    """The identity of the real training set `real` (dataset.data_identity), checked against
    the record of cfg.logdir before anything is written (runfolder.check_data_record): the
    classifier, the filter classifier in LOGDIR/filter_real and the feature stage in
    LOGDIR/feature_diffusion and LOGDIR/feature_aug all train on it."""
    identity = D.data_identity(real, cfg.data_type, cfg.root, cfg.imb_factor, cfg.imb_type)
    check_data_record(cfg.logdir, identity, cfg.resume)
    return identity


def synthetic_identity(synthetic):
    """sha256 (hex) of the generated images and labels a classifier trains on (the `synthetic`
    dict of classify: images, labels), None without them."""
    if synthetic is None:
        return None
    return hashlib.sha256((array_sha256(synthetic['images'])
                           + array_sha256(synthetic['labels'])).encode()).hexdigest()


def check_resumable(path, ckpt, settings):
    """UserError unless the checkpoint was trained with `settings` (losses.training_settings:
    the loss, its parameters, its counts, the re-sampling; and synthetic_sha256, the generated
    images and labels, None without them); a checkpoint written before --cls_loss existed was
    plain cross-entropy without re-sampling and without generated images."""
    saved = ckpt.get('training') or dict(loss_settings('ce', 0, 1.0), loss_counts=None,
                                         resample=False)
    if 'training' in ckpt and 'synthetic_sha256' not in saved:  # written before it was recorded
        print(f'warning: {path} does not record its generated images; resuming without checking '
              f'that they are the same', file=sys.stderr)
        settings = {k: v for k, v in settings.items() if k != 'synthetic_sha256'}
    differ = [k for k in settings if saved.get(k) != settings[k]]
    if 'cls_loss' in differ:  # its parameters differ with it
        differ = [k for k in differ if k in ('cls_loss', 'resample')]
    if differ:
        got = ', '.join(f'{k} {saved.get(k)}' for k in differ)
        want = ', '.join(f'{k} {settings[k]}' for k in differ)
        raise UserError(f'checkpoint {path} was trained with {got}, not {want}; use another '
                        f'--logdir or --noresume')


def new_state(cfg, num_class, device):
    """Model, SGD optimiser and the per-epoch LambdaLR schedule of the protocol."""
    model = build_classifier(cfg.cls_arch, num_class,
                             cosine=uses_cosine_head(cfg.cls_loss)).to(device)
    optim = torch.optim.SGD(model.parameters(), lr=cfg.cls_lr, momentum=cfg.cls_momentum,
                            weight_decay=cfg.cls_wd)
    milestones = sorted(cfg.cls_milestones)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda e: lr_factor(e, cfg.cls_warmup, milestones, cfg.cls_gamma))
    return model, optim, sched


def run_training(cfg, inputs, synthetic, device):
    """Train cfg.cls_epochs epochs into cfg.logdir (resuming from its newest checkpoint), then
    evaluate and write the reports. Returns 'done', 'complete' or 'stopped'."""
    out_dir = cfg.logdir
    os.makedirs(out_dir, exist_ok=True)
    data, weight, gen_counts = build_training(cfg, inputs, synthetic)
    criterion, _ = build_criterion(cfg, inputs, gen_counts)
    settings = training_settings(cfg, int(gen_counts.sum()) > 0)
    # the generated images trained on: a resume with another set (another --omega, another
    # generator, another --synthetic file) would mix two sets in one classifier
    settings['synthetic_sha256'] = synthetic_identity(synthetic)
    # --cls_resample: the real images (the first data.n_real items) are drawn class-balanced
    resample = data.targets[:data.n_real] if cfg.cls_resample and data.n_real else None
    torch.manual_seed(cfg.seed)
    model, optim, sched = new_state(cfg, inputs.num_class, device)
    per_epoch = len(EpochBatchSampler(len(data), cfg.cls_batch_size, cfg.seed, 0).batches())
    epoch, batch, stats = 0, 0, [0.0, 0, 0]
    found = newest_classifier_checkpoint(out_dir) if cfg.resume else None
    if found:
        path, ckpt = found
        check_resumable(path, ckpt, settings)
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
                 'cosine': uses_cosine_head(cfg.cls_loss), 'training': settings,
                 'model': model.state_dict(), 'optim': optim.state_dict(),
                 'sched': sched.state_dict(), 'epoch': epoch, 'batch': batch, 'stats': stats,
                 'rng': rng_state(), 'class_counts': inputs.real.class_counts}
        return save_checkpoint(state, out_dir, epoch * per_epoch + batch, keep=keep)

    with StopRequest() as stop:
        while epoch < cfg.cls_epochs:
            sampler = EpochBatchSampler(len(data), cfg.cls_batch_size, cfg.seed, epoch, batch,
                                        resample_targets=resample)
            loader = make_loader(data, sampler, cfg, device)
            announce_class_weights(criterion, epoch, batch)
            batch, stats = train_epoch(cfg, model, optim, loader, weight, device, epoch, batch,
                                       per_epoch, stats, stop, criterion)
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


def announce_class_weights(criterion, epoch, batch):
    """Print the DRW class weights when they switch on (first batch of the switch epoch)."""
    weights = criterion.class_weights(epoch)
    if weights is not None and epoch == criterion.drw_epoch and batch == 0:
        shown = ', '.join(f'{w:.3g}' for w in weights[:10].tolist())
        print(f'epoch {epoch + 1}: deferred re-weighting from now on, class weights {shown}'
              f'{", ..." if len(weights) > 10 else ""}')


def train_epoch(cfg, model, optim, loader, weight, device, epoch, batch, per_epoch, stats, stop,
                criterion):
    """Batches `batch`.. of one epoch; stops early after the batch in which a signal arrived.
    stats = [loss sum, correct, seen] of the epoch so far; `criterion(logits, y, sample weights,
    epoch)` the loss (recognition.losses.LongTailLoss). Returns (next batch, stats)."""
    model.train()
    pad = cfg.img_size // 8
    hflip = D.allows_hflip(cfg.data_type)
    with tqdm(total=per_epoch, initial=batch, desc=f'epoch {epoch + 1}/{cfg.cls_epochs}',
              dynamic_ncols=True, leave=False) as pbar:
        for x, y, generated in loader:
            x = augment(x, pad, hflip).to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            w = torch.where(generated, weight, 1.0).to(device)
            logits = model(x)
            loss = criterion(logits, y, w, epoch)
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
