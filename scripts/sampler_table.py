#!/usr/bin/env python
"""Every sampler, with and without clipping the x0 prediction, against DDPM over all T steps on
a trained digits model, several sampling seeds, judged by an independent classifier.

    python scripts/sampler_table.py --logdir logs/mnistlt_cbdm --ckpt_step 4999 \
        [--per_class 30] [--seeds 0,1,2] [--steps 10,20,50] \
        [--samplers ddim,ddim-eta1,dpm++2m,dpm++2m-sde,unipc] [--omega W] [--batch_size 300] \
        [--out docs/sampler_mnistlt.md]

For each setting and seed the run's EMA model draws `10 x per_class` class-conditional images
(cfg guidance with --omega, default the run's own; the same labels for every row, per-image
seeded noise, so a seed draws the same initial noise in every row) through the project's own
sampler (evaluation.generate), timed. A small CNN that never saw the generated images scores
them (scripts/proxy_eval.py's network, trained once and cached in LOGDIR/sampler_table/,
retrained when the code of the network or of its training changes):

- digits-LT runs: trained on 80% of the 1,797 scikit-learn digits; real reference set: all of
  them (as scripts/sampler_digits.py and proxy_eval.py);
- MNIST-LT runs: trained on the balanced 4,000-digit MNIST training pool at the run's image size;
  real reference set: the 1,000-digit balanced test split, which neither the generator nor the
  judge was trained on.

Per set: FID of the judge's 128-d penultimate features, improved precision / recall (k = 5)
against the reference set, the fraction of samples the judge assigns to their label (class acc),
the same for the tail (the five classes with the fewest training images) and per class, and
images/s of the sampling alone (one process, the threads of OMP_NUM_THREADS). Rows give mean ±
std over the seeds and the network evaluations per image (NFE; a guided step counts 2). A row
is marked "≈ DDPM" when its class acc, precision and recall are each at least, and its FID at
most, the mean minus (plus) twice the seed std of the reference: DDPM over all T steps without
the clip, the sampler the public code and the paper use. DDPM with the clip is a row of its own
(`--ddpm_clip_seeds`, default the --seeds; it costs as much as the reference).

Writes the markdown table to --out and a plot of FID and class acc against NFE beside it after
every setting (the few-step settings first, DDPM last), so a stopped run leaves the table of
what it measured; the sets and scores are cached under LOGDIR/sampler_table/ and a rerun resumes
where it stopped.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import proxy_eval  # noqa: E402
from score.metrics import frechet_distance_feats  # noqa: E402
from utils import UserError, run_script, save_npz, save_text, save_torch  # noqa: E402

SAMPLERS = {  # name -> (sampler flag, eta)
    'ddim': ('ddim', 0.0), 'ddim-eta1': ('ddim', 1.0), 'dpm++2m': ('dpm++2m', 0.0),
    'dpm++2m-sde': ('dpm++2m-sde', 0.0), 'unipc': ('unipc', 0.0)}
JUDGE_EPOCHS = 20


def run_config(logdir, ckpt_step, overrides):
    """main.py's namespace of flags for LOGDIR/flagfile.txt plus `overrides` (command-line
    style), as `main.py --flagfile LOGDIR/flagfile.txt OVERRIDES` would parse them."""
    from absl import app, flags
    from absl import logging  # noqa: F401  (defines the logging flags a flagfile.txt holds)
    import main
    app.define_help_flags()   # --nohelp ... as app.run defines them
    path = os.path.join(logdir, 'flagfile.txt')
    if not os.path.isfile(path):
        raise UserError(f'--logdir {logdir}: no flagfile.txt (not a training run folder)')
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(main.expand_argv(['main.py', f'--flagfile={path}', f'--logdir={logdir}',
                                      f'--ckpt_step={ckpt_step}', *overrides]))
        return main.config()
    finally:
        flags.FLAGS.unparse_flags()


def judge(cfg, cache_dir, epochs=JUDGE_EPOCHS):
    """(model, held-out accuracy, reference images float [-1, 1], reference labels) of the
    independent classifier for the run's data set (see the module docstring)."""
    import dataset as D
    path = os.path.join(cache_dir, f'judge_{cfg.data_type}_{cfg.img_size}_e{epochs}.pt')
    if cfg.data_type == 'digitslt':
        x, y = proxy_eval.real_digits()
        model, acc = proxy_eval.load_or_train(cache_dir, 0, x, y)
        return model, acc, x, y
    if cfg.data_type not in ('mnist', 'mnistlt'):
        raise UserError(f'--logdir: a {cfg.data_type} run; the judge knows digitslt and mnistlt')

    def tensors(ds):
        return (torch.stack([ds[i][0] for i in range(len(ds))]),
                torch.as_tensor(ds.targets, dtype=torch.int64))
    ref_x, ref_y = tensors(D.build_test_dataset(cfg.data_type, '', cfg.img_size))
    arch = proxy_eval.arch_key(epochs)
    if os.path.isfile(path):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        if ckpt.get('arch') == arch:
            model = proxy_eval.DigitNet(cfg.img_size)
            model.load_state_dict(ckpt['state'])
            return model.eval(), float(ckpt['test_acc']), ref_x, ref_y
        print(f'judge: {path} holds another network (or one trained by other code); retraining')
    train_x, train_y = tensors(D.build_dataset('mnist', '', cfg.img_size))
    model = proxy_eval.fit(train_x, train_y, 0, epochs).eval()
    acc = proxy_eval.accuracy(model, ref_x, ref_y)
    save_torch({'arch': arch, 'state': model.state_dict(), 'test_acc': acc}, path)
    print(f'judge: trained on the {len(train_x)}-digit MNIST pool, test-split accuracy {acc:.4f}')
    return model, acc, ref_x, ref_y


def draw(cfg, name, steps, clip, seed, labels, batch_size):
    """(images float32 N x 3 x H x W in [0, 1], seconds, NFE per image) of one setting."""
    from evaluation import generate, load_ema_model
    from factory import build_sampler
    sampler_flag, eta = ('ddpm', 0.0) if name == 'ddpm' else SAMPLERS[name]
    cfg.sampler, cfg.sample_steps, cfg.eta = sampler_flag, steps, eta
    cfg.spacing, cfg.clip_denoised, cfg.seed = 'auto', clip, seed
    model, num_class, _ = load_ema_model(cfg, torch.device('cpu'))
    sampler = build_sampler(cfg, model, num_class, 'sample')
    start = time.time()
    images, _ = generate(sampler, len(labels), batch_size, cfg.img_size, torch.device('cpu'),
                         'cfg', cfg.omega, seed, f'{name} {steps} clip={clip} seed {seed}',
                         classes=labels)
    return images, time.time() - start, sampler.settings('cfg', cfg.omega)['nfe_per_image']


def scores(model, images, labels, ref_feats, ref_y, tail):
    """FID, precision, recall, class acc, tail acc, per-class acc of one set."""
    x = torch.from_numpy(np.clip(images, 0, 1)) * 2 - 1
    pred, feats = proxy_eval.predict(model, x)
    precision, recall = proxy_eval.pr(ref_feats, feats)
    in_tail = np.isin(labels, tail)
    return {'FID': frechet_distance_feats(feats, ref_feats, use_torch=True),
            'precision': precision, 'recall': recall,
            'acc': float((pred == labels).mean()),
            'acc_tail': float((pred[in_tail] == labels[in_tail]).mean()),
            'recall_tail': proxy_eval.pr(ref_feats[np.isin(ref_y, tail)], feats[in_tail])[1],
            'acc_class': [float((pred[labels == c] == c).mean()) for c in range(10)]}


def cached(cache_dir, key, compute):
    """The scores of one (setting, seed) from cache_dir/KEY.json, or computed and stored."""
    path = os.path.join(cache_dir, key + '.json')
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    result = compute()
    save_text(path, json.dumps(result) + '\n')
    return result


def settings_list(args, T):
    """[(sampler, steps, clip, seeds)]: the cheap few-step settings first, DDPM over all T
    steps last (the table is rewritten after each setting, so a stopped run shows them)."""
    seeds = int_list('--seeds', args.seeds)
    rows = []
    for name in args.samplers.split(','):
        if name not in SAMPLERS:
            raise UserError(f'--samplers: unknown {name!r}; choose from {", ".join(SAMPLERS)}')
        rows += [(name, n, clip, seeds) for n in int_list('--steps', args.steps)
                 for clip in (False, True)]
    rows.append(('ddpm', T, False, seeds))
    clip_seeds = ([] if args.ddpm_clip_seeds == 'none' else
                  int_list('--ddpm_clip_seeds', args.ddpm_clip_seeds or args.seeds))
    return rows + [('ddpm', T, True, clip_seeds)] if clip_seeds else rows


def int_list(flag, text):
    """'0,1,2' -> [0, 1, 2]; '' -> []; anything else is a UserError naming the flag."""
    try:
        return [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise UserError(f'{flag} {text!r}: give comma-separated integers, e.g. 0,1,2') from None


def summarise(per_seed):
    keys = ('FID', 'precision', 'recall', 'acc', 'acc_tail', 'recall_tail', 'images_per_s')
    out = {}
    for k in keys:
        values = np.array([r[k] for r in per_seed], np.float64)
        out[k] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    out['acc_class'] = np.mean([r['acc_class'] for r in per_seed], axis=0).tolist()
    out['nfe'] = per_seed[0]['nfe']
    out['seeds'] = len(per_seed)
    return out


def near_ddpm(row, ref):
    """Each of class acc, precision, recall at least, and FID at most, the reference's mean
    minus (plus) twice its seed std."""
    for k in ('acc', 'precision', 'recall'):
        if row[k][0] < ref[k][0] - 2 * ref[k][1]:
            return False
    return row['FID'][0] <= ref['FID'][0] + 2 * ref['FID'][1]


def pm(v, digits=3, n=2):
    """'mean ± std', or the mean alone for a single seed (no spread to show)."""
    return f'{v[0]:.{digits}f} ± {v[1]:.{digits}f}' if n > 1 else f'{v[0]:.{digits}f}'


def ordered(rows):
    """The rows for display: DDPM first (unclipped, the reference, then clipped), then the
    few-step settings in the order measured."""
    return sorted(rows, key=lambda r: (r[0][0] != 'ddpm', r[0][0] == 'ddpm' and r[0][2]))


def write_table(args, cfg, rows, judge_acc, n_ref, tail):
    lines = ['| sampler | steps | clip | NFE | seeds | FID (judge features) | precision | '
             'recall | class acc | tail acc | tail recall | images/s | ≈ DDPM |',
             '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    rows = ordered(rows)
    ref = next((s for (name, _, clip), s in rows if name == 'ddpm' and not clip), None)
    for (name, steps, clip), s in rows:
        if name == 'ddpm' and not clip:
            mark = 'reference'
        else:
            mark = 'not yet' if ref is None else ('yes' if near_ddpm(s, ref) else 'no')
        n = s['seeds']
        lines.append(f'| {name} | {steps} | {"on" if clip else "off"} | {s["nfe"]} | {n} | '
                     f'{pm(s["FID"], 2, n)} | {pm(s["precision"], 3, n)} | '
                     f'{pm(s["recall"], 3, n)} | {pm(s["acc"], 3, n)} | '
                     f'{pm(s["acc_tail"], 3, n)} | {pm(s["recall_tail"], 3, n)} | '
                     f'{s["images_per_s"][0]:.2f} | {mark} |')
    per_class = ['| sampler | steps | clip | ' + ' | '.join(f'class {c}' for c in range(10)) + ' |',
                 '|---|---:|---|' + '---:|' * 10]
    for (name, steps, clip), s in rows:
        per_class.append(f'| {name} | {steps} | {"on" if clip else "off"} | '
                         + ' | '.join(f'{a:.2f}' for a in s['acc_class']) + ' |')
    seeds = args.seeds.split(',')
    text = (f'{args.logdir} ckpt {args.ckpt_step} ({cfg.data_type}, {cfg.img_size}x{cfg.img_size}), '
            f'cfg omega {cfg.omega}, {10 * args.per_class} images per set ({args.per_class} per '
            f'class), seeds {", ".join(seeds)} (mean ± std); judge held-out accuracy '
            f'{judge_acc:.3f}; reference: {n_ref} real images; tail = classes {tail}; '
            f'≈ DDPM: within twice the seed std of DDPM without the clip.\n\n'
            + '\n'.join(lines) + '\n\nClass acc per class (mean over seeds):\n\n'
            + '\n'.join(per_class) + '\n')
    save_text(args.out, text)
    print(text, end='')
    return text


def plot(args, rows):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from utils import atomic_write
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for (name, steps, clip), s in rows:
        series.setdefault((name, clip), []).append((s['nfe'], s['FID'][0], s['acc'][0]))
    for (name, clip), points in sorted(series.items()):
        points.sort()
        nfe, fid, acc = zip(*points)
        style = dict(marker='o' if clip else 'x', linestyle='-' if clip else ':',
                     label=f'{name}{" clip" if clip else ""}')
        if name == 'ddpm':
            for ax, v in zip(axes, (fid[0], acc[0])):
                ax.axhline(v, color='black', linestyle='-' if clip else ':', linewidth=1,
                           label=f'ddpm {nfe[0]} NFE{" clip" if clip else ""}')
            continue
        axes[0].plot(nfe, fid, **style)
        axes[1].plot(nfe, acc, **style)
    for ax, label in zip(axes, ('FID (judge features, lower is better)',
                                'class acc (higher is better)')):
        ax.set_xscale('log')
        ax.set_xlabel('network evaluations per image')
        ax.set_ylabel(label)
    axes[0].set_yscale('log')
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.splitext(args.out)[0] + '.png'
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--logdir', required=True)
    ap.add_argument('--ckpt_step', type=int, required=True)
    ap.add_argument('--per_class', type=int, default=30)
    ap.add_argument('--seeds', default='0,1,2')
    ap.add_argument('--steps', default='10,20,50')
    ap.add_argument('--samplers', default=','.join(SAMPLERS))
    ap.add_argument('--omega', type=float, default=None, help='default: the run\'s --omega')
    ap.add_argument('--batch_size', type=int, default=300)
    ap.add_argument('--judge_epochs', type=int, default=JUDGE_EPOCHS,
                    help='epochs of the MNIST judge (cached per value)')
    ap.add_argument('--ddpm_clip_seeds', default='',
                    help='seeds of the DDPM-with-clip row (default: --seeds; "none": no row)')
    ap.add_argument('--out', default='')
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '1') or 1)))
    cfg = run_config(args.logdir, args.ckpt_step,
                     [] if args.omega is None else [f'--omega={args.omega}'])
    args.out = args.out or os.path.join(args.logdir, 'sampler_table.md')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cache_dir = os.path.join(args.logdir, 'sampler_table')
    os.makedirs(cache_dir, exist_ok=True)
    model, judge_acc, ref_x, ref_y = judge(cfg, cache_dir, args.judge_epochs)
    _, ref_feats = proxy_eval.predict(model, ref_x)
    ref_y = ref_y.numpy()
    import dataset as D
    counts = D.build_dataset(cfg.data_type, '', cfg.img_size, cfg.imb_factor,
                             cfg.imb_type).class_counts
    tail = sorted(int(c) for c in np.argsort(-counts, kind='stable')[5:])
    labels = np.repeat(np.arange(10), args.per_class).astype(np.int64)
    rows = []
    for name, steps, clip, seeds in settings_list(args, cfg.T):
        per_seed = []
        for seed in seeds:
            key = f'{name}_{steps}_clip{int(clip)}_omega{cfg.omega:g}_n{len(labels)}_seed{seed}'

            def compute():
                images, seconds, nfe = draw(cfg, name, steps, clip, seed, labels,
                                            args.batch_size)
                save_npz(os.path.join(cache_dir, key + '.npz'),
                         images=(images * 255).round().astype(np.uint8), labels=labels)
                return {**scores(model, images, labels, ref_feats, ref_y, tail),
                        'images_per_s': len(labels) / seconds, 'nfe': nfe}
            per_seed.append(cached(cache_dir, key, compute))
        rows.append(((name, steps, clip), summarise(per_seed)))
        print(f'{name} {steps} clip={clip}: FID {pm(rows[-1][1]["FID"], 2)}, acc '
              f'{pm(rows[-1][1]["acc"])}', flush=True)
        write_table(args, cfg, rows, judge_acc, len(ref_x), tail)
        print(f'wrote {args.out} and {plot(args, rows)}', flush=True)


if __name__ == '__main__':
    run_script(main)
