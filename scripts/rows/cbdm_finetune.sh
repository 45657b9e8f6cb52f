#!/usr/bin/env bash
# One row of the paper's main table: CBDM fine-tuning of the DDPM run (--cb --tau 1.0 --finetune):
# Sourced by scripts/cifar10lt_cbdm_finetune.sh and scripts/cifar100lt_cbdm_finetune.sh, which set DATASET
# (cifar10 or cifar100); see them for the usage and the environment variables.
: "${DATASET:?set DATASET to cifar10 or cifar100}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_args 'DATA_ROOT LOG_ROOT' '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

FT_CKPT="${FT_CKPT:-200000}"            # the DDPM checkpoint that is fine-tuned
DDPM_RUN="${DDPM_RUN:-${DATASET}lt_ddpm}"     # the DDPM run (scripts/${DATASET}lt_ddpm.sh)
TOTAL_STEPS="${TOTAL_STEPS:-100001}"
BATCH_SIZE="${BATCH_SIZE:-48}"
SAVE_STEP="${SAVE_STEP:-50000}"
SAMPLE_STEP="${SAMPLE_STEP:-50000}"
is_int FT_CKPT "$FT_CKPT"
EVAL_CKPT="${EVAL_CKPT:-$((FT_CKPT + 50000))}"
OMEGA="${OMEGA:-2.0}"
EVAL_BATCH="${EVAL_BATCH:-512}"
NUM_IMAGES="${NUM_IMAGES:-50000}"
row_setup "$DATASET" ${DATASET}lt_ltdm_finetune
DDPM_DIR="$LOG_ROOT/$DDPM_RUN"
SOURCE_CKPT="$DDPM_DIR/ckpt_$FT_CKPT.pt"

# the pretrained checkpoint is needed unless the fine-tuning has a checkpoint to resume from
if [ ! -f "$SOURCE_CKPT" ] && ! compgen -G "$RUN_DIR/ckpt_*.pt" >/dev/null; then
    msg="the DDPM checkpoint $SOURCE_CKPT does not exist; run scripts/${DATASET}lt_ddpm.sh first"
    msg="$msg (with the same DATA_ROOT and LOG_ROOT) to train the DDPM model it fine-tunes"
    if [ "$DRY_RUN" = 1 ]; then
        say "warning: $msg"
    else
        die "$msg"
    fi
fi

# steps FT_CKPT+1 .. FT_CKPT+TOTAL_STEPS, ending with ckpt_$((FT_CKPT + TOTAL_STEPS)).pt
row_train "$RUN_DIR" "$((FT_CKPT + TOTAL_STEPS))" "${COMMON_FLAGS[@]}" --logdir "$DDPM_DIR" \
    --total_steps "$TOTAL_STEPS" --batch_size "$BATCH_SIZE" \
    --save_step "$SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --cb --tau 1.0 \
    --finetune --finetuned_logdir "$RUN_DIR" --ckpt_step "$FT_CKPT"
row_eval "$RUN_DIR"
say done
