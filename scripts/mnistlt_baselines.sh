#!/usr/bin/env bash
# The long-tail baselines on MNIST-LT (config/classify_mnistlt.txt: 988 training images, 400
# down to 4 per class, 16x16, the small CNN, 30 epochs; 1,000 balanced test digits), one
# classifier per row and seed, then a markdown table of top-1 overall / many / medium / few,
# mean ± std over the seeds:
#   ce                cross-entropy
#   ce_drw            cross-entropy with deferred re-weighting (from --cls_drw_epoch)
#   ldam_drw          LDAM margins, cosine head, deferred re-weighting
#   balanced_softmax  cross-entropy on logits + log n_c
#   logit_adjust      cross-entropy on logits + tau log pi_c (tau 1)
#   ce_resample       cross-entropy on class-balanced re-sampled batches (--cls_resample)
#
# usage: scripts/mnistlt_baselines.sh [--dry-run] [LOG_ROOT [TABLE]]
#   LOG_ROOT (default ./logs) gets mnistlt_cls_<row>_s<seed>; TABLE (default
#   docs/mnistlt_baselines.md) the table (scripts/table_seeds.py).
#   Environment: SEEDS [0 1 2], ROWS [the six above], CLS_EPOCHS and DRW_EPOCH [the config's 30
#   and 24], PYTHON, EXTRA_FLAGS, DRY_RUN=1. Re-running skips every run whose eval.jsonl exists
#   and resumes an interrupted one; the table is always rewritten from what is in LOG_ROOT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 'LOG_ROOT TABLE' '[--dry-run] [LOG_ROOT [TABLE]]' "$@"

if [ -n "${TABLE:-}" ]; then TABLE="$(abs_path "$TABLE")"; else TABLE=docs/mnistlt_baselines.md; fi
SEEDS="${SEEDS:-0 1 2}"
ROWS="${ROWS:-ce ce_drw ldam_drw balanced_softmax logit_adjust ce_resample}"
OVERRIDES=()
if [ -n "${CLS_EPOCHS:-}" ]; then
    is_int CLS_EPOCHS "$CLS_EPOCHS"
    [ "$CLS_EPOCHS" -ge 1 ] || die "CLS_EPOCHS=$CLS_EPOCHS: must be at least 1"
    OVERRIDES+=(--cls_epochs "$CLS_EPOCHS")
fi
if [ -n "${DRW_EPOCH:-}" ]; then
    is_int DRW_EPOCH "$DRW_EPOCH"
    OVERRIDES+=(--cls_drw_epoch "$DRW_EPOCH")
fi
for s in $SEEDS; do is_int SEEDS "$s"; done
[ -n "$SEEDS" ] || die "SEEDS is empty"

# row_flags ROW: the main.py flags of a row
row_flags() {
    case "$1" in
        ce|ce_drw|ldam_drw|balanced_softmax|logit_adjust) echo "--cls_loss $1" ;;
        ce_resample) echo "--cls_loss ce --cls_resample" ;;
        *) die "ROWS: unknown row $1 (ce ce_drw ldam_drw balanced_softmax logit_adjust ce_resample)" ;;
    esac
}
for row in $ROWS; do row_flags "$row" >/dev/null; done

mode=''
[ "$DRY_RUN" != 1 ] || mode=' (dry run)'
say "MNIST-LT long-tail baselines ($ROWS), seeds $SEEDS; logs $LOG_ROOT, table $TABLE$mode"
for seed in $SEEDS; do
    for row in $ROWS; do
        run_dir="$LOG_ROOT/mnistlt_cls_${row}_s$seed"
        if [ -f "$run_dir/eval.jsonl" ]; then
            say "skip $row seed $seed: $run_dir/eval.jsonl exists"
            continue
        fi
        read -r -a flags <<< "$(row_flags "$row")"
        if [ "$DRY_RUN" != 1 ]; then mkdir -p "$LOG_ROOT"; fi
        say "classifier $row, seed $seed into $run_dir"
        main_py --flagfile ./config/classify_mnistlt.txt "${flags[@]}" --seed "$seed" \
            --logdir "$run_dir" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
    done
done

order=()
labels=()
for row in $ROWS; do
    order+=("mnistlt_cls_$row")
    case "$row" in
        ce) text='cross-entropy' ;;
        ce_drw) text='CE + DRW' ;;
        ldam_drw) text='LDAM-DRW' ;;
        balanced_softmax) text='balanced softmax' ;;
        logit_adjust) text='logit adjustment (tau 1)' ;;
        ce_resample) text='CE + class-balanced re-sampling' ;;
    esac
    labels+=(--label "mnistlt_cls_$row=$text")
done
say "table of mean ± std over seeds $SEEDS into $TABLE"
run "$PYTHON" scripts/table_seeds.py "$LOG_ROOT" --runs 'mnistlt_cls_*' --first loss \
    --order "${order[@]}" "${labels[@]}" --out "$TABLE"
say done
