#!/usr/bin/env bash
# CIFAR-100-LT (imb_factor 0.01), DDPM with classifier-free guidance (--cfg):
# trains 300001 steps (batch 64), evaluates ckpt 200000 with cfg omega 0.8 (eval batch 64);
# 50k images, the README's settings.
#
# usage: scripts/cifar100lt_ddpm.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-100-python; LOG_ROOT (default ./logs)
#   holds the run folder cifar100lt_ddpm. Needs scripts/make_stats.sh's FID statistics.
#   Environment: DATA_ROOT, LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS, TOTAL_STEPS, BATCH_SIZE,
#   SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA, EVAL_BATCH, NUM_IMAGES, RUN_NAME, ...
#   (see scripts/common.sh). Re-running resumes the training and skips what is done.
set -euo pipefail
DATASET=cifar100
source "$(dirname "${BASH_SOURCE[0]}")/rows/ddpm.sh"
