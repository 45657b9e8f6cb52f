import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('OMP_NUM_THREADS', '1')


@pytest.fixture(scope='session', autouse=True)
def shared_folder(tmp_path_factory):
    """The folder where helpers.built_once keeps what is built once per pytest run: the run's
    own base temp folder, which under xdist is the parent of every worker's (pytest-N/), so the
    workers share it and a later run never sees it (each run gets a new pytest-N). Its path is
    put in $CBDM_TEST_SHARED for the helpers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    folder = base / 'shared'
    folder.mkdir(exist_ok=True)
    os.environ['CBDM_TEST_SHARED'] = str(folder)
    return folder


# The files that take longest, longest first (by their CPU seconds: main.py start-ups, scripts,
# Inception and classifier epochs; see the report of issue 22 item 15). pytest.ini hands whole
# files to the two workers (--dist loadfile) in collection order (--no-loadscope-reorder), so
# the longest are started first and the short ones fill in at the end: both workers finish
# near the same time. Files not named here (new ones too) keep their order after these.
SLOW_FIRST = ['test_mnistlt.py', 'test_scripts.py', 'test_classify.py', 'test_seed_commands.py',
              'test_feature_aug.py', 'test_flag_domains.py', 'test_sampler_digits.py',
              'test_fast_samplers.py', 'test_sampling_clip.py', 'test_eval.py',
              'test_translate.py', 'test_fidelity.py', 'test_reliability.py',
              'test_sampler_table.py', 'test_sample_names.py', 'test_score.py']


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: keeps the rest
