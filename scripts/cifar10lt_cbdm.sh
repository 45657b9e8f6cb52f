#!/usr/bin/env bash
# CIFAR-10-LT (imb_factor 0.01), CBDM (--cb --tau 1.0):
# trains 300001 steps (batch 48), evaluates ckpt 300000 with cfg omega 1.6 (eval batch 64);
# 50k images, the README's settings.
#
# usage: scripts/cifar10lt_cbdm.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-10-batches-py; LOG_ROOT (default ./logs)
#   holds the run folder cifar10lt_ltdm. Needs scripts/make_stats.sh's FID statistics.
#   Environment: DATA_ROOT, LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS, TOTAL_STEPS, BATCH_SIZE,
#   SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA, EVAL_BATCH, NUM_IMAGES, RUN_NAME, ...
#   (see scripts/common.sh). Re-running resumes the training and skips what is done.
set -euo pipefail
DATASET=cifar10
source "$(dirname "${BASH_SOURCE[0]}")/rows/cbdm.sh"
