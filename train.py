"""The training loop: from scratch, fine-tuning, resuming; single process, DataParallel or DDP.

`train(cfg)` takes a plain namespace of the flags (see main.py) and never reads absl FLAGS.
Determinism: every random draw of a step (batch order, flips, augmentation, t, eps, label
dropout, y_bal, dropout masks) comes from the torch RNG or from (seed, epoch), and the RNG states
are saved in every checkpoint, so on CPU a resumed run reproduces the straight run bitwise.
"""
import copy
import datetime
import os
import random
import sys
import types

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from augment import AugmentPipe
from checkpoint import ckpt_path, load_checkpoint, load_model_state, save_checkpoint
from dataset import build_dataset, data_identity, one_class_note
from diffusion import EMA, GaussianDiffusionTrainer, autocast
from factory import build_model, build_sampler, compile_model
from grids import draw_grid, grid_layout, grid_noise, save_grid_png
from runfolder import (StepBatchSampler, StopRequest, check_data_record,
                       newest_loadable_checkpoint, remove_stale_temporaries, rng_state,
                       set_rng_state, write_data_record)
from utils import UserError, check_writable_dir, get_device, save_text


# ---------------------------------------------------------------------------------------------
# building blocks

def warmup_lambda(warmup):
    return lambda step: min(step, warmup) / warmup if warmup > 0 else 1.0


def same_shape_or(saved, fresh):
    """The grid noise saved in a checkpoint, or `fresh` when --sample_size or --img_size changed
    since (the grid's labels follow the current flags)."""
    if saved is None or tuple(saved.shape) != tuple(fresh.shape):
        return fresh
    return saved.cpu()


def grid_method(cfg):
    return cfg.sample_method if cfg.conditional else 'uncond'


# ---------------------------------------------------------------------------------------------
# distributed set-up

def setup_distributed():
    """(rank, world_size, device) from torchrun's environment; single process otherwise."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size == 1:
        return 0, 1, get_device()
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if dist.is_initialized():
        device = torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
        return rank, world_size, device
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
        backend = 'nccl'
    else:
        device = torch.device('cpu')
        backend = 'gloo'
    # rank 0 may evaluate 50k samples while the others wait at a barrier
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return rank, world_size, device


class TrainingDiverged(UserError):
    pass


def load_training_state(ckpt, path, net_model, ema_model, optim, sched, scaler=None):
    """Weights, EMA, optimiser and scheduler (and the fp16 scaler) from a checkpoint."""
    load_model_state(net_model, ckpt['net_model'], path)
    load_model_state(ema_model, ckpt['ema_model'], path)
    optim.load_state_dict(ckpt['optim'])
    sched.load_state_dict(ckpt['sched'])
    if scaler is not None and 'scaler' in ckpt:
        scaler.load_state_dict(ckpt['scaler'])


# ---------------------------------------------------------------------------------------------
# the run

def run_dirs(cfg):
    """(folder written by this run, folder of the pretrained run or None)."""
    if not cfg.finetune:
        return cfg.logdir, None
    if not cfg.finetuned_logdir:
        raise UserError('--finetune needs --finetuned_logdir (the folder of the fine-tuned run)')
    out = cfg.finetuned_logdir
    if os.sep not in out and not os.path.isabs(out):
        out = os.path.join(os.path.dirname(os.path.abspath(cfg.logdir)), out)
    return out, cfg.logdir


def prepare(cfg):
    """Phase 1: the process group, the run folders (checked, not created) and the data set,
    checked against the run folder's record when resuming. Returns a namespace that the later
    phases fill in."""
    rank, world_size, device = setup_distributed()
    out_dir, pretrained_dir = run_dirs(cfg)
    if cfg.batch_size % world_size:
        raise UserError(f'--batch_size {cfg.batch_size} must be divisible by the number of '
                        f'processes ({world_size})')
    if rank == 0:
        for folder in (out_dir, os.path.join(out_dir, 'sample')):
            check_writable_dir(folder, 'finetuned_logdir' if cfg.finetune else 'logdir')
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    dataset = build_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.imb_factor, cfg.imb_type,
                            train=True, download=cfg.download, hflip=True,
                            list_file=cfg.list_file)
    # flips are drawn per batch, reproducibly; --augm draws its own x-flip (the public pipeline
    # replaces the plain flip), so there is no other flip then
    flip_batches, dataset.hflip = dataset.hflip and not cfg.augm, False
    if len(dataset) < cfg.batch_size:
        raise UserError(f'--batch_size {cfg.batch_size} is larger than the data set '
                        f'({len(dataset)} images); lower --batch_size')
    data = data_identity(dataset, cfg.data_type, cfg.root, cfg.imb_factor, cfg.imb_type)
    check_data_record(out_dir, data, cfg.resume,
                      '--finetuned_logdir' if cfg.finetune else '--logdir', verbose=rank == 0)
    if rank == 0:
        counts = dataset.class_counts
        print(f'{cfg.data_type}: {len(dataset)} images, {dataset.num_class} classes, per-class '
              f'counts {counts.max()}..{counts.min()}: {counts.tolist()}')
        if single := one_class_note(dataset, cfg.data_type, cfg.root):
            print(f'warning: {single}; the model learns it alone (labels and --cb change '
                  f'nothing)', file=sys.stderr)
    return types.SimpleNamespace(
        rank=rank, world_size=world_size, device=device, is_main=rank == 0, out_dir=out_dir,
        pretrained_dir=pretrained_dir, dataset=dataset, flip_batches=flip_batches,
        num_class=dataset.num_class, data=data, last_grid=None)


def build_state(cfg, run):
    """Phase 2: UNet, EMA copy, optimiser, warm-up schedule, fp16 scaler and the grid's fixed
    noise and labels, all fresh."""
    run.net_model = build_model(cfg, run.num_class).to(run.device)
    run.ema_model = copy.deepcopy(run.net_model).eval()
    for p in run.ema_model.parameters():
        p.requires_grad_(False)
    run.ema = EMA(run.ema_model, run.net_model)
    run.optim = torch.optim.Adam(run.net_model.parameters(), lr=cfg.lr)
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.optim, lr_lambda=warmup_lambda(cfg.warmup))
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=(cfg.amp == 'fp16'))
    run.fixed_x_T = grid_noise(cfg.seed, cfg.sample_size, cfg.img_size)
    run.fixed_y, run.per_row = grid_layout(run.num_class, cfg.sample_size, cfg.conditional)


def warm_start_step(cfg):
    """N when this run starts from ckpt_N.pt's EMA weights: --finetune, or --ckpt_step N > 0
    without it (the public code's warm start); None otherwise."""
    return cfg.ckpt_step if cfg.finetune or cfg.ckpt_step > 0 else None


def start_from_ema(run, ckpt, path):
    """The public code's start of a fine-tune or warm start: the trained network and its EMA
    copy both := the checkpoint's EMA weights. The optimiser, warm-up schedule and fp16 scaler
    stay the fresh ones of build_state (lr = --lr, warm-up counted from this run's first step)."""
    load_model_state(run.net_model, ckpt['ema_model'], path)
    load_model_state(run.ema_model, ckpt['ema_model'], path)


def honour_lr(cfg, run):
    """On resume, a --lr other than the checkpoint's replaces it at the saved warm-up position
    (the scheduler's base_lrs and the param groups' lr; Adam's moments are kept)."""
    saved = list(run.sched.base_lrs)
    if all(lr == cfg.lr for lr in saved):
        return
    run.sched.base_lrs = [cfg.lr] * len(saved)
    for group, factor in zip(run.optim.param_groups, run.sched.lr_lambdas):
        group['initial_lr'] = cfg.lr
        group['lr'] = cfg.lr * factor(run.sched.last_epoch)
    run.sched._last_lr = [group['lr'] for group in run.optim.param_groups]
    if run.is_main:
        print(f'--lr {cfg.lr} replaces the checkpoint\'s {saved[0]} from here on (warm-up '
              f'position {run.sched.last_epoch} kept)')


def check_checkpoint_data(path, ckpt, data):
    """UserError when the checkpoint records training data other than `data`
    (dataset.data_identity): a checkpoint left from before a --noresume run on other data is
    newer than the new run's own and would otherwise be resumed silently."""
    recorded = ckpt.get('data_sha256')
    if recorded is not None and recorded != data['items_sha256']:
        raise UserError(f'checkpoint {path} was trained on other data than this run (left from '
                        f'before a --noresume start on other data?); move it away, use another '
                        f'--logdir, or pass --noresume')


def restore(cfg, run):
    """Phase 3: where to start. Resume (the newest loadable checkpoint of the run folder) wins;
    else --finetune starts from the pretrained run's ckpt_{ckpt_step}.pt and --ckpt_step N > 0
    (without --finetune) from the run folder's own ckpt_N.pt, both from its EMA weights with
    steps numbered on from N (see start_from_ema); else training starts from scratch. A warm
    start resumes only from a checkpoint newer than N. Sets first_step, end_step, start,
    last_saved and last_saved_path, and the RNG states."""
    warm = warm_start_step(cfg)
    run.first_step = 0 if warm is None else warm + 1
    # fine-tuning trains total_steps more steps; a warm start continues its run up to total_steps
    run.end_step = run.first_step + cfg.total_steps if cfg.finetune else cfg.total_steps
    run.start = run.first_step
    run.last_saved, run.last_saved_path = None, None
    resumed = newest_loadable_checkpoint(run.out_dir, verbose=run.is_main) if cfg.resume else None
    if resumed and not cfg.finetune and warm is not None and resumed[1]['step'] <= warm:
        resumed = None  # the run folder holds nothing newer than the warm start's own source
    if resumed:
        path, ckpt = resumed
        check_checkpoint_data(path, ckpt, run.data)
        load_training_state(ckpt, path, run.net_model, run.ema_model, run.optim, run.sched,
                            run.scaler)
        honour_lr(cfg, run)
        run.fixed_x_T = same_shape_or(ckpt.get('fixed_x_T'), run.fixed_x_T)
        run.start = ckpt['step'] + 1
        if run.is_main:
            print(f'resuming from {path} at step {run.start}')
        if 'rng' in ckpt:
            if run.world_size == 1:
                set_rng_state(ckpt['rng'])
            else:
                torch.manual_seed(cfg.seed + run.rank + run.start)
    elif warm is not None:
        if run.first_step >= run.end_step:
            raise UserError(f'--ckpt_step {warm}: a warm start trains up to --total_steps '
                            f'{cfg.total_steps} (step numbers of the run it continues); raise '
                            f'--total_steps above {warm + 1}')
        path = ckpt_path(run.pretrained_dir if cfg.finetune else run.out_dir, warm)
        ckpt = load_checkpoint(path)
        start_from_ema(run, ckpt, path)
        run.fixed_x_T = same_shape_or(ckpt.get('fixed_x_T'), run.fixed_x_T)
        if run.is_main:
            what = 'fine-tuning' if cfg.finetune else 'warm start from'
            print(f'{what} {path} (its EMA weights, new Adam and warm-up, lr {cfg.lr}): steps '
                  f'{run.first_step}..{run.end_step - 1} into {run.out_dir}')
    if resumed or warm is not None:
        run.last_saved, run.last_saved_path = run.start - 1, path


def build_loop(cfg, run, flags_text):
    """Phase 4: the run folder (created only now that every input has been checked), the
    trainer over the possibly distributed / compiled UNet, the grid sampler, augmentation, the
    step-indexed data loader and the tensorboard writer."""
    if run.is_main:
        os.makedirs(os.path.join(run.out_dir, 'sample'), exist_ok=True)
        remove_stale_temporaries(run.out_dir)
        write_data_record(run.out_dir, run.data)
        save_text(os.path.join(run.out_dir, 'flagfile.txt'), flags_text)
    model = run.net_model
    if run.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            run.net_model, device_ids=[run.device.index] if run.device.type == 'cuda' else None,
            find_unused_parameters=cfg.conditional or cfg.augm)
    elif cfg.parallel and torch.cuda.device_count() > 1:
        model = torch.nn.DataParallel(run.net_model)
    if cfg.compile:
        model = compile_model(model)
    run.trainer = GaussianDiffusionTrainer(
        model, cfg.beta_1, cfg.beta_T, cfg.T, num_class=run.num_class, cfg=cfg.cfg, cb=cfg.cb,
        tau=cfg.tau, weight=run.dataset.class_weights, finetune=cfg.finetune).to(run.device)
    run.sampler = build_sampler(cfg, run.ema_model, run.num_class, 'grid').to(run.device)
    run.augment = AugmentPipe() if cfg.augm else None
    loader = DataLoader(
        run.dataset, num_workers=cfg.num_workers, pin_memory=run.device.type == 'cuda',
        batch_sampler=StepBatchSampler(len(run.dataset), cfg.batch_size, cfg.seed, run.start,
                                       run.rank, run.world_size),
        generator=torch.Generator(), persistent_workers=False)
    run.batches = iter(loader)
    run.writer = None
    if run.is_main:
        from tensorboardX import SummaryWriter
        run.writer = SummaryWriter(run.out_dir)


def save(cfg, run, step):
    """Checkpoint `step` (rank 0 writes; every rank waits). Refuses non-finite weights."""
    if run.is_main:
        for name, m in (('net_model', run.net_model), ('ema_model', run.ema_model)):
            if not all(torch.isfinite(v).all() for v in m.state_dict().values()
                       if v.is_floating_point()):
                raise TrainingDiverged(f'step {step}: {name} has non-finite weights; not '
                                       f'saving. Last good checkpoint: {run.last_saved_path}')
        state = {
            'net_model': run.net_model.state_dict(), 'ema_model': run.ema_model.state_dict(),
            'sched': run.sched.state_dict(), 'optim': run.optim.state_dict(), 'step': step,
            'fixed_x_T': run.fixed_x_T, 'fixed_y': run.fixed_y, 'rng': rng_state(),
            'scaler': run.scaler.state_dict(), 'class_counts': run.dataset.class_counts,
            'data_sha256': run.data['items_sha256'],
        }
        run.last_saved_path = save_checkpoint(state, run.out_dir, step, keep=cfg.keep_ckpt)
    run.last_saved = step
    if run.world_size > 1:
        dist.barrier()


def save_grid(cfg, run, step):
    """The EMA model's class-per-row grid of the fixed noise, as sample/{step}.png."""
    run.ema_model.eval()
    path = os.path.join(run.out_dir, 'sample', f'{step}.png')
    images = draw_grid(run.sampler, run.fixed_x_T.to(run.device), run.fixed_y, grid_method(cfg),
                       cfg.omega, cfg.batch_size, cfg.seed)
    run.last_grid = save_grid_png(images, run.per_row, path)


def train_step(cfg, run, step):
    """One optimisation step on the next batch: (loss, loss_ddpm, loss_reg) as 0-d tensors.
    Stops the run (TrainingDiverged, nothing saved) on a non-finite loss or gradient."""
    run.net_model.train()
    x_0, y_0 = next(run.batches)
    x_0 = x_0.to(run.device, non_blocking=True)
    y_0 = y_0.to(run.device, non_blocking=True) if cfg.conditional else None
    if run.flip_batches:
        flip = torch.rand(x_0.shape[0]) < 0.5
        x_0 = torch.where(flip.to(run.device).view(-1, 1, 1, 1), x_0.flip(-1), x_0)
    augm = None
    if run.augment is not None:
        x_0, augm = run.augment(x_0)
    with autocast(run.device, cfg.amp):
        loss_ddpm, loss_reg = run.trainer(x_0, y_0, augm)
        loss_ddpm, loss_reg = loss_ddpm.mean(), loss_reg.mean()
        loss = loss_ddpm + loss_reg
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f'step {step}: the loss is {loss.item()}; training stopped without saving. '
            f'Last good checkpoint: {run.last_saved_path or "none"}; lower --lr or use '
            f'--amp none, then resume')
    run.optim.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optim)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.net_model.parameters(), cfg.grad_clip)
    if not torch.isfinite(grad_norm) and cfg.amp != 'fp16':
        raise TrainingDiverged(
            f'step {step}: the gradient norm is {grad_norm.item()}; training stopped '
            f'without saving. Last good checkpoint: {run.last_saved_path or "none"}')
    run.scaler.step(run.optim)
    run.scaler.update()
    run.sched.step()
    run.ema.update(cfg.ema_decay)
    return loss, loss_ddpm, loss_reg


def after_step(cfg, run, step, losses, pbar, evaluate_fn):
    """What a step's number asks for: logging, a grid, a checkpoint, an evaluation."""
    if run.is_main:
        if step % 10 == 0:
            for name, value in zip(('loss', 'loss_ddpm', 'loss_reg'), losses):
                run.writer.add_scalar(name, value.item(), step)
            pbar.set_postfix(loss=f'{losses[0].item():.3f}')
        if cfg.sample_step > 0 and step % cfg.sample_step == 0 and step > run.first_step:
            save_grid(cfg, run, step)
    if cfg.save_step > 0 and step % cfg.save_step == 0:
        save(cfg, run, step)
    if cfg.eval_step > 0 and step % cfg.eval_step == 0 and evaluate_fn is not None:
        if run.is_main:
            evaluate_fn(cfg, run.ema_model, run.dataset, step, run.writer, run.out_dir)
        if run.world_size > 1:
            dist.barrier()


def train(cfg, flags_text, evaluate_fn=None):
    """Train (or fine-tune, with cfg.finetune) per the flags; returns the run folder.
    `flags_text` is written to flagfile.txt; `evaluate_fn(cfg, ema_model, dataset, step, writer,
    out_dir)` runs every eval_step."""
    run = prepare(cfg)
    build_state(cfg, run)
    restore(cfg, run)
    if run.start >= run.end_step:
        if run.is_main:
            print(f'{run.out_dir}: training already complete (step {run.start - 1}, '
                  f'end {run.end_step - 1}); nothing to do')
        return run.out_dir
    build_loop(cfg, run, flags_text)
    step = run.start - 1
    with StopRequest() as stop, tqdm(range(run.start, run.end_step),
                                     initial=run.start - run.first_step,
                                     total=run.end_step - run.first_step, dynamic_ncols=True,
                                     disable=not run.is_main) as pbar:
        for step in pbar:
            losses = train_step(cfg, run, step)
            after_step(cfg, run, step, losses, pbar, evaluate_fn)
            if stop.signal:
                if run.last_saved != step:
                    save(cfg, run, step)
                if run.is_main:
                    pbar.close()
                    print(f'{stop.signal}: saved {ckpt_path(run.out_dir, step)}; run the same '
                          f'command again to resume from step {step + 1}')
                break
        else:
            if run.last_saved != step:
                save(cfg, run, step)
            if run.is_main and cfg.sample_step > 0 and step % cfg.sample_step != 0:
                save_grid(cfg, run, step)
    if run.writer is not None:
        run.writer.close()
    if run.is_main:
        print(f'wrote to {run.out_dir}: checkpoint {run.last_saved_path or "none"}, sample grid '
              f'{run.last_grid or "none (--sample_step 0)"}, flags '
              f'{os.path.join(run.out_dir, "flagfile.txt")}')
    if run.world_size > 1:
        dist.destroy_process_group()
    return run.out_dir
