"""Class-balancing diffusion models: one entry point for training, fine-tuning, sampling,
evaluation and FID statistics. The only module that reads absl FLAGS.

    python main.py --train --flagfile config/cifar100.txt ...
    python main.py --notrain --eval --flagfile LOGDIR/flagfile.txt --ckpt_step N ...
"""
import copy
import math
import os
import sys
import types

from absl import app, flags

from recognition.losses import LOSSES as CLS_LOSSES
from recognition.models import ARCHS as CLS_ARCHS
from recognition.translate import parse_from as parse_translate_from
from dataset import DATA_TYPES, IMB_TYPES, REF_SPLITS
from flagfiles import read_flagfile
from samplers import ETA_SAMPLERS, SAMPLERS, SPACINGS, flag_samplers, use_defaults_text
from utils import UserError

FLAGS = flags.FLAGS
# modes
flags.DEFINE_bool('train', False, help='train from scratch (or resume)')
flags.DEFINE_bool('eval', False, help='load ckpt_{ckpt_step}.pt and evaluate FID, IS, P/R')
flags.DEFINE_bool('sample', False, help='load ckpt_{ckpt_step}.pt and save a class-per-row grid '
                  'and the samples (.npy), no metrics')
flags.DEFINE_bool('make_stats', False, help='compute --fid_cache and the reference features')
flags.DEFINE_bool('classify', False, help='train and evaluate a long-tailed classifier (real '
                  'and/or generated images)')
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
flags.DEFINE_integer('ckpt_step', 0, help='checkpoint step to load (eval, sample, fine-tune; '
                     '--synthetic_logdir: unset = the run\'s newest loadable checkpoint)')
# data
flags.DEFINE_string('root', './', help='dataset folder')
flags.DEFINE_enum('data_type', 'cifar100', list(DATA_TYPES), help='data set')
flags.DEFINE_float('imb_factor', 0.01, help='smallest / largest class size')
flags.DEFINE_enum('imb_type', 'exp', list(IMB_TYPES), help='long-tail profile')
flags.DEFINE_string('list_file', '', help='imagenetlt list / inat2018 json (default under --root)')
flags.DEFINE_string('test_root', '', help='imagefolder: the test split, class subfolders named as '
                    'those of --root (--classify, --make_stats --ref_split test)')
flags.DEFINE_bool('download', False, help='download CIFAR into --root if missing')
# logging and sampling
flags.DEFINE_string('logdir', './logs/', help='log directory')
flags.DEFINE_integer('sample_size', 64, help='sampling size of images')
flags.DEFINE_integer('sample_step', 10000, help='frequency of sampling')
flags.DEFINE_integer('save_step', 100000, help='frequency of saving checkpoints, 0 to disable')
flags.DEFINE_integer('eval_step', 0, help='frequency of evaluating model, 0 to disable')
flags.DEFINE_enum('sample_method', 'cfg', ['cfg', 'cond', 'uncond'], help='sampling method')
flags.DEFINE_float('omega', 0.0, help='classifier-free guidance strength')
flags.DEFINE_enum('sampler', None, list(SAMPLERS) + ['auto'],
                  help='DDPM over all T steps, or DDIM / DPM-Solver++(2M) (ODE or SDE) / UniPC in '
                       '--sample_steps; auto: the recommended fast setting (sampler, steps, '
                       'spacing, eta, clipping: samplers.RECOMMENDED, for generated training sets '
                       'samplers.RECOMMENDED_SYNTHETIC); unset: the default of each use '
                       f'(samplers.USE_DEFAULTS: {use_defaults_text()}; synthetic = --classify\'s '
                       'generated sets)')
flags.DEFINE_integer('sample_steps', 50, help='steps of every sampler but ddpm, in [1, T]')
flags.DEFINE_float('eta', 0.0, help='DDIM eta (0 deterministic); must be 0 for dpm++2m, '
                   'dpm++2m-sde, unipc')
flags.DEFINE_bool('clip_denoised', None, help='clip the predicted x0 to [-1, 1] at every '
                  'sampling step; unset: the default of each use (see --sampler), under --sampler '
                  'auto the recommended setting\'s')
flags.DEFINE_enum('skip_type', 'quad', ['quad', 'uniform'],
                  help='DDIM step spacing when --spacing is auto (kept for older flagfiles)')
flags.DEFINE_enum('spacing', 'auto', ['auto', 'quad', 'uniform', 'default', 'karras', 'lu',
                                      'exponential'],
                  help='step spacing: auto (each sampler\'s best; ddim: --skip_type), ddim: quad, '
                       'uniform; dpm++2m, dpm++2m-sde: default, karras, lu, exponential; unipc: '
                       'default, karras, exponential; ignored by --sampler auto')
# evaluation
flags.DEFINE_integer('num_images', 50000, help='the number of generated images for evaluation')
flags.DEFINE_string('fid_cache', './stats/cifar10.train.npz', help='FID cache (mu, sigma); '
                    'reference features are read from *_feats.npz beside it')
flags.DEFINE_enum('ref_split', 'auto', list(REF_SPLITS), help='images of --make_stats: auto = '
                  'the balanced CIFAR / digits training set, the ImageNet-LT test list and the '
                  'iNaturalist 2018 val json; train or test to choose')
flags.DEFINE_integer('ref_images', 0, help='--make_stats: a seeded random subset of this many '
                     'reference images (0: all of them)')
flags.DEFINE_bool('fid_use_torch', False, help='calculate IS and FID on the device')
flags.DEFINE_string('inception_weights', '', help='FID Inception weights file (default: the '
                    'torch hub cache of pytorch-fid)')
flags.DEFINE_string('sample_name', 'saved', help='name of a sample set: --eval '
                    'writes {method}_{omega}_samples_ema_{sample_name}_N{num_images}_STEP{ckpt_step}'
                    '[_{sampler settings}].npy; --sample writes {sample_name}.png / .npy when it '
                    'is given, else sample_{method}_{omega}_STEP{ckpt_step}[_{sampler settings}]')
flags.DEFINE_list('omega_sweep', [], help='with --eval: evaluate once per omega (e.g. '
                  '0,0.4,0.8,1.2,1.6,2.0) from the same noise; writes a table and a plot and prints '
                  'the best omega by FID')
flags.DEFINE_bool('sampled', False, help='evaluate the saved sample set instead of sampling')
flags.DEFINE_bool('prd', True, help='PRD F_8 / F_1/8')
flags.DEFINE_bool('improved_prd', True, help='improved precision / recall (k = 5)')
flags.DEFINE_integer('many_shot', 100, help='head classes have more than this many images')
flags.DEFINE_integer('few_shot', 20, help='tail classes have fewer than this many images')
flags.DEFINE_integer('min_fid_images', 100, help='per-class and per-group FID only where both '
                     'sides have at least this many images (small sets bias FID upwards)')
# long-tailed classification
flags.DEFINE_enum('cls_arch', 'resnet32', list(CLS_ARCHS), help='classifier: resnet32 (CIFAR '
                  'ResNet-32), a torchvision ResNet (random init), cnn (8x8 digits)')
flags.DEFINE_integer('cls_epochs', 200, help='classifier training epochs')
flags.DEFINE_integer('cls_batch_size', 128, help='classifier batch size')
flags.DEFINE_float('cls_lr', 0.1, help='classifier SGD learning rate')
flags.DEFINE_float('cls_momentum', 0.9, help='classifier SGD momentum')
flags.DEFINE_float('cls_wd', 2e-4, help='classifier weight decay')
flags.DEFINE_integer('cls_warmup', 5, help='linear learning-rate warm-up epochs')
flags.DEFINE_multi_integer('cls_milestones', [160, 180], help='epochs at which the learning '
                           'rate is multiplied by --cls_gamma')
flags.DEFINE_float('cls_gamma', 0.01, help='learning-rate factor at each milestone')
flags.DEFINE_integer('cls_eval_every', 10, help='test top-1 to tensorboard every N epochs '
                     '(0: only at the end)')
flags.DEFINE_string('cls_test_list', '', help='imagenetlt / inat2018 test annotation file '
                    '(default ImageNet_LT_test.txt / val2018.json under --root)')
flags.DEFINE_string('synthetic', '', help='saved sample set (.npy, N x 3 x H x W in [0, 1], '
                    'labels file beside it) added to the classifier training set')
flags.DEFINE_string('synthetic_logdir', '', help='draw generated training images from this '
                    'run\'s newest loadable checkpoint (--ckpt_step N: ckpt_N.pt); '
                    '--sample_method, --omega and the sampler flags default to what the run\'s '
                    'flagfile.txt records')
flags.DEFINE_bool('synthetic_other_data', False, help='--synthetic_logdir: accept a generator '
                  'trained on other data than the classifier\'s (--data_type, --imb_factor, '
                  '--imb_type, imagefolder --root, --list_file)')
flags.DEFINE_enum('synthetic_source', 'generate', ['generate', 'translate'], help='images '
                  'from --synthetic_logdir: generate (from noise) or translate (real images of '
                  'other classes, --translate_from, noised to --translate_strength and denoised '
                  'with the target class: SDEdit head to tail)')
flags.DEFINE_float('translate_strength', 0.5, help='translate: noise level to start from, a '
                   'fraction of T in (0, 1] (small: close to the source image; 1: ignores it)')
flags.DEFINE_string('translate_from', 'many', help='translate: source classes, many / medium / '
                    'few joined by + (groups by --many_shot / --few_shot), all, or class indices '
                    '0,1,2')
flags.DEFINE_string('synthetic_fill', 'head', help='images drawn per class: head (up to the '
                    'largest class) or an integer N per class')
flags.DEFINE_float('synthetic_weight', 1.0, help='loss weight of generated images')
flags.DEFINE_bool('synthetic_only', False, help='train on generated images alone (CAS)')
flags.DEFINE_bool('synthetic_filter', False, help='keep generated images that a real-data '
                  'classifier assigns to their class with probability >= --filter_threshold')
flags.DEFINE_string('filter_logdir', '', help='--classify run folder of the filtering '
                    'classifier (default: trained first into LOGDIR/filter_real)')
flags.DEFINE_float('filter_threshold', 0.5, help='--synthetic_filter probability threshold')
flags.DEFINE_enum('cls_loss', 'ce', list(CLS_LOSSES), help='classifier loss: ce, ce_drw (deferred '
                  're-weighting), ldam_drw (LDAM margins, cosine head, DRW), balanced_softmax, '
                  'logit_adjust')
flags.DEFINE_integer('cls_drw_epoch', 160, help='ce_drw / ldam_drw: 0-based epoch from which the '
                     'effective-number class weights apply')
flags.DEFINE_float('cls_la_tau', 1.0, help='logit_adjust: tau of the tau * log(prior) offset')
flags.DEFINE_bool('cls_resample', False, help='class-balanced re-sampling of the real training '
                  'images (each class drawn equally often)')
flags.DEFINE_bool('cls_counts_with_synthetic', False, help='the class counts of --cls_loss count '
                  'the generated training images too (default: the real ones only)')

# feature-level augmentation of the classifier (--classify --feature_aug)
flags.DEFINE_bool('feature_aug', False, help='after --classify: train a class-conditional '
                  'diffusion model on the classifier\'s penultimate features (--cb --tau --cfg '
                  'apply), draw features up to the head\'s count (--synthetic_fill) and '
                  're-train the last layer on real + drawn features; results in LOGDIR/feature_aug')
flags.DEFINE_string('feature_classifier_logdir', '', help='--feature_aug on the classifier of '
                    'this finished --classify run (nothing is trained but the feature stage)')
flags.DEFINE_enum('feat_source', 'diffusion', ['diffusion', 'none'], help='--feature_aug: '
                  'features from the feature diffusion model, or none: re-train the last layer '
                  'on real features with class-balanced sampling (cRT, the control)')
flags.DEFINE_integer('feat_steps', 2000, help='feature diffusion training steps')
flags.DEFINE_float('feat_lr', 1e-3, help='feature diffusion Adam learning rate (cosine decay)')
flags.DEFINE_integer('feat_batch_size', 256, help='feature diffusion batch size')
flags.DEFINE_integer('feat_width', 256, help='feature denoiser (MLP) width')
flags.DEFINE_integer('feat_blocks', 3, help='feature denoiser residual blocks')
flags.DEFINE_float('feat_ema_decay', 0.995, help='feature diffusion EMA decay')
flags.DEFINE_integer('feat_save_step', 1000, help='feature diffusion checkpoint frequency (0: '
                     'only at the end)')
flags.DEFINE_integer('feat_head_epochs', 30, help='--feature_aug: epochs of the new last layer')
flags.DEFINE_float('feat_head_lr', 0.1, help='--feature_aug: SGD learning rate of the new last '
                   'layer (cosine decay; on standardised features)')

MULTI_FLAGS = ('ch_mult', 'attn', 'cls_milestones')


# ---------------------------------------------------------------------------------------------
# The domain of every flag whose type does not already bound it, declared once and checked as
# the flags are parsed, before anything is read or written: a value outside ends the run with
# one line naming the flag (exit status 2).

def _finite(v):
    return math.isfinite(v)


def _at_least(lo):
    return f'>= {lo}', lambda v: v >= lo


def _in_open_unit():
    return 'in (0, 1)', lambda v: 0 < v < 1


def _finite_at_least_0():
    return 'finite and >= 0', lambda v: _finite(v) and v >= 0


def _finite_positive():
    return 'finite and > 0', lambda v: _finite(v) and v > 0


FLAG_DOMAINS = {
    # UNet
    'ch': ('a positive multiple of 32 (GroupNorm uses 32 groups)', lambda v: v >= 32 and v % 32 == 0),
    'ch_mult': ('one or more entries, each >= 1', lambda v: len(v) >= 1 and min(v) >= 1),
    'attn': ('entries >= -1 (-1: no attention)', lambda v: all(a >= -1 for a in v)),
    'num_res_blocks': _at_least(1),
    'dropout': ('in [0, 1)', lambda v: 0 <= v < 1),
    # diffusion
    'beta_1': _in_open_unit(),
    'beta_T': _in_open_unit(),
    'T': _at_least(1),
    # training
    'lr': _finite_positive(),
    'grad_clip': _finite_positive(),
    'total_steps': _at_least(1),
    'img_size': _at_least(1),
    'warmup': _at_least(0),
    'batch_size': _at_least(1),
    'num_workers': _at_least(0),
    'ema_decay': ('in [0, 1]', lambda v: 0 <= v <= 1),
    'seed': ('in [0, 2^31)', lambda v: 0 <= v < 2 ** 31),
    'keep_ckpt': _at_least(0),
    # conditioning and class balancing
    'tau': _finite_at_least_0(),
    'ckpt_step': _at_least(0),
    # data
    'imb_factor': ('in (0, 1] (smallest / largest class size, e.g. 0.01)', lambda v: 0 < v <= 1),
    # logging and sampling
    'sample_size': _at_least(1),
    'sample_step': _at_least(0),
    'save_step': _at_least(0),
    'eval_step': _at_least(0),
    'omega': _finite_at_least_0(),
    'sample_steps': _at_least(1),
    'eta': ('in [0, 1]', lambda v: 0 <= v <= 1),
    'omega_sweep': ('a comma-separated list of finite numbers >= 0',
                    lambda v: all(math.isfinite(float(w)) and float(w) >= 0 for w in v)),
    'sample_name': ('a non-empty file-name part without a path separator',
                    lambda v: bool(v) and os.sep not in v and '/' not in v),
    # evaluation
    'num_images': _at_least(1),
    'ref_images': _at_least(0),
    'many_shot': _at_least(0),
    'few_shot': _at_least(0),
    'min_fid_images': _at_least(2),
    # long-tailed classification
    'cls_epochs': _at_least(1),
    'cls_batch_size': ('>= 2 (BatchNorm needs two images per batch)', lambda v: v >= 2),
    'cls_lr': _finite_positive(),
    'cls_momentum': ('in [0, 1)', lambda v: 0 <= v < 1),
    'cls_wd': _finite_at_least_0(),
    'cls_warmup': _at_least(0),
    'cls_milestones': ('epochs, each >= 1', lambda v: all(m >= 1 for m in v)),
    'cls_gamma': ('in (0, 1]', lambda v: 0 < v <= 1),
    'cls_eval_every': _at_least(0),
    'synthetic_weight': _finite_at_least_0(),
    'filter_threshold': ('in [0, 1]', lambda v: 0 <= v <= 1),
    'cls_drw_epoch': _at_least(0),
    'cls_la_tau': _finite_at_least_0(),
    'translate_strength': ('in (0, 1] (a fraction of T)', lambda v: 0 < v <= 1),
    'translate_from': ('many, medium, few joined by +, all, or comma-separated class indices',
                       lambda v: parse_translate_from(v) is not None),
    'synthetic_fill': ('head or an integer >= 1',
                       lambda v: v == 'head' or (v.isdigit() and int(v) >= 1)),
    # feature-level augmentation
    'feat_steps': _at_least(1),
    'feat_lr': _finite_positive(),
    'feat_batch_size': _at_least(1),
    'feat_width': ('an even number >= 2 (sin and cos pairs of the time embedding)',
                   lambda v: v >= 2 and v % 2 == 0),
    'feat_blocks': _at_least(1),
    'feat_ema_decay': ('in [0, 1]', lambda v: 0 <= v <= 1),
    'feat_save_step': _at_least(0),
    'feat_head_epochs': _at_least(1),
    'feat_head_lr': _finite_positive(),
}

# domains that tie several flags together: (flags, what must hold, check of their values)
CROSS_DOMAINS = [
    (('beta_1', 'beta_T'), '--beta_1 must be smaller than --beta_T',
     lambda f: f['beta_1'] < f['beta_T']),
    (('img_size', 'ch_mult'), '--img_size must be divisible by 2^(levels - 1) for the levels '
     'of --ch_mult', lambda f: f['img_size'] % 2 ** (len(f['ch_mult']) - 1) == 0),
    (('attn', 'ch_mult'), '--attn levels must index --ch_mult (0 .. levels - 1, or -1)',
     lambda f: all(a < len(f['ch_mult']) for a in f['attn'])),
    # --sampler unset: the rules hold for the default sampler of every use; auto: they do not
    # apply (it takes steps, spacing and eta from samplers.recommended(use))
    (('sample_steps', 'T', 'sampler'), '--sample_steps must be <= --T for a sampler other than '
     'ddpm', lambda f: all(s == 'ddpm' or f['sample_steps'] <= f['T']
                           for s in flag_samplers(f['sampler']))),
    (('spacing', 'sampler'), '--spacing must be one that the sampler offers (with --sampler '
     'unset: the default sampler of each use, ddpm: auto only): '
     + '; '.join(f'{k}: {", ".join(v)}' for k, v in SPACINGS.items()),
     lambda f: all(f['spacing'] in SPACINGS[s] for s in flag_samplers(f['sampler']))),
    (('spacing', 'T'), '--spacing lu needs --T >= 2 (a grid uniform in log-SNR needs two noise '
     'levels); use --spacing default at --T 1', lambda f: f['spacing'] != 'lu' or f['T'] >= 2),
    (('eta', 'sampler'), '--eta must be 0 for --sampler dpm++2m, dpm++2m-sde and unipc (the '
     'solvers; dpm++2m-sde draws its own noise)',
     lambda f: all(s in ETA_SAMPLERS or f['eta'] == 0 for s in flag_samplers(f['sampler']))),
    (('few_shot', 'many_shot'), '--few_shot must be <= --many_shot',
     lambda f: f['few_shot'] <= f['many_shot']),
    (('cls_resample', 'synthetic_only'), '--cls_resample re-samples the real training images; '
     '--synthetic_only trains without them', lambda f: not (f['cls_resample'] and
                                                            f['synthetic_only'])),
    (('feature_aug', 'classify'), '--feature_aug needs --classify (it re-trains the '
     'classifier\'s last layer)', lambda f: f['classify'] or not f['feature_aug']),
    (('feature_classifier_logdir', 'feature_aug'), '--feature_classifier_logdir needs '
     '--feature_aug', lambda f: f['feature_aug'] or not f['feature_classifier_logdir']),
]


def register_domains():
    """Attach FLAG_DOMAINS and CROSS_DOMAINS to absl's validators (run at every parse)."""
    for name, (text, check) in FLAG_DOMAINS.items():
        flags.register_validator(name, _guard(check), message=f'--{name} must be {text}')
    for names, text, check in CROSS_DOMAINS:
        flags.register_multi_flags_validator(list(names), _guard(check), message=text)


def _guard(check):
    """A check that answers False, not an exception, on values it cannot compare (None)."""
    def guarded(value):
        try:
            return bool(check(value))
        except (TypeError, ValueError, OverflowError):
            return False
    return guarded


register_domains()


# Flags that the public CBDM main.py defines and this implementation does not use (the union
# over every stored version of qym7/CBDM-pytorch's main.py; all its other flags are ours, same
# names). A flagfile it wrote holds them (--nocotrain, --num_class=100, ...): they are dropped
# before parsing, with one warning line, and never defined here. 'bool': --name / --noname /
# --name=true|false; 'value': --name=V or --name V.
PUBLIC_ONLY_FLAGS = {'improve': 'bool', 'weight': 'bool', 'cotrain': 'bool', 'logit': 'bool',
                     'num_class': 'value', 'private_num_images': 'value'}
# the public-only flags that take a value ('--num_class' then '100' on the next flagfile line)
PUBLIC_VALUE_FLAGS = frozenset(n for n, kind in PUBLIC_ONLY_FLAGS.items() if kind == 'value')


def public_only_flag(arg):
    """The PUBLIC_ONLY_FLAGS name that the command-line argument `arg` sets, else None (also
    for a name that main.py defines itself: ours wins)."""
    if not arg.startswith('-') or arg == '--':
        return None
    name, has_value = arg.lstrip('-').split('=', 1)[0], '=' in arg
    if not has_value and name.startswith('no') and PUBLIC_ONLY_FLAGS.get(name[2:]) == 'bool':
        name = name[2:]
    return name if name in PUBLIC_ONLY_FLAGS and name not in FLAGS else None


def drop_public_only_flags(args, origins):
    """(args, origins) without the public-only flags (and the value after a '--name V'); prints
    one warning line naming the dropped flags. Stops at '--' (positional arguments follow)."""
    kept, kept_origins, dropped = [], [], set()
    i = 0
    while i < len(args):
        if args[i] == '--':
            kept += args[i:]
            kept_origins += origins[i:]
            break
        name = public_only_flag(args[i])
        if name is None:
            kept.append(args[i])
            kept_origins.append(origins[i])
        else:
            dropped.add(name)
            if (PUBLIC_ONLY_FLAGS[name] == 'value' and '=' not in args[i] and i + 1 < len(args)
                    and origins[i + 1] == origins[i] and not args[i + 1].startswith('--')):
                i += 1  # '--num_class 100': its value goes too
        i += 1
    if dropped:
        print('warning: ignoring flags of the public CBDM code that this implementation does not '
              'use: ' + ', '.join(f'--{n}' for n in sorted(dropped)), file=sys.stderr)
    return kept, kept_origins


def expand_argv(argv):
    """Expand --flagfile arguments so that values given on the command line replace the
    flagfiles' values: single-valued flags whatever their position, and multi-valued flags
    (--ch_mult, --attn) instead of being appended to them (absl's behaviour). Flags of the
    public CBDM code that we do not use are dropped (see PUBLIC_ONLY_FLAGS). Flagfiles are read
    by flagfiles.read_flagfile: a line that is not a flag is an error, not an ignored
    argument."""
    args, origins = [], []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ('--flagfile', '-flagfile') and i + 1 < len(argv):
            arg, i = f'--flagfile={argv[i + 1]}', i + 1
        if arg.startswith(('--flagfile=', '-flagfile=')):
            path = os.path.expanduser(arg.split('=', 1)[1].strip())  # as absl reads it
            if not os.path.isfile(path):
                raise UserError(f'--flagfile {path}: no such file')
            expanded = read_flagfile(path, FLAGS, PUBLIC_VALUE_FLAGS)
            args += expanded
            origins += ['file'] * len(expanded)
        else:
            args.append(arg)
            origins.append('cli')
        i += 1
    args, origins = drop_public_only_flags(args, origins)

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


def namespace_of(flag_values):
    """Every flag's value as a plain namespace, and `given`: the names of the flags that the
    parsed arguments (command line and flagfiles) set."""
    cfg = types.SimpleNamespace(**{name: flag_values[name].value for name in flag_values})
    cfg.given = frozenset(name for name in flag_values if flag_values[name].present)
    return cfg


def config():
    """The flags as a plain namespace (what the other modules take), with `given` (see
    namespace_of) and `run_flags` (another run's flags, see run_flags)."""
    cfg = namespace_of(FLAGS)
    cfg.fid_cache_given = FLAGS['fid_cache'].present > 0
    cfg.run_flags = run_flags
    return cfg


def run_flags(path):
    """The flags that the flagfile `path` (e.g. another run's flagfile.txt) sets, parsed by
    absl as `main.py --flagfile=path` would parse them (nested flagfiles, --noX, multi-valued
    flags, the flags' domains), into a private copy of the flag definitions: FLAGS is untouched.
    Returns namespace_of the copy (defaults for what the file does not set). A file that does
    not parse is a UserError naming it."""
    private = copy.deepcopy(FLAGS)
    private.unparse_flags()
    argv = expand_argv(['main.py', f'--flagfile={path}'])
    try:
        private(argv)
    except flags.Error as e:
        raise UserError(f'{path}: {e}') from None
    return namespace_of(private)


def flags_text():
    return FLAGS.flags_into_string()


def run(argv):
    if len(argv) > 1:  # absl passes on words that are not flags; they would be ignored silently
        raise UserError(f'{" ".join(argv[1:])}: not a flag (flags start with --, e.g. '
                        f'--imb_factor=0.5)')
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
    if cfg.classify:
        from recognition.classify import classify
        classify(cfg, flags_text())
    if not (cfg.train or cfg.eval or cfg.sample or cfg.make_stats or cfg.classify):
        raise UserError('nothing to do: pass --train, --eval, --sample, --make_stats or --classify')


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
