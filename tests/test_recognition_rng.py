"""The classifier's random stream belongs to training alone: evaluating on the test split (every
--cls_eval_every epochs, or filtering generated images) must not move it, so two runs that
differ only in how often they evaluate end with bit-identical weights, and the digit sets are
never mirrored by the crop / flip augmentation."""
import os

import torch

import recognition.classify as K
import recognition.data as RD
import recognition.loop as RL
from helpers import ROOT

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt')]


def cfg_of(*args):
    from absl import flags
    import main
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(main.expand_argv(['main.py', *map(str, args)]))
        return main.config()
    finally:
        flags.FLAGS.unparse_flags()


def final_weights(logdir):
    found = RL.newest_classifier_checkpoint(str(logdir))
    assert found is not None
    return found[1]['model']


def test_evaluation_frequency_does_not_change_training(tmp_path):
    common = [*DIGITS, '--cls_epochs=4', '--cls_milestones=3', '--cls_warmup=1']
    assert K.classify(cfg_of(*common, '--cls_eval_every=1', f'--logdir={tmp_path / "a"}'),
                      '') == 'done'
    assert K.classify(cfg_of(*common, '--cls_eval_every=0', f'--logdir={tmp_path / "b"}'),
                      '') == 'done'
    a, b = final_weights(tmp_path / 'a'), final_weights(tmp_path / 'b')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluation_loader_leaves_the_global_rng_alone():
    data = torch.utils.data.TensorDataset(torch.zeros(5, 1), torch.zeros(5))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    for _ in RD.evaluation_loader(data, 2):
        pass
    assert torch.equal(torch.rand(4), expected)


def test_digit_sets_are_never_flipped_by_the_classifier(monkeypatch, tmp_path):
    """--classify's augmentation crops digits but never mirrors them (a mirrored 2 is no digit);
    CIFAR images are flipped."""
    seen = []
    real_augment = RL.augment

    def spy(x, pad, hflip=True):
        seen.append(hflip)
        return real_augment(x, pad, hflip)

    monkeypatch.setattr(RL, 'augment', spy)
    assert K.classify(cfg_of(*DIGITS, '--cls_epochs=1', '--cls_eval_every=0',
                             f'--logdir={tmp_path / "d"}'), '') == 'done'
    assert seen and not any(seen)
    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).repeat(50, 3, 1, 1)
    torch.manual_seed(0)
    out = RD.augment(x, 0, hflip=False)
    assert torch.equal(out, x)
    torch.manual_seed(0)
    flipped = RD.augment(x, 0, hflip=True)
    assert any(torch.equal(f, x[0].flip(-1)) for f in flipped)
