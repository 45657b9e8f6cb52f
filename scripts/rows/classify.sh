#!/usr/bin/env bash
# Long-tailed recognition with generated images (the LDAM-DRW protocol: ResNet-32, 200 epochs,
# config/classify_${DATASET}lt.txt) on ${DATASET}-LT at imbalance 100 (imb_factor 0.01):
#   ce             cross-entropy on the real long-tailed training set (the baseline)
#   ddpm, cbdm, cbdm_augm
#                  the same plus images drawn from that generator run (scripts/*lt_<row>.sh)
#                  that fill every class up to the largest class (SYN_FILL=head)
#   cas_ddpm, cas_cbdm, cas_cbdm_augm
#                  Classification Accuracy Score: generated images alone (balanced, the largest
#                  class's count per class), tested on the real test split
# Sourced by scripts/cifar10lt_classify.sh and scripts/cifar100lt_classify.sh, which set
# DATASET (cifar10 or cifar100). Environment (besides scripts/common.sh's): CLS_ROWS (the rows
# to run, default all seven), CLS_EPOCHS (200), SYN_FILL (head, or N per class), CAS_FILL
# (head), SYN_WEIGHT (1.0), SAMPLER (auto: --classify's default for generated sets,
# samplers.RECOMMENDED_SYNTHETIC; or a sampler name with SAMPLE_STEPS, e.g. ddpm), SAMPLE_STEPS
# (50, not with auto), SAMPLE_BATCH (512, the sampling batch). Each generator is sampled at its row's
# evaluation checkpoint and omega (ddpm 200000 / 0.8, cbdm 300000 / 1.6, cbdm_augm 500000 /
# 1.4, as scripts/rows/*.sh). Runs land in LOG_ROOT/${DATASET}lt_cls_<row>.
: "${DATASET:?set DATASET to cifar10 or cifar100}"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_args 'DATA_ROOT LOG_ROOT' '[--dry-run] [DATA_ROOT [LOG_ROOT]]' "$@"

CLS_ROWS="${CLS_ROWS:-ce ddpm cbdm cbdm_augm cas_ddpm cas_cbdm cas_cbdm_augm}"
CLS_EPOCHS="${CLS_EPOCHS:-200}"
SYN_FILL="${SYN_FILL:-head}"
CAS_FILL="${CAS_FILL:-head}"
SYN_WEIGHT="${SYN_WEIGHT:-1.0}"
SAMPLER="${SAMPLER:-auto}"
SAMPLE_STEPS="${SAMPLE_STEPS:-50}"
SAMPLE_BATCH="${SAMPLE_BATCH:-512}"
for v in CLS_EPOCHS SAMPLE_STEPS SAMPLE_BATCH; do
    is_int "$v" "${!v}"
done
[ "$CLS_EPOCHS" -ge 1 ] || die "CLS_EPOCHS=$CLS_EPOCHS: must be at least 1"
case "$SYN_FILL" in head) ;; *) is_int SYN_FILL "$SYN_FILL" ;; esac
case "$CAS_FILL" in head) ;; *) is_int CAS_FILL "$CAS_FILL" ;; esac

# generator row -> "run folder  checkpoint  omega" (the evaluation settings of scripts/rows/)
generator() {
    case "$1" in
        ddpm) echo "${DATASET}lt_ddpm 200000 0.8" ;;
        cbdm) echo "${DATASET}lt_ltdm 300000 1.6" ;;
        cbdm_augm) echo "${DATASET}lt_ltdm_augm 500000 1.4" ;;
    esac
}

# cls_done LOGDIR: success when the classifier run LOGDIR has written its result
cls_done() {
    [ -f "$1/eval.jsonl" ] && grep -q '"kind": "classify"' "$1/eval.jsonl"
}

# every row's flags, and the generator checkpoints checked before hours of training
declare -A ROW_ARGS
for row in $CLS_ROWS; do
    case "$row" in
        ce|ddpm|cbdm|cbdm_augm|cas_ddpm|cas_cbdm|cas_cbdm_augm) ;;
        *) die "CLS_ROWS: unknown row $row" \
               "(ce ddpm cbdm cbdm_augm cas_ddpm cas_cbdm cas_cbdm_augm)" ;;
    esac
    run_dir="$LOG_ROOT/${DATASET}lt_cls_$row"
    args="--logdir $(printf '%q' "$run_dir")"
    [ "$row" != ce ] || { ROW_ARGS[$row]="$args"; continue; }
    gen_row="${row#cas_}"
    read -r gen_run gen_ckpt gen_omega <<< "$(generator "$gen_row")"
    gen_dir="$LOG_ROOT/$gen_run"
    if [ ! -f "$gen_dir/ckpt_$gen_ckpt.pt" ] && ! cls_done "$run_dir"; then
        msg="the generator checkpoint $gen_dir/ckpt_$gen_ckpt.pt does not exist; run"
        msg="$msg scripts/${DATASET}lt_$gen_row.sh first (same DATA_ROOT and LOG_ROOT)"
        if [ "$DRY_RUN" = 1 ]; then say "warning: $msg"; else die "$msg"; fi
    fi
    args="$args --synthetic_logdir $(printf '%q' "$gen_dir") --ckpt_step $gen_ckpt"
    args="$args --sample_method cfg --omega $gen_omega --batch_size $SAMPLE_BATCH"
    if [ "$SAMPLER" != auto ]; then
        args="$args --sampler $(printf '%q' "$SAMPLER") --sample_steps $SAMPLE_STEPS"
    fi
    if [ "$row" = "$gen_row" ]; then
        args="$args --synthetic_fill $SYN_FILL --synthetic_weight $(printf '%q' "$SYN_WEIGHT")"
    else
        args="$args --synthetic_fill $CAS_FILL --synthetic_only"
    fi
    ROW_ARGS[$row]="$args"
done

mode=''
[ "$DRY_RUN" != 1 ] || mode=' (dry run)'
say "$DATASET-LT long-tailed recognition ($CLS_ROWS): data $DATA_ROOT, logs $LOG_ROOT$mode"
for row in $CLS_ROWS; do
    run_dir="$LOG_ROOT/${DATASET}lt_cls_$row"
    if cls_done "$run_dir"; then
        say "skip $row: $run_dir/eval.jsonl has its result"
        continue
    fi
    eval "row_args=(${ROW_ARGS[$row]})"
    if [ "$DRY_RUN" != 1 ]; then mkdir -p "$LOG_ROOT"; fi
    say "classifier $row into $run_dir (resumes from its newest checkpoint, if any)"
    main_py --flagfile "./config/classify_${DATASET}lt.txt" --root "$DATA_ROOT" \
        --cls_epochs "$CLS_EPOCHS" "${row_args[@]}"
done
say done
