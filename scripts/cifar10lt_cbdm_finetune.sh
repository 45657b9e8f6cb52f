#!/usr/bin/env bash
# CIFAR-10-LT (imb_factor 0.01), CBDM fine-tuning of the DDPM run (--cb --tau 1.0 --finetune):
# fine-tunes LOG_ROOT/cifar10lt_ddpm/ckpt_200000.pt (run scripts/cifar10lt_ddpm.sh first) for
# 100001 steps (batch 48), evaluates ckpt 250000 with cfg omega 2.0 (eval batch 512);
# 50k images, the README's settings.
#
# usage: scripts/cifar10lt_cbdm_finetune.sh [--dry-run] [DATA_ROOT [LOG_ROOT]]
#   DATA_ROOT (default ./data) holds cifar-10-batches-py; LOG_ROOT (default ./logs)
#   holds the run folder cifar10lt_ltdm_finetune. Needs scripts/make_stats.sh's FID statistics.
#   Environment: DATA_ROOT, LOG_ROOT, DRY_RUN=1, EXTRA_FLAGS, FT_CKPT, DDPM_RUN,
#   TOTAL_STEPS, BATCH_SIZE,
#   SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA, EVAL_BATCH, NUM_IMAGES, RUN_NAME, ...
#   (see scripts/common.sh). Re-running resumes the training and skips what is done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 2 '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

FT_CKPT="${FT_CKPT:-200000}"            # the DDPM checkpoint that is fine-tuned
DDPM_RUN="${DDPM_RUN:-cifar10lt_ddpm}"     # the DDPM run (scripts/cifar10lt_ddpm.sh)
TOTAL_STEPS="${TOTAL_STEPS:-100001}"
BATCH_SIZE="${BATCH_SIZE:-48}"
SAVE_STEP="${SAVE_STEP:-50000}"
SAMPLE_STEP="${SAMPLE_STEP:-50000}"
is_int FT_CKPT "$FT_CKPT"
EVAL_CKPT="${EVAL_CKPT:-$((FT_CKPT + 50000))}"
OMEGA="${OMEGA:-2.0}"
EVAL_BATCH="${EVAL_BATCH:-512}"
NUM_IMAGES="${NUM_IMAGES:-50000}"
row_setup cifar10 cifar10lt_ltdm_finetune
DDPM_DIR="$LOG_ROOT/$DDPM_RUN"
SOURCE_CKPT="$DDPM_DIR/ckpt_$FT_CKPT.pt"

# the pretrained checkpoint is needed unless the fine-tuning has a checkpoint to resume from
if [ ! -f "$SOURCE_CKPT" ] && ! compgen -G "$RUN_DIR/ckpt_*.pt" >/dev/null; then
    msg="the DDPM checkpoint $SOURCE_CKPT does not exist; run scripts/cifar10lt_ddpm.sh first"
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
