#!/usr/bin/env bash
# CPU-scale evidence for long-tailed recognition with generated images, on digits-LT
# (config/demo.txt data: 609 images, 148 down to 15 per class, 8x8; 300 held-out test digits):
# trains DDPM (--cfg) and CBDM (--cb --tau 1.0) with the same budget (2,500 steps, batch 64,
# seed 0; the scripts/proxy_digits.sh settings), then for every classifier seed in SEEDS:
#   ce             small CNN on the real digits-LT (config/classify_digitslt.txt, 30 epochs)
#   ddpm, cbdm     the same plus images of that model filling every class up to 148
#   cas_ddpm, cas_cbdm
#                  Classification Accuracy Score: 148 generated images per class alone
# Generated images: cfg, omega OMEGA, --classify's default sampler for generated sets (SAMPLER
# auto: samplers.RECOMMENDED_SYNTHETIC) or SAMPLER with SAMPLE_STEPS, noise seeded by the seed.
#
# usage: scripts/digitslt_classify.sh [--dry-run] [LOG_ROOT]
#   LOG_ROOT (default ./logs) gets digits_ddpm, digits_cbdm and digitslt_cls_<row>_s<seed>.
#   Environment: SEEDS [0 1 2], TOTAL_STEPS [2500], OMEGA [1.0], SAMPLER [auto],
#   SAMPLE_STEPS [50, not with auto],
#   CLS_EPOCHS [30], PYTHON, EXTRA_FLAGS, DRY_RUN=1. Re-running skips what is done.
#   Ends with python scripts/collect_results.py LOG_ROOT (one row per classifier run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 'LOG_ROOT' '[--dry-run] [LOG_ROOT]' "$@"

SEEDS="${SEEDS:-0 1 2}"
TOTAL_STEPS="${TOTAL_STEPS:-2500}"
OMEGA="${OMEGA:-1.0}"
SAMPLER="${SAMPLER:-auto}"
SAMPLE_STEPS="${SAMPLE_STEPS:-50}"
CLS_EPOCHS="${CLS_EPOCHS:-30}"
for v in TOTAL_STEPS SAMPLE_STEPS CLS_EPOCHS; do
    is_int "$v" "${!v}"
done
for s in $SEEDS; do is_int SEEDS "$s"; done
[ "$TOTAL_STEPS" -ge 1 ] || die "TOTAL_STEPS=$TOTAL_STEPS: must be at least 1"
FINAL=$((TOTAL_STEPS - 1))
COMMON=(--flagfile ./config/demo.txt --total_steps "$TOTAL_STEPS" --batch_size 64 --seed 0
        --save_step "$TOTAL_STEPS" --sample_step 0 --conditional)

mode=''
[ "$DRY_RUN" != 1 ] || mode=' (dry run)'
say "digits-LT recognition: DDPM vs CBDM images, classifier seeds $SEEDS; logs $LOG_ROOT$mode"
row_train "$LOG_ROOT/digits_ddpm" "$FINAL" "${COMMON[@]}" --cfg --nocb \
    --logdir "$LOG_ROOT/digits_ddpm"
row_train "$LOG_ROOT/digits_cbdm" "$FINAL" "${COMMON[@]}" --cb --tau 1.0 \
    --logdir "$LOG_ROOT/digits_cbdm"

for seed in $SEEDS; do
    for row in ce ddpm cbdm cas_ddpm cas_cbdm; do
        run_dir="$LOG_ROOT/digitslt_cls_${row}_s$seed"
        if [ -f "$run_dir/eval.jsonl" ]; then
            say "skip $row seed $seed: $run_dir/eval.jsonl exists"
            continue
        fi
        args=(--flagfile ./config/classify_digitslt.txt --cls_epochs "$CLS_EPOCHS"
              --seed "$seed" --logdir "$run_dir")
        case "$row" in
            ce) ;;
            cas_*) args+=(--synthetic_logdir "$LOG_ROOT/digits_${row#cas_}" --synthetic_only) ;;
            *) args+=(--synthetic_logdir "$LOG_ROOT/digits_$row") ;;
        esac
        if [ "$row" != ce ]; then
            args+=(--ckpt_step "$FINAL" --sample_method cfg --omega "$OMEGA"
                   --batch_size 500 --synthetic_fill head)
            if [ "$SAMPLER" != auto ]; then
                args+=(--sampler "$SAMPLER" --sample_steps "$SAMPLE_STEPS")
            fi
        fi
        say "classifier $row, seed $seed into $run_dir"
        main_py "${args[@]}"
    done
done
if [ "$DRY_RUN" != 1 ]; then
    "$PYTHON" scripts/collect_results.py "$LOG_ROOT"
fi
say done
