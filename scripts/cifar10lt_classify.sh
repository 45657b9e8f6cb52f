#!/usr/bin/env bash
# CIFAR-10-LT (imb_factor 0.01) long-tailed recognition, ResNet-32 with the LDAM-DRW protocol
# (config/classify_cifar10lt.txt): the cross-entropy baseline, the baseline plus images of the
# DDPM, CBDM and CBDM-augm runs (filling every class up to the largest), and the
# Classification Accuracy Score of each generator (generated images only).
#
# usage: scripts/cifar10lt_classify.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-10-batches-py; LOG_ROOT (default ./logs)
#   holds the generator runs of scripts/cifar10lt_{ddpm,cbdm,cbdm_augm}.sh and receives the
#   classifier runs cifar10lt_cls_<row>. Environment: CLS_ROWS, CLS_EPOCHS, SYN_FILL, CAS_FILL,
#   SYN_WEIGHT, SAMPLER, SAMPLE_STEPS, SAMPLE_BATCH (see scripts/rows/classify.sh), DATA_ROOT,
#   LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS (see scripts/common.sh). Re-running resumes the
#   classifiers and skips what is done; python scripts/collect_results.py LOG_ROOT tabulates.
set -euo pipefail
DATASET=cifar10
source "$(dirname "${BASH_SOURCE[0]}")/rows/classify.sh"
