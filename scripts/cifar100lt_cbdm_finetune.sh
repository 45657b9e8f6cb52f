#!/usr/bin/env bash
# CIFAR-100-LT (imb_factor 0.01), CBDM fine-tuning of the DDPM run (--cb --tau 1.0 --finetune):
# fine-tunes LOG_ROOT/cifar100lt_ddpm/ckpt_200000.pt (run scripts/cifar100lt_ddpm.sh first) for
# 100001 steps (batch 48), evaluates ckpt 250000 with cfg omega 2.0 (eval batch 512);
# 50k images, the README's settings.
#
# usage: scripts/cifar100lt_cbdm_finetune.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-100-python; LOG_ROOT (default ./logs)
#   holds the run folder cifar100lt_ltdm_finetune. Needs scripts/make_stats.sh's FID statistics.
#   Environment: DATA_ROOT, LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS, FT_CKPT, DDPM_RUN,
#   TOTAL_STEPS, BATCH_SIZE,
#   SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA, EVAL_BATCH, NUM_IMAGES, RUN_NAME, ...
#   (see scripts/common.sh). Re-running resumes the training and skips what is done.
set -euo pipefail
DATASET=cifar100
source "$(dirname "${BASH_SOURCE[0]}")/rows/cbdm_finetune.sh"
