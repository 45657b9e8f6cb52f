#!/usr/bin/env bash
# One row of the paper's main table: CBDM with ADA augmentation (--cb --tau 1.0 --augm):
# Sourced by scripts/cifar10lt_cbdm_augm.sh and scripts/cifar100lt_cbdm_augm.sh, which set DATASET
# (cifar10 or cifar100); see them for the usage and the environment variables.
: "${DATASET:?set DATASET to cifar10 or cifar100}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_args 'DATA_ROOT LOG_ROOT' '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

TOTAL_STEPS="${TOTAL_STEPS:-500001}"
BATCH_SIZE="${BATCH_SIZE:-48}"
SAVE_STEP="${SAVE_STEP:-100000}"
SAMPLE_STEP="${SAMPLE_STEP:-50000}"
EVAL_CKPT="${EVAL_CKPT:-500000}"
OMEGA="${OMEGA:-1.4}"
EVAL_BATCH="${EVAL_BATCH:-192}"
NUM_IMAGES="${NUM_IMAGES:-50000}"
row_setup "$DATASET" ${DATASET}lt_ltdm_augm

# training ends with ckpt_$((TOTAL_STEPS - 1)).pt
row_train "$RUN_DIR" "$((TOTAL_STEPS - 1))" "${COMMON_FLAGS[@]}" --logdir "$RUN_DIR" \
    --total_steps "$TOTAL_STEPS" --batch_size "$BATCH_SIZE" \
    --save_step "$SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --cb --tau 1.0 --augm
row_eval "$RUN_DIR"
say done
