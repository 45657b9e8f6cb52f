"""Long-tailed recognition (`main.py --classify`): models, schedule, accuracy groups, generated
training images, CAS, reports, exact resumption, signals, bad input and the flagfiles.

Everything runs on the digits (a few seconds per classifier) or tiny fake CIFAR / ImageNet-LT /
iNaturalist files in the real on-disk formats."""
import json
import os
import signal
import time

import numpy as np
import pytest
import torch

import recognition.classify as K
import recognition.data as RD
import recognition.loop as RL
import recognition.losses as RLoss
import recognition.models as C
import recognition.reports as RR
import recognition.sources as RS
import runfolder
import dataset as D
from fakedata import write_cifar10
from helpers import ROOT, popen_main, run_main, run_main_in_process, tiny_cfg_run
from utils import UserError

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt')]
COUNTS = [148, 117, 88, 71, 54, 42, 32, 24, 18, 15]  # digits-LT at 0.1


def cfg_of(*args):
    """The namespace main.py hands to classify.classify for these command-line arguments."""
    from absl import flags
    import main
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(main.expand_argv(['main.py', *map(str, args)]))
        return main.config()
    finally:
        flags.FLAGS.unparse_flags()


def records(logdir):
    return [json.loads(line) for line in (logdir / 'eval.jsonl').read_text().splitlines()]


def per_class(logdir):
    lines = (logdir / 'per_class.csv').read_text().splitlines()
    header = lines[0].split(',')
    return [dict(zip(header, line.split(','))) for line in lines[1:]]


def digits_pool_set(folder, name, per_class_n=20, shift=0, seed=0):
    """A 'generated' set made of real digits from the training pool (never the test split):
    `name`.npy (float32 N x 3 x 8 x 8 in [0, 1]) and `name`_labels.npy; labels + shift mod 10."""
    x, y = D.load_digits_images()
    pool, _ = D.digits_split()
    rng = np.random.RandomState(seed)
    idx = np.concatenate([rng.choice(pool[y[pool] == c], per_class_n, replace=False)
                          for c in range(10)])
    path = folder / f'{name}.npy'
    np.save(path, x.numpy()[idx].astype(np.float32))
    np.save(folder / f'{name}_labels.npy', ((y[idx] + shift) % 10).astype(np.int64))
    return path


# ---------------------------------------------------------------------------------------------
# models, schedule, groups, fill counts, loss

def test_resnet32_is_the_cifar_resnet_and_factory():
    net = C.ResNet32(10)
    assert C.num_parameters(net) == 464154            # LDAM-DRW's resnet32, 10 classes
    assert C.num_parameters(C.ResNet32(100)) == 470004
    blocks = [m for m in net.modules() if isinstance(m, C.BasicBlock)]
    assert len(blocks) == 15
    assert [b.conv1.out_channels for b in blocks[::5]] == [16, 32, 64]
    assert sum(isinstance(b.shortcut, C.OptionAShortcut) for b in blocks) == 2  # no parameters
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert C.build_classifier('cnn', 10)(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    r18 = C.build_classifier('resnet18', 7).eval()       # torchvision, weights=None
    assert r18.head.out_features == 7 and r18(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    for arch, size in (('resnet32', 32), ('cnn', 8), ('resnet18', 32)):
        net = C.build_classifier(arch, 5).eval()
        x = torch.randn(3, 3, size, size)
        feats = net.features(x)
        assert feats.shape == (3, net.feature_dim)
        assert torch.allclose(net.head(feats), net(x), atol=1e-6)
    with pytest.raises(UserError):
        C.build_classifier('vgg', 10)


def test_lr_schedule_warmup_and_milestones():
    f = [RL.lr_factor(e, 5, [160, 180], 0.01) for e in range(200)]
    assert f[:6] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0] and f[159] == 1.0
    assert f[160] == pytest.approx(0.01) and f[179] == pytest.approx(0.01)
    assert f[180] == pytest.approx(1e-4) and f[199] == pytest.approx(1e-4)
    cfg = cfg_of('--cls_arch=cnn', '--cls_lr=0.1')       # the flags' defaults: the protocol
    assert (cfg.cls_epochs, cfg.cls_batch_size) == (200, 128)
    assert (cfg.cls_wd, cfg.cls_momentum) == (2e-4, 0.9)
    assert cfg.cls_milestones == [160, 180] and cfg.cls_warmup == 5 and cfg.cls_gamma == 0.01
    _, optim, sched = RL.new_state(cfg, 10, torch.device('cpu'))
    lrs = []
    for _ in range(200):
        lrs.append(optim.param_groups[0]['lr'])
        optim.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1)
    assert lrs[160] == pytest.approx(1e-3) and lrs[180] == pytest.approx(1e-5)
    assert optim.param_groups[0]['weight_decay'] == 2e-4
    assert optim.param_groups[0]['momentum'] == 0.9


def test_group_accuracy_from_a_known_confusion():
    # rows: true class; 3 classes with 150 (many), 50 (medium) and 10 (few) training images
    confusion = np.array([[9, 1, 0], [2, 6, 2], [5, 0, 5]])
    correct, total = np.diag(confusion), confusion.sum(1)
    rep = RR.accuracy_report(correct, total, [150, 50, 10], 100, 20)
    assert rep['top1'] == pytest.approx(20 / 30)
    assert rep['top1_many'] == pytest.approx(0.9) and rep['top1_medium'] == pytest.approx(0.6)
    assert rep['top1_few'] == pytest.approx(0.5)
    assert rep['per_class'] == pytest.approx([0.9, 0.6, 0.5])
    # no medium and no few-shot class: reported as None, never 0; a class without test images
    rep = RR.accuracy_report([3, 0], [4, 0], [500, 101], 100, 20)
    assert rep['top1_medium'] is None and rep['top1_few'] is None
    assert rep['classes_medium'] == 0 and rep['top1_many'] == pytest.approx(0.75)
    assert rep['per_class'] == [0.75, None]
    assert RR.class_groups([101, 100, 20, 19], 100, 20) == ['many', 'medium', 'medium', 'few']


def test_fill_counts_and_loss_weights():
    assert RS.fill_counts([148, 117, 15], 'head').tolist() == [0, 31, 133]
    assert RS.fill_counts([148, 117, 15], 'head', synthetic_only=True).tolist() == [148] * 3
    assert RS.fill_counts([148, 117, 15], '25').tolist() == [25] * 3
    for bad in ('0', '-3', 'tail', '1.5'):
        with pytest.raises(UserError, match='synthetic_fill'):
            RS.parse_fill(bad)
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    generated = torch.tensor([False, False, False, True, True, True])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction='none')
    w = torch.where(generated, 0.25, 1.0)
    want = (ce[:3].sum() + 0.25 * ce[3:].sum()) / 6   # real images keep weight 1
    assert RLoss.weighted_loss(logits, y, w) == pytest.approx(want.item())
    zero = RLoss.weighted_loss(logits, y, torch.where(generated, 0.0, 1.0))
    assert zero == pytest.approx((ce[:3].sum() / 6).item())


def test_training_set_marks_generated_images_and_batches_are_seeded(tmp_path):
    path = digits_pool_set(tmp_path, 'gen', per_class_n=3)
    images, labels = D.load_synthetic(str(path), 10, 8)
    assert images.dtype == np.uint8 and images.shape == (30, 3, 8, 8)
    real = D.build_dataset('digitslt', '', 8, 0.1)
    data = RD.TrainingSet(real, RD.synthetic_dataset(images, labels, 10, 8))
    assert len(data) == 609 + 30 and data[0][2] is False and data[609][2] is True
    assert data[609][1] == labels[0]
    a = RD.EpochBatchSampler(len(data), 128, 0, 3).batches()
    assert a == RD.EpochBatchSampler(len(data), 128, 0, 3).batches()
    assert a != RD.EpochBatchSampler(len(data), 128, 0, 4).batches()
    assert sorted(sum(a, [])) == list(range(len(data)))       # 639 = 4 x 128 + 127
    assert list(RD.EpochBatchSampler(len(data), 128, 0, 3, start=2)) == a[2:]
    assert len(RD.EpochBatchSampler(129, 128, 0, 0).batches()) == 1   # a batch of one is dropped


def test_digits_test_split_is_balanced_and_disjoint():
    test = D.build_test_dataset('digitslt', '', 8)
    train = D.build_dataset('digitslt', '', 8, 0.1)
    assert test.class_counts.tolist() == [30] * 10 and len(test) == 300 and not test.hflip
    assert not set(test.indices) & set(train.indices)
    assert train.class_counts.tolist() == COUNTS
    pool, held = D.digits_split()
    assert len(pool) + len(held) == 1797 and np.array_equal(held, test.indices)


# ---------------------------------------------------------------------------------------------
# the command line on digits-LT

@pytest.fixture(scope='module')
def baseline(tmp_path_factory):
    """config/classify_digitslt.txt as written, 8 epochs instead of 30."""
    logdir = tmp_path_factory.mktemp('cls') / 'ce'
    out = run_main(*DIGITS, '--cls_epochs=8', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir, out


def test_baseline_reports_and_above_chance(baseline):
    logdir, out = baseline
    names = set(os.listdir(logdir))
    assert {'flagfile.txt', 'results.txt', 'per_class.csv', 'confusion.png', 'eval.jsonl'} <= names
    assert any(n.startswith('events.out.tfevents') for n in names)
    assert any(n.startswith('ckpt_') for n in names)
    [rec] = records(logdir)
    assert rec['kind'] == 'classify' and rec['mode'] == 'ce' and rec['epochs'] == 8
    assert rec['arch'] == 'cnn' and rec['data_type'] == 'digitslt' and rec['test_images'] == 300
    assert rec['top1'] > 0.7                                  # chance is 0.1
    for g in ('many', 'medium', 'few'):
        assert 0 <= rec[f'top1_{g}'] <= 1
    assert (rec['classes_many'], rec['classes_medium'], rec['classes_few']) == (2, 6, 2)
    rows = per_class(logdir)
    assert [int(r['train_count']) for r in rows] == COUNTS
    assert [r['group'] for r in rows] == ['many'] * 2 + ['medium'] * 6 + ['few'] * 2
    assert all(r['generated_count'] == '0' and r['test_count'] == '30' for r in rows)
    acc = np.mean([float(r['accuracy']) for r in rows])
    assert acc == pytest.approx(rec['top1'], abs=1e-5)     # balanced test set
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('wrote ') and str(logdir) in last and 'per_class.csv' in last
    assert 'epoch 8/8' in out.stderr                        # the tqdm bar per epoch
    # running it again does nothing
    again = run_main(*DIGITS, '--cls_epochs=8', f'--logdir={logdir}')
    assert again.returncode == 0 and 'already complete' in again.stdout
    assert len(records(logdir)) == 1


def test_synthetic_set_is_added_and_weighted(tmp_path):
    path = digits_pool_set(tmp_path, 'gen', per_class_n=10)
    logdir = tmp_path / 'run'
    out = run_main(*DIGITS, '--cls_epochs=1', f'--synthetic={path}', '--synthetic_weight=0.5',
                   f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    assert rec['mode'] == 'ce+synthetic' and rec['num_generated'] == 100
    assert rec['synthetic'] == str(path) and rec['synthetic_weight'] == 0.5
    rows = per_class(logdir)
    assert [int(r['generated_count']) for r in rows] == [10] * 10
    assert [int(r['train_count']) for r in rows] == COUNTS


def test_synthetic_weight_scales_what_generated_images_teach(tmp_path):
    """The same generated images under two different labellings: with --synthetic_weight 0 their
    labels cannot matter (the trained weights are bitwise equal), with 0.5 they do."""
    path = digits_pool_set(tmp_path, 'gen', per_class_n=10)
    other = tmp_path / 'relabelled.npy'
    np.save(other, np.load(path))
    np.save(tmp_path / 'relabelled_labels.npy', (np.load(tmp_path / 'gen_labels.npy') + 3) % 10)

    def weights(set_path, weight, name):
        logdir = tmp_path / name
        out = run_main(*DIGITS, '--cls_epochs=1', f'--synthetic={set_path}',
                       f'--synthetic_weight={weight}', f'--logdir={logdir}')
        assert out.returncode == 0, out.stderr[-3000:]
        return RL.newest_classifier_checkpoint(str(logdir))[1]['model']
    zero_a, zero_b = weights(path, 0.0, 'a0'), weights(other, 0.0, 'b0')
    assert all(torch.equal(zero_a[k], zero_b[k]) for k in zero_a)
    half_a, half_b = weights(path, 0.5, 'a5'), weights(other, 0.5, 'b5')
    assert not all(torch.equal(half_a[k], half_b[k]) for k in half_a)


def test_cas_trains_on_generated_images_only(tmp_path):
    # every 'generated' digit carries the label of the next class: a classifier trained on
    # these alone learns that mapping, so it calls most real c's c + 1
    path = digits_pool_set(tmp_path, 'shifted', per_class_n=40, shift=1)
    logdir = tmp_path / 'cas'
    out = run_main(*DIGITS, '--cls_epochs=8', f'--synthetic={path}', '--synthetic_only',
                   f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    assert rec['mode'] == 'cas' and rec['num_generated'] == 400
    assert [int(r['generated_count']) for r in per_class(logdir)] == [40] * 10
    model, _ = RL.classifier_from_run(str(logdir), torch.device('cpu'))
    test = D.build_test_dataset('digitslt', '', 8)
    probs, labels = C.predict(model, torch.utils.data.DataLoader(test, batch_size=300),
                              torch.device('cpu'))
    shifted = (probs.argmax(1) == (labels + 1) % 10).float().mean().item()
    assert shifted > 0.8 and rec['top1'] < 0.1


def test_filter_drops_images_the_real_classifier_rejects(tmp_path, baseline):
    good = digits_pool_set(tmp_path, 'good', per_class_n=10, seed=1)
    bad = digits_pool_set(tmp_path, 'bad', per_class_n=10, shift=5, seed=2)
    x = np.concatenate([np.load(good), np.load(bad)])
    y = np.concatenate([np.load(tmp_path / 'good_labels.npy'),
                        np.load(tmp_path / 'bad_labels.npy')])
    np.save(tmp_path / 'mixed.npy', x)
    np.save(tmp_path / 'mixed_labels.npy', y)
    logdir = tmp_path / 'filtered'
    out = run_main(*DIGITS, '--cls_epochs=1', f'--synthetic={tmp_path / "mixed.npy"}',
                   '--synthetic_filter', f'--filter_logdir={baseline[0]}',
                   '--filter_threshold=0.5', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    dropped = rec['filtered_out']
    # each class holds 10 mislabelled images (all rejected) and 10 real ones (most kept)
    assert len(dropped) == 10 and min(dropped) >= 9 and sum(dropped) <= 140
    assert rec['num_generated'] == 200 - sum(dropped)
    assert 'dropped' in out.stdout
    assert [int(r['filtered_out']) for r in per_class(logdir)] == dropped


def test_filter_trains_its_real_data_classifier_first(tmp_path):
    """Without --filter_logdir the filter classifier is trained first; at threshold 0.5 it
    drops the mislabelled half of the set (digits shifted by 5 classes) and keeps most of the
    correctly labelled half."""
    good = digits_pool_set(tmp_path, 'good', per_class_n=5, seed=3)
    bad = digits_pool_set(tmp_path, 'bad', per_class_n=5, shift=5, seed=4)
    np.save(tmp_path / 'mixed.npy', np.concatenate([np.load(good), np.load(bad)]))
    np.save(tmp_path / 'mixed_labels.npy', np.concatenate([
        np.load(tmp_path / 'good_labels.npy'), np.load(tmp_path / 'bad_labels.npy')]))
    logdir = tmp_path / 'run'
    out = run_main(*DIGITS, '--cls_epochs=6', f'--synthetic={tmp_path / "mixed.npy"}',
                   '--synthetic_filter', '--filter_threshold=0.5', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [real_rec] = records(logdir / 'filter_real')
    assert real_rec['mode'] == 'ce' and real_rec['num_generated'] == 0
    [rec] = records(logdir)
    dropped = rec['filtered_out']
    # 5 mislabelled images per class (all dropped) and 5 right ones (most kept)
    assert min(dropped) >= 5 and sum(dropped) <= 60, dropped
    assert rec['num_generated'] == 100 - sum(dropped)


@pytest.fixture(scope='module')
def diffusion_run():
    """The shared tiny conditional run (ckpt_1): read only."""
    return tiny_cfg_run()


def test_fill_from_a_diffusion_run(tmp_path, diffusion_run):
    logdir = tmp_path / 'fill'
    args = [*DIGITS, '--cls_epochs=1', f'--synthetic_logdir={diffusion_run}', '--ckpt_step=1',
            '--synthetic_fill=head', '--sampler=ddim', '--sample_steps=2', '--omega=1.0',
            '--batch_size=256', f'--logdir={logdir}']
    out = run_main(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    want = [148 - n for n in COUNTS]
    assert [int(r['generated_count']) for r in per_class(logdir)] == want
    assert rec['num_generated'] == sum(want) and rec['ckpt_step'] == 1
    assert rec['generator'] == 'run' and rec['sample_method'] == 'cfg' and rec['omega'] == 1.0
    saved = rec['synthetic']
    assert saved.startswith(str(logdir / 'synthetic')) and os.path.isfile(saved)
    images, labels = D.load_synthetic(saved, 10, 8)
    assert np.bincount(labels, minlength=10).tolist() == want
    # reusable as --synthetic in another run; a resumed run reuses it
    (logdir / 'eval.jsonl').unlink()
    again = run_main(*args)
    assert again.returncode == 0 and 'reusing the generated images' in again.stdout
    # CAS of the generator: a balanced set of N per class
    cas = tmp_path / 'cas'
    out = run_main(*args[:-1], '--synthetic_only', '--synthetic_fill=5', f'--logdir={cas}')
    assert out.returncode == 0, out.stderr[-3000:]
    assert [int(r['generated_count']) for r in per_class(cas)] == [5] * 10


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written

def bad_sets(folder):
    x = np.random.RandomState(0).rand(20, 3, 8, 8).astype(np.float32)
    y = np.repeat(np.arange(10), 2)
    cases = {
        'shape': (x[:, :1], y, 'expected N x 3 x 8 x 8'),
        'range': (x * 2, y, 'outside [0, 1]'),
        'labels': (x, y + 5, 'expected 0..9'),
        'uncond': (x, np.full(20, -1), 'unconditional'),
        'count': (x, y[:10], '20 integer labels'),
        'nan': (np.where(x > 0.5, np.nan, x).astype(np.float32), y, 'outside [0, 1]'),
    }
    out = {}
    for name, (images, labels, msg) in cases.items():
        np.save(folder / f'{name}.npy', images)
        np.save(folder / f'{name}_labels.npy', labels)
        out[name] = (folder / f'{name}.npy', msg)
    np.save(folder / 'nolabels.npy', x)
    out['nolabels'] = (folder / 'nolabels.npy', 'nolabels_labels.npy not found')
    out['missing'] = (folder / 'missing.npy', 'no such file')
    return out


def assert_user_error(out, logdir, *needles):
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not os.path.exists(logdir)


def test_bad_synthetic_sets(tmp_path):
    for name, (path, msg) in bad_sets(tmp_path).items():
        logdir = tmp_path / f'run_{name}'
        out = run_main_in_process(*DIGITS, '--cls_epochs=1', f'--synthetic={path}', f'--logdir={logdir}')
        assert_user_error(out, logdir, path.stem, msg)


def test_bad_sources_and_missing_test_split(tmp_path):
    logdir = tmp_path / 'run'
    out = run_main_in_process(*DIGITS, '--synthetic_only', f'--logdir={logdir}')
    assert_user_error(out, logdir, '--synthetic_only needs generated images')
    out = run_main_in_process(*DIGITS, f'--synthetic_logdir={tmp_path}', '--ckpt_step=5', f'--logdir={logdir}')
    assert_user_error(out, logdir, 'flagfile.txt not found')
    out = run_main_in_process(*DIGITS, '--synthetic_filter', f'--synthetic={tmp_path / "x.npy"}',
                   f'--filter_logdir={tmp_path}', f'--logdir={logdir}')
    assert_user_error(out, logdir, 'x.npy')
    root = tmp_path / 'data'
    write_cifar10(str(root), per_class=5, test_per_class=1)
    (root / 'cifar-10-batches-py' / 'test_batch').unlink()
    out = run_main_in_process('--flagfile', os.path.join(ROOT, 'config', 'classify_cifar10lt.txt'),
                   f'--root={root}', '--imb_factor=0.5', f'--logdir={logdir}')  # no empty class
    assert_user_error(out, logdir, 'test_batch')
    lists = tmp_path / 'imagenet'
    lines = _write_image_lists(lists)
    (lists / 'ImageNet_LT_train.txt').write_text(''.join(f'{p} {c}\n' for p, c in lines['train']))
    out = run_main_in_process('--flagfile', os.path.join(ROOT, 'config', 'classify_imagenetlt.txt'),
                   f'--root={lists}', f'--logdir={logdir}')
    assert_user_error(out, logdir, 'ImageNet_LT_test.txt not found')


# ---------------------------------------------------------------------------------------------
# exact resumption and signals

class StopAfter(runfolder.StopRequest):
    """A StopRequest that 'receives' SIGTERM after `n` batches (checked once per batch)."""
    n = 0

    @property
    def signal(self):
        type(self).n -= 1
        return 'SIGTERM' if type(self).n < 0 else None

    @signal.setter
    def signal(self, value):
        pass


def test_interrupted_and_resumed_equals_straight(tmp_path, monkeypatch):
    args = [*DIGITS, '--cls_epochs=3', '--cls_warmup=1', '--cls_milestones=2', '--seed=5']
    straight = K.classify(cfg_of(*args, f'--logdir={tmp_path / "a"}'), '')
    assert straight == 'done'
    monkeypatch.setattr(RL, 'StopRequest', StopAfter)
    for n in (7, 20, 12):   # mid-epoch 1, mid-epoch 2, again within epoch 2 (after a resume)
        StopAfter.n = n
        assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'stopped'
    StopAfter.n = 10 ** 9
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'done'
    a = RL.newest_classifier_checkpoint(str(tmp_path / 'a'))[1]
    b = RL.newest_classifier_checkpoint(str(tmp_path / 'b'))[1]
    assert a['epoch'] == b['epoch'] == 3
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    for sa, sb in zip(a['optim']['state'].values(), b['optim']['state'].values()):
        assert torch.equal(sa['momentum_buffer'], sb['momentum_buffer'])
    assert a['sched'] == b['sched']
    ra, rb = records(tmp_path / 'a')[0], records(tmp_path / 'b')[0]
    assert ra['top1'] == rb['top1']


def test_sigterm_saves_and_exits_zero(tmp_path):
    proc = popen_main(*DIGITS, '--cls_epochs=100000', f'--logdir={tmp_path}')
    start = time.time()
    while not any(n.startswith('ckpt_') for n in os.listdir(tmp_path) if tmp_path.exists()):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert 'SIGTERM: saved' in stdout and 'run the same command again to resume' in stdout
    ckpt = RL.newest_classifier_checkpoint(str(tmp_path))[1]
    assert ckpt['kind'] == 'classifier' and ckpt['epoch'] >= 1


# ---------------------------------------------------------------------------------------------
# the other flagfiles run as written (appended overrides only shrink the run)

def _write_image_lists(root):
    from PIL import Image
    rng = np.random.RandomState(0)
    lines = {'train': [], 'test': []}
    for split, per_class in (('train', [6, 3, 2]), ('test', [2, 2, 2])):
        for c, n in enumerate(per_class):
            for i in range(n):
                name = f'{split}/{c}/{i}.png'
                os.makedirs(root / split / str(c), exist_ok=True)
                Image.fromarray(rng.randint(0, 256, (20, 24, 3)).astype(np.uint8)).save(root / name)
                lines[split].append((name, c))
    return lines


def test_cifar_flagfiles_run_as_written(tmp_path):
    root = tmp_path / 'data'
    write_cifar10(str(root), per_class=30, test_per_class=2)
    logdir = tmp_path / 'c10'
    out = run_main('--flagfile', os.path.join(ROOT, 'config', 'classify_cifar10lt.txt'),
                   f'--root={root}', '--cls_epochs=1', '--num_workers=0', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    assert rec['arch'] == 'resnet32' and rec['test_images'] == 20 and rec['lr'] == 0.1
    assert rec['milestones'] == [160, 180] and rec['batch_size'] == 128 and rec['wd'] == 2e-4
    assert rec['top1_few'] is not None and rec['top1_many'] is None   # 30 images at most
    flags_text = (logdir / 'flagfile.txt').read_text()
    assert '--classify' in flags_text and '--cls_epochs=1' in flags_text


def test_imagenet_and_inat_flagfiles_run_as_written(tmp_path):
    lines = _write_image_lists(tmp_path)
    for split, name in (('train', 'ImageNet_LT_train.txt'), ('test', 'ImageNet_LT_test.txt')):
        (tmp_path / name).write_text(''.join(f'{p} {c}\n' for p, c in lines[split]))
    for split, name in (('train', 'train2018.json'), ('test', 'val2018.json')):
        meta = {'images': [{'id': i, 'file_name': p} for i, (p, _) in enumerate(lines[split])],
                'annotations': [{'image_id': i, 'category_id': 100 + c}
                                for i, (_, c) in enumerate(lines[split])],
                'categories': [{'id': 100 + c} for c in range(3)]}
        (tmp_path / name).write_text(json.dumps(meta))
    for cfg_name in ('imagenetlt', 'inat2018'):
        logdir = tmp_path / cfg_name
        out = run_main('--flagfile', os.path.join(ROOT, 'config', f'classify_{cfg_name}.txt'),
                       f'--root={tmp_path}', '--cls_epochs=1', '--cls_arch=resnet18',
                       '--img_size=16', '--cls_batch_size=4', '--num_workers=0',
                       f'--logdir={logdir}')
        assert out.returncode == 0, out.stderr[-3000:]
        [rec] = records(logdir)
        assert rec['test_images'] == 6 and rec['data_type'] == cfg_name
        assert [int(r['train_count']) for r in per_class(logdir)] == [6, 3, 2]


# ---------------------------------------------------------------------------------------------
# long-tail losses and class-balanced re-sampling in the loop (formulas: tests/test_losses.py)

def test_drw_switches_on_at_its_epoch_in_the_loop(tmp_path, monkeypatch, capsys):
    calls, current = [], {}
    train_epoch, weighted_ce = RL.train_epoch, RLoss.weighted_ce

    def spy_epoch(cfg, model, optim, loader, weight, device, epoch, *args, **kw):
        current['epoch'] = epoch
        return train_epoch(cfg, model, optim, loader, weight, device, epoch, *args, **kw)

    def spy_ce(logits, y, sample_weight=None, class_weight=None):
        calls.append((current['epoch'], class_weight))
        return weighted_ce(logits, y, sample_weight, class_weight)
    monkeypatch.setattr(RL, 'train_epoch', spy_epoch)
    monkeypatch.setattr(RLoss, 'weighted_ce', spy_ce)
    cfg = cfg_of(*DIGITS, '--cls_epochs=3', '--cls_loss=ce_drw', '--cls_drw_epoch=2',
                 '--cls_eval_every=0', f'--logdir={tmp_path}')
    assert K.classify(cfg, '') == 'done'
    # 19 batches an epoch (609 = 19 x 32 + 1: a last batch of one is dropped)
    assert sorted({e for e, _ in calls}) == [0, 1, 2] and len(calls) == 3 * 19
    raw = np.array([(1 - 0.9999) / (1 - 0.9999 ** n) for n in COUNTS])
    for epoch, w in calls:              # uniform in epochs 0 and 1, effective number from 2 on
        if epoch < 2:
            assert w is None
        else:
            np.testing.assert_allclose(w.numpy(), raw / raw.sum() * 10, rtol=1e-5)
    assert 'epoch 3: deferred re-weighting from now on' in capsys.readouterr().out
    [rec] = records(tmp_path)
    assert rec['cls_loss'] == 'ce_drw' and rec['drw_epoch'] == 2 and rec['drw_beta'] == 0.9999
    assert rec['mode'] == 'ce_drw' and rec['loss_counts'] == 'real' and rec['la_tau'] is None


def test_ldam_drw_with_resampling_resumes_exactly(tmp_path, monkeypatch):
    args = [*DIGITS, '--cls_epochs=3', '--cls_warmup=1', '--cls_milestones=2', '--seed=3',
            '--cls_loss=ldam_drw', '--cls_drw_epoch=1', '--cls_resample', '--cls_eval_every=0']
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "a"}'), '') == 'done'
    monkeypatch.setattr(RL, 'StopRequest', StopAfter)
    for n in (7, 25):                   # inside epoch 0, then inside epoch 1 (after the switch)
        StopAfter.n = n
        assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'stopped'
    StopAfter.n = 10 ** 9
    assert K.classify(cfg_of(*args, f'--logdir={tmp_path / "b"}'), '') == 'done'
    a = RL.newest_classifier_checkpoint(str(tmp_path / 'a'))[1]
    b = RL.newest_classifier_checkpoint(str(tmp_path / 'b'))[1]
    assert a['cosine'] and a['training']['cls_loss'] == 'ldam_drw' and a['training']['resample']
    assert a['model'].keys() == b['model'].keys() and 'head.bias' not in a['model']
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    ra, rb = records(tmp_path / 'a')[0], records(tmp_path / 'b')[0]
    assert ra['top1'] == rb['top1'] and ra['mode'] == 'ldam_drw+resample'
    assert (ra['ldam_s'], ra['ldam_max_margin'], ra['cosine_head']) == (30.0, 0.5, True)
    # the filter / --filter_logdir path rebuilds the cosine head from the checkpoint
    model, _ = RL.classifier_from_run(str(tmp_path / 'a'), torch.device('cpu'))
    assert isinstance(model.head, C.NormedLinear)
    # a run folder of another loss is not resumed with this one
    with pytest.raises(UserError, match='trained with cls_loss ldam_drw.*not cls_loss ce'):
        K.classify(cfg_of(*DIGITS, '--cls_epochs=3', f'--logdir={tmp_path / "b"}'), '')


def test_resampling_in_the_loop_balances_the_real_images(tmp_path, monkeypatch):
    path = digits_pool_set(tmp_path, 'gen', per_class_n=10)
    samplers = []
    make_loader = RL.make_loader

    def spy(data, sampler, cfg, device):
        samplers.append((data, sampler))
        return make_loader(data, sampler, cfg, device)
    monkeypatch.setattr(RL, 'make_loader', spy)
    cfg = cfg_of(*DIGITS, '--cls_epochs=2', '--cls_resample', f'--synthetic={path}',
                 '--cls_eval_every=0', f'--logdir={tmp_path / "run"}')
    assert K.classify(cfg, '') == 'done'
    real_seen, generated_seen = np.zeros(10, np.int64), []
    for data, sampler in samplers:
        items = np.concatenate(sampler.batches())
        real = items[items < data.n_real]
        real_seen += np.bincount(data.targets[real], minlength=10)
        generated_seen.append(sorted(items[items >= data.n_real].tolist()))
    assert len(samplers) == 2 and data.n_real == 609
    # 2 x 609 class-balanced draws: 121.8 per class, binomial std 10.5 (plain: 296 .. 30)
    assert np.abs(real_seen - 121.8).max() < 4.5 * 10.5, real_seen
    assert generated_seen == [list(range(609, 709))] * 2     # generated images once each
    [rec] = records(tmp_path / 'run')
    assert rec['resample'] is True and rec['mode'] == 'ce+resample+synthetic'
    assert rec['cls_loss'] == 'ce' and rec['loss_counts'] is None   # plain CE uses no counts


def test_loss_class_counts_exclude_generated_images_unless_asked(tmp_path):
    path = digits_pool_set(tmp_path, 'gen', per_class_n=10)
    device = torch.device('cpu')
    base = [*DIGITS, '--cls_loss=balanced_softmax', f'--synthetic={path}']
    gen = np.full(10, 10)
    for extra, source, counts in (([], 'real', COUNTS),
                                  (['--cls_counts_with_synthetic'], 'real+generated',
                                   np.add(COUNTS, 10)),
                                  (['--synthetic_only'], 'generated', gen)):
        cfg = cfg_of(*base, *extra)
        inputs = K.load_inputs(cfg, device)
        criterion, got = RL.build_criterion(cfg, inputs, gen)
        assert got == source and criterion.counts.tolist() == list(counts)
        assert RR.run_record(cfg, {'path': str(path), 'dropped': None}, gen, 1)[
            'loss_counts'] == source
    # one end-to-end run: logit adjustment with its tau, counts with the generated images
    logdir = tmp_path / 'la'
    out = run_main(*DIGITS, '--cls_epochs=1', '--cls_loss=logit_adjust', '--cls_la_tau=0.5',
                   f'--synthetic={path}', '--cls_counts_with_synthetic', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(logdir)
    assert (rec['cls_loss'], rec['la_tau'], rec['loss_counts']) == ('logit_adjust', 0.5,
                                                                    'real+generated')
    assert rec['mode'] == 'logit_adjust+synthetic' and rec['drw_epoch'] is None
    assert (logdir / 'results.txt').read_text().startswith('logit_adjust+synthetic digitslt')


def test_bad_loss_flags_are_refused_before_anything_is_written(tmp_path):
    logdir = tmp_path / 'run'
    for args, needle in ((['--cls_loss=focal'], '--cls_loss'),
                         (['--cls_drw_epoch=-1'], '--cls_drw_epoch'),
                         (['--cls_la_tau=nan'], '--cls_la_tau'),
                         (['--cls_la_tau=-0.5'], '--cls_la_tau'),
                         (['--cls_resample', '--synthetic_only', '--synthetic=x.npy'],
                          '--cls_resample')):
        out = run_main_in_process(*DIGITS, *args, f'--logdir={logdir}')
        assert_user_error(out, logdir, needle)


def test_a_resume_with_other_generated_images_is_refused(tmp_path):
    """A run trained with one generated set neither resumes nor calls itself finished with
    another (the two would be mixed in one classifier); the same set resumes."""
    first = digits_pool_set(tmp_path, 'first', per_class_n=5)
    other = digits_pool_set(tmp_path, 'other', per_class_n=5, shift=1)
    logdir = tmp_path / 'run'
    out = run_main(*DIGITS, '--cls_epochs=1', f'--synthetic={first}', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    for epochs in (1, 2):  # 'nothing to do' and a resume
        again = run_main(*DIGITS, f'--cls_epochs={epochs}', f'--synthetic={other}',
                         f'--logdir={logdir}')
        lines = again.stderr.strip().splitlines()
        assert again.returncode == 2 and len(lines) == 1 and 'synthetic_sha256' in lines[0]
    assert len(records(logdir)) == 1
    same = run_main(*DIGITS, '--cls_epochs=2', f'--synthetic={first}', f'--logdir={logdir}')
    assert same.returncode == 0 and 'resuming from' in same.stdout, same.stderr[-3000:]
