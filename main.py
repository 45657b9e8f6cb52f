"""Class-balancing diffusion models: one entry point for training, fine-tuning, sampling,
evaluation and FID statistics. The only module that reads absl FLAGS.

    python main.py --train --flagfile config/cifar100.txt ...
    python main.py --notrain --eval --flagfile LOGDIR/flagfile.txt --ckpt_step N ...
"""
import os
import sys
import types

from absl import app, flags

from dataset import DATA_TYPES, IMB_TYPES
from utils import UserError

FLAGS = flags.FLAGS
# modes
flags.DEFINE_bool('train', False, help='train from scratch (or resume)')
flags.DEFINE_bool('eval', False, help='load ckpt_{ckpt_step}.pt and evaluate FID, IS, P/R')
flags.DEFINE_bool('sample', False, help='load ckpt_{ckpt_step}.pt and save a class-per-row grid '
                  'and the samples (.npy), no metrics')
flags.DEFINE_bool('make_stats', False, help='compute --fid_cache and the reference features')
# UNet
flags.DEFINE_integer('ch', 128, help='base channel of UNet')
flags.DEFINE_multi_integer('ch_mult', [1, 2, 2, 2], help='channel multiplier')
flags.DEFINE_multi_integer('attn', [1], help='add attention to these levels (-1: none)')
flags.DEFINE_integer('num_res_blocks', 2, help='# resblock in each level')
flags.DEFINE_float('dropout', 0.1, help='dropout rate of resblock')
# Gaussian diffusion
flags.DEFINE_float('beta_1', 1e-4, help='start beta value')
flags.DEFINE_float('beta_T', 0.02, help='end beta value')
flags.DEFINE_integer('T', 1000, help='total diffusion steps')
flags.DEFINE_enum('var_type', 'fixedlarge', ['fixedlarge', 'fixedsmall'], help='variance type')
# training
flags.DEFINE_float('lr', 2e-4, help='target learning rate')
flags.DEFINE_float('grad_clip', 1., help='gradient norm clipping')
flags.DEFINE_integer('total_steps', 800000, help='total training steps')
flags.DEFINE_integer('img_size', 32, help='image size')
flags.DEFINE_integer('warmup', 5000, help='learning rate warmup')
flags.DEFINE_integer('batch_size', 128, help='batch size (also the sampling batch at eval)')
flags.DEFINE_integer('num_workers', 4, help='workers of Dataloader')
flags.DEFINE_float('ema_decay', 0.9999, help='ema decay rate')
flags.DEFINE_bool('parallel', False, help='multi gpu training (DataParallel; torchrun uses DDP)')
flags.DEFINE_integer('seed', 0, help='seed of every random draw of training and sampling')
flags.DEFINE_bool('resume', True, help='continue from the newest checkpoint in the run folder')
flags.DEFINE_integer('keep_ckpt', 0, help='keep only the newest K periodic checkpoints (0 = all)')
flags.DEFINE_enum('amp', 'none', ['none', 'bf16', 'fp16'], help='mixed precision (autocast)')
flags.DEFINE_bool('compile', False, help='torch.compile the UNet (falls back with a warning)')
# conditioning and class balancing
flags.DEFINE_bool('conditional', False, help='class-conditional UNet')
flags.DEFINE_bool('augm', False, help='ADA-style augmentation with augmentation conditioning')
flags.DEFINE_bool('cfg', False, help='label dropout for classifier-free guidance')
flags.DEFINE_bool('cb', False, help='class-balancing regulariser')
flags.DEFINE_float('tau', 1.0, help='weight of the class-balancing regulariser')
flags.DEFINE_bool('finetune', False, help='fine-tune LOGDIR/ckpt_{ckpt_step}.pt with --cb')
flags.DEFINE_string('finetuned_logdir', '', help='run folder of the fine-tuned model '
                    '(a bare name is a sibling of --logdir)')
flags.DEFINE_integer('ckpt_step', 0, help='checkpoint step to load (eval, sample, fine-tune)')
# data
flags.DEFINE_string('root', './', help='dataset folder')
flags.DEFINE_enum('data_type', 'cifar100', list(DATA_TYPES), help='data set')
flags.DEFINE_float('imb_factor', 0.01, help='smallest / largest class size')
flags.DEFINE_enum('imb_type', 'exp', list(IMB_TYPES), help='long-tail profile')
flags.DEFINE_string('list_file', '', help='imagenetlt list / inat2018 json (default under --root)')
flags.DEFINE_bool('download', False, help='download CIFAR into --root if missing')
# logging and sampling
flags.DEFINE_string('logdir', './logs/', help='log directory')
flags.DEFINE_integer('sample_size', 64, help='sampling size of images')
flags.DEFINE_integer('sample_step', 10000, help='frequency of sampling')
flags.DEFINE_integer('save_step', 100000, help='frequency of saving checkpoints, 0 to disable')
flags.DEFINE_integer('eval_step', 0, help='frequency of evaluating model, 0 to disable')
flags.DEFINE_enum('sample_method', 'cfg', ['cfg', 'cond', 'uncond'], help='sampling method')
flags.DEFINE_float('omega', 0.0, help='classifier-free guidance strength')
flags.DEFINE_enum('sampler', 'ddpm', ['ddpm', 'ddim'], help='DDPM over all T steps, or DDIM')
flags.DEFINE_integer('sample_steps', 50, help='DDIM steps')
flags.DEFINE_float('eta', 0.0, help='DDIM eta (0 deterministic)')
flags.DEFINE_enum('skip_type', 'quad', ['quad', 'uniform'], help='DDIM step spacing')
# evaluation
flags.DEFINE_integer('num_images', 50000, help='the number of generated images for evaluation')
flags.DEFINE_string('fid_cache', './stats/cifar10.train.npz', help='FID cache (mu, sigma); '
                    'reference features are read from *_feats.npz beside it')
flags.DEFINE_bool('fid_use_torch', False, help='calculate IS and FID on the device')
flags.DEFINE_string('inception_weights', '', help='FID Inception weights file (default: the '
                    'torch hub cache of pytorch-fid)')
flags.DEFINE_string('sample_name', 'saved', help='name for a saved sample set')
flags.DEFINE_bool('sampled', False, help='evaluate the saved sample set instead of sampling')
flags.DEFINE_bool('prd', True, help='PRD F_8 / F_1/8')
flags.DEFINE_bool('improved_prd', True, help='improved precision / recall (k = 5)')
flags.DEFINE_integer('many_shot', 100, help='head classes have more than this many images')
flags.DEFINE_integer('few_shot', 20, help='tail classes have fewer than this many images')

MULTI_FLAGS = ('ch_mult', 'attn')


def expand_argv(argv):
    """Expand --flagfile arguments so that values given on the command line replace the
    flagfiles' values: single-valued flags whatever their position, and multi-valued flags
    (--ch_mult, --attn) instead of being appended to them (absl's behaviour)."""
    args, origins = [], []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ('--flagfile', '-flagfile') and i + 1 < len(argv):
            arg, i = f'--flagfile={argv[i + 1]}', i + 1
        if arg.startswith(('--flagfile=', '-flagfile=')):
            path = arg.split('=', 1)[1]
            if not os.path.isfile(path):
                raise UserError(f'--flagfile {path}: no such file')
            expanded = FLAGS.read_flags_from_files([arg], force_gnu=False)
            args += expanded
            origins += ['file'] * len(expanded)
        else:
            args.append(arg)
            origins.append('cli')
        i += 1

    def name_of(a):
        if not a.startswith('-') or a == '--':
            return None
        return a.lstrip('-').split('=', 1)[0]

    on_cli = {name_of(a) for a, o in zip(args, origins) if o == 'cli'} & set(MULTI_FLAGS)
    from_files, from_cli = [], []
    skip_value = False
    for a, o in zip(args, origins):
        if skip_value:
            skip_value = False
            continue
        if o == 'file' and name_of(a) in on_cli:
            skip_value = '=' not in a  # '--ch_mult 2' style in a flagfile
            continue
        (from_files if o == 'file' else from_cli).append(a)
    # flagfile values first, so that the command line wins wherever the flagfile was named
    kept = from_files + from_cli
    return argv[:1] + kept


def config():
    """The flags as a plain namespace (what the other modules take)."""
    cfg = types.SimpleNamespace(**{name: FLAGS[name].value for name in FLAGS})
    cfg.fid_cache_given = FLAGS['fid_cache'].present > 0
    return cfg


def flags_text():
    return FLAGS.flags_into_string()


def run(argv):
    del argv
    cfg = config()
    import evaluation
    import train
    evaluation.check_flags(cfg)
    if cfg.make_stats:
        evaluation.make_stats(cfg)
    if cfg.train:
        train.train(cfg, flags_text(), evaluate_fn=evaluation.evaluate_during_training)
    if cfg.sample:
        evaluation.sample(cfg)
    if cfg.eval:
        evaluation.evaluate(cfg)
    if not (cfg.train or cfg.eval or cfg.sample or cfg.make_stats):
        raise UserError('nothing to do: pass --train, --eval, --sample or --make_stats')


def main():
    try:
        argv = expand_argv(sys.argv)
        app.run(lambda a: _guarded(run, a), argv=argv, flags_parser=parse_flags)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's parsing, with a bad flag value reported on one line (exit status 2)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f'error: {e}; see python main.py --helpfull', file=sys.stderr)
        sys.exit(2)


def _guarded(fn, argv):
    try:
        fn(argv)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)


if __name__ == '__main__':
    main()
