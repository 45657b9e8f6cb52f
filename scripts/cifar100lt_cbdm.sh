#!/usr/bin/env bash
# CIFAR-100-LT (imb_factor 0.01), CBDM (--cb --tau 1.0):
# trains 300001 steps (batch 48), evaluates ckpt 300000 with cfg omega 1.6 (eval batch 64);
# 50k images, the README's settings.
#
# usage: scripts/cifar100lt_cbdm.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-100-python; LOG_ROOT (default ./logs)
#   holds the run folder cifar100lt_ltdm. Needs scripts/make_stats.sh's FID statistics.
#   Environment: DATA_ROOT, LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS, TOTAL_STEPS, BATCH_SIZE,
#   SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA, EVAL_BATCH, NUM_IMAGES, RUN_NAME, ...
#   (see scripts/common.sh). Re-running resumes the training and skips what is done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 2 '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

TOTAL_STEPS="${TOTAL_STEPS:-300001}"
BATCH_SIZE="${BATCH_SIZE:-48}"
SAVE_STEP="${SAVE_STEP:-100000}"
SAMPLE_STEP="${SAMPLE_STEP:-50000}"
EVAL_CKPT="${EVAL_CKPT:-300000}"
OMEGA="${OMEGA:-1.6}"
EVAL_BATCH="${EVAL_BATCH:-64}"
NUM_IMAGES="${NUM_IMAGES:-50000}"
row_setup cifar100 cifar100lt_ltdm

# training ends with ckpt_$((TOTAL_STEPS - 1)).pt
row_train "$RUN_DIR" "$((TOTAL_STEPS - 1))" "${COMMON_FLAGS[@]}" --logdir "$RUN_DIR" \
    --total_steps "$TOTAL_STEPS" --batch_size "$BATCH_SIZE" \
    --save_step "$SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --cb --tau 1.0
row_eval "$RUN_DIR"
say done
