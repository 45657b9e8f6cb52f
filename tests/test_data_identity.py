"""A run folder records the identity of its training data (LOGDIR/data.json: data type, the
long-tail draw, image size, per-class counts, a hash of the chosen items) when a run starts,
and refuses to resume, or to say "nothing to do", on other data: one line naming what differs,
before flagfile.txt or anything else is rewritten; --noresume starts over. A folder written
before records existed resumes with one warning line and gets its record."""
import json
import os
import shutil

import numpy as np
import pytest

import dataset as D
import runfolder
from helpers import ROOT, TINY, run_main, run_main_in_process
from utils import UserError

DIGITS = ['--flagfile', os.path.join(ROOT, 'config', 'classify_digitslt.txt')]


def identity(data_type='digitslt', root='', img_size=8, imb_factor=0.1, imb_type='exp'):
    ds = D.build_dataset(data_type, root, img_size, imb_factor, imb_type, hflip=False)
    return D.data_identity(ds, data_type, root, imb_factor, imb_type)


def image_folder(root, sizes):
    """root/CLASS/i.png: {class: [image side in pixels, one per image]}."""
    from PIL import Image
    rng = np.random.RandomState(0)
    for cls, sides in sizes.items():
        os.makedirs(root / cls, exist_ok=True)
        for i, s in enumerate(sides):
            arr = rng.randint(0, 256, size=(s, s, 3)).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f'{i}.png')
    return str(root)


def errors(out):
    return [ln for ln in out.stderr.splitlines() if ln.startswith('error:')]


def warnings(out):
    return [ln for ln in out.stderr.splitlines() if ln.startswith('warning:')]


# ----------------------------------------------------------------------------------------------
# what identifies a training set (dataset.data_identity)

def test_identity_of_a_long_tail_draw():
    base = identity()
    assert base == identity() and json.loads(json.dumps(base)) == base
    assert base['data_type'] == 'digitslt' and base['img_size'] == 8
    assert base['class_counts'] == [148, 117, 88, 71, 54, 42, 32, 24, 18, 15]
    assert base['images'] == 609 and base['imb_factor'] == 0.1 and base['imb_type'] == 'exp'
    other = identity(imb_factor=0.5)
    assert {k for k in base if base[k] != other[k]} == {'imb_factor', 'class_counts', 'images',
                                                         'items_sha256'}
    bigger = identity(img_size=16)
    assert {k for k in base if base[k] != bigger[k]} == {'img_size'}  # the same images
    step = identity(imb_type='step')
    assert step['items_sha256'] != base['items_sha256']


def test_identity_of_an_image_folder_follows_its_files_not_its_place(tmp_path):
    root = image_folder(tmp_path / 'a', {'cat': [8, 9, 10], 'dog': [8]})
    base = identity('imagefolder', root)
    assert base['class_counts'] == [3, 1] and 'imb_factor' not in base
    assert identity('imagefolder', root, imb_factor=0.5) == base  # not applied to a folder
    shutil.copytree(root, tmp_path / 'b')
    assert identity('imagefolder', str(tmp_path / 'b')) == base  # moved: the same data
    image_folder(tmp_path / 'b', {'cat': [12]})  # cat/0.png replaced by a larger image
    changed = identity('imagefolder', str(tmp_path / 'b'))
    assert {k for k in base if base[k] != changed[k]} == {'items_sha256'}
    os.rename(tmp_path / 'a' / 'cat' / '2.png', tmp_path / 'a' / 'cat' / '3.png')
    assert identity('imagefolder', root)['items_sha256'] != base['items_sha256']


# ----------------------------------------------------------------------------------------------
# the record of a run folder (runfolder.check_data_record / write_data_record)

def test_record_written_atomically_and_compared(tmp_path, capsys):
    folder = str(tmp_path / 'run')
    runfolder.check_data_record(folder, identity(), resume=True)  # a new folder: nothing said
    os.makedirs(folder)
    runfolder.write_data_record(folder, identity())
    assert os.listdir(folder) == ['data.json']  # no temporary left
    with open(os.path.join(folder, 'data.json')) as f:
        assert json.load(f) == identity()
    runfolder.check_data_record(folder, identity(), resume=True)
    assert capsys.readouterr().err == ''
    with pytest.raises(UserError) as e:
        runfolder.check_data_record(folder, identity(imb_factor=0.5), resume=True,
                                    flag='--finetuned_logdir')
    text = str(e.value)
    assert '\n' not in text and '--finetuned_logdir' in text and folder in text
    assert 'imb_factor 0.1' in text and '0.5' in text and '--noresume' in text
    assert 'items_sha256' not in text  # explained by the imbalance already
    runfolder.check_data_record(folder, identity(imb_factor=0.5), resume=False)  # starts over
    with pytest.raises(UserError, match='img_size 8'):
        runfolder.check_data_record(folder, identity(img_size=16), resume=True)


def test_an_unrecorded_or_unreadable_folder(tmp_path, capsys):
    folder = tmp_path / 'old'
    folder.mkdir()
    runfolder.check_data_record(str(folder), identity(), resume=True)  # empty: new
    assert capsys.readouterr().err == ''
    (folder / 'ckpt_0.pt').write_bytes(b'x')
    runfolder.check_data_record(str(folder), identity(), resume=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning:')
    assert 'could not be checked' in lines[0] and str(folder) in lines[0]
    (folder / 'data.json').write_text('{"data_type": ')
    with pytest.raises(UserError, match='data.json'):
        runfolder.check_data_record(str(folder), identity(), resume=True)


# ----------------------------------------------------------------------------------------------
# diffusion training (train.py), fine-tuning included

def test_training_refuses_to_resume_on_other_data(tmp_path):
    logdir = tmp_path / 'run'
    tiny = ['--train', *TINY, '--conditional', '--save_step=1', '--sample_step=0',
            f'--logdir={logdir}']
    out = run_main(*tiny, '--total_steps=2')
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((logdir / 'data.json').read_text())
    assert record == identity() and record['imb_factor'] == 0.1
    flagfile = (logdir / 'flagfile.txt').read_text()
    # interrupted (or finished) and rerun on another long-tail draw: refused, nothing written
    for steps in (3, 2):
        out = run_main_in_process(*tiny, f'--total_steps={steps}', '--imb_factor=0.5')
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        assert len(errors(out)) == 1 and 'imb_factor 0.1' in errors(out)[0], out.stderr
        assert 'nothing to do' not in out.stdout
        assert (logdir / 'flagfile.txt').read_text() == flagfile
        assert not (logdir / 'ckpt_2.pt').exists()
        assert json.loads((logdir / 'data.json').read_text()) == record
    # a folder from before the record: resumes with one warning, and is recorded
    (logdir / 'data.json').unlink()
    out = run_main(*tiny, '--total_steps=3')
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'resuming from' in out.stdout and (logdir / 'ckpt_2.pt').exists()
    assert len(warnings(out)) == 1 and 'could not be checked' in warnings(out)[0], out.stderr
    assert json.loads((logdir / 'data.json').read_text()) == record
    # fine-tuning into a new folder records its own data, and its resume is checked too
    ft = ['--train', *TINY, '--conditional', '--finetune', '--cb', '--ckpt_step=1',
          '--finetuned_logdir=ft', '--save_step=1', '--sample_step=0', f'--logdir={logdir}']
    out = run_main(*ft, '--total_steps=1')
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / 'ft' / 'data.json').read_text()) == record
    out = run_main_in_process(*ft, '--total_steps=2', '--imb_factor=0.5')
    assert out.returncode == 2 and len(errors(out)) == 1, out.stderr[-3000:]
    assert '--finetuned_logdir' in errors(out)[0] and 'imb_factor' in errors(out)[0]
    # --noresume starts over on the new data
    out = run_main(*tiny, '--total_steps=1', '--imb_factor=0.5', '--noresume')
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((logdir / 'data.json').read_text()) == identity(imb_factor=0.5)
    assert '--imb_factor=0.5' in (logdir / 'flagfile.txt').read_text().splitlines()
    # ckpt_1 and ckpt_2 are left from the old data and newer than the new run's ckpt_0: refused
    out = run_main_in_process(*tiny, '--total_steps=3', '--imb_factor=0.5')
    assert out.returncode == 2 and len(errors(out)) == 1, out.stderr[-3000:]
    assert 'ckpt_2.pt was trained on other data' in errors(out)[0]


# ----------------------------------------------------------------------------------------------
# the classifier (--classify)

def test_classifier_refuses_to_resume_on_other_data(tmp_path):
    logdir = tmp_path / 'cls'
    args = ['--classify', *DIGITS, '--cls_eval_every=0', '--cls_warmup=0', '--cls_milestones=1',
            f'--logdir={logdir}']
    out = run_main(*args, '--cls_epochs=1')
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((logdir / 'data.json').read_text()) == identity()
    flagfile = (logdir / 'flagfile.txt').read_text()
    # finished ("nothing to do") and unfinished (resume) on another draw: both refused
    for epochs in (1, 2):
        out = run_main_in_process(*args, f'--cls_epochs={epochs}', '--imb_factor=0.5')
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        assert len(errors(out)) == 1 and 'imb_factor 0.1' in errors(out)[0], out.stderr
        assert 'nothing to do' not in out.stdout
        assert (logdir / 'flagfile.txt').read_text() == flagfile
    out = run_main(*args, '--cls_epochs=1')  # the same data: nothing to do, as before
    assert out.returncode == 0 and 'nothing to do' in out.stdout, out.stderr[-3000:]


def test_classifier_refuses_an_image_folder_whose_files_changed(tmp_path):
    train = image_folder(tmp_path / 'train', {'a': [8, 8, 8, 8], 'b': [8, 8]})
    test = image_folder(tmp_path / 'test', {'a': [8], 'b': [8]})
    logdir = tmp_path / 'cls'
    args = ['--classify', '--data_type=imagefolder', f'--root={train}', f'--test_root={test}',
            '--img_size=8', '--cls_arch=cnn', '--cls_epochs=1', '--cls_batch_size=2',
            '--cls_warmup=0', '--cls_eval_every=0', '--num_workers=0', f'--logdir={logdir}']
    out = run_main(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    image_folder(tmp_path / 'train', {'b': [10]})  # b/0.png replaced: same names and counts
    out = run_main_in_process(*args)
    assert out.returncode == 2 and len(errors(out)) == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert 'items_sha256' in errors(out)[0] and 'nothing to do' not in out.stdout
