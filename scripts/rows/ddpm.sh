#!/usr/bin/env bash
# One row of the paper's main table: DDPM with classifier-free guidance (--cfg):
# Sourced by scripts/cifar10lt_ddpm.sh and scripts/cifar100lt_ddpm.sh, which set DATASET
# (cifar10 or cifar100); see them for the usage and the environment variables.
: "${DATASET:?set DATASET to cifar10 or cifar100}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_args 'DATA_ROOT LOG_ROOT' '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

TOTAL_STEPS="${TOTAL_STEPS:-300001}"
BATCH_SIZE="${BATCH_SIZE:-64}"
SAVE_STEP="${SAVE_STEP:-100000}"
SAMPLE_STEP="${SAMPLE_STEP:-50000}"
EVAL_CKPT="${EVAL_CKPT:-200000}"
OMEGA="${OMEGA:-0.8}"
EVAL_BATCH="${EVAL_BATCH:-64}"
NUM_IMAGES="${NUM_IMAGES:-50000}"
row_setup "$DATASET" ${DATASET}lt_ddpm

# training ends with ckpt_$((TOTAL_STEPS - 1)).pt
row_train "$RUN_DIR" "$((TOTAL_STEPS - 1))" "${COMMON_FLAGS[@]}" --logdir "$RUN_DIR" \
    --total_steps "$TOTAL_STEPS" --batch_size "$BATCH_SIZE" \
    --save_step "$SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --cfg
row_eval "$RUN_DIR"
say done
