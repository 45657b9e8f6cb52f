#!/usr/bin/env bash
# CPU-scale proxy experiment: does class balancing help the tail?
# DDPM (--cfg, no regulariser) vs CBDM (--cb --tau 1.0) on the long-tailed sklearn digits
# (config/demo.txt: 609 images, 148 down to 15 per class, 8x8), same step budget, batch and
# seed; then SAMPLE_SIZE/10 samples per class from each (cfg sampling, same omega, same noise)
# and scripts/proxy_eval.py: per-class / head / tail accuracy of a CNN trained on the full
# balanced digits, and improved precision/recall in that CNN's feature space. No downloads.
#
# usage: scripts/proxy_digits.sh [--dry-run] [LOG_ROOT]
#   LOG_ROOT (default ./logs) gets the run folders proxy_ddpm and proxy_cbdm, the classifier
#   cache proxy_classifier.pt and the table proxy_results.md (+ proxy_results.json).
#   Environment (defaults in brackets): TOTAL_STEPS [2500], BATCH_SIZE [64], SEED [0],
#   OMEGA [1.0], SAMPLE_SIZE [500: 50 per class], SAMPLER [ddpm: all T steps; or ddim],
#   SAMPLE_STEPS [100, DDIM only], SAMPLE_BATCH [500], PARALLEL [0; 1 = train and sample
#   the two models at the same time, one thread each], PYTHON, EXTRA_FLAGS, DRY_RUN=1.
#   Re-running skips a finished training (its last checkpoint exists), resumes an unfinished
#   one, skips existing sample sets and recomputes the table (seconds).
#   On 2 CPU cores the whole experiment takes well under an hour (see docs/proxy/results.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args 'LOG_ROOT' '[--dry-run] [LOG_ROOT]' "$@"

TOTAL_STEPS="${TOTAL_STEPS:-2500}"
BATCH_SIZE="${BATCH_SIZE:-64}"
SEED="${SEED:-0}"
OMEGA="${OMEGA:-1.0}"
SAMPLE_SIZE="${SAMPLE_SIZE:-500}"
SAMPLER="${SAMPLER:-ddpm}"
SAMPLE_STEPS="${SAMPLE_STEPS:-100}"
SAMPLE_BATCH="${SAMPLE_BATCH:-500}"
PARALLEL="${PARALLEL:-0}"
for v in TOTAL_STEPS BATCH_SIZE SEED SAMPLE_SIZE SAMPLE_STEPS SAMPLE_BATCH; do
    is_int "$v" "${!v}"
done
[ "$TOTAL_STEPS" -ge 1 ] || die "TOTAL_STEPS=$TOTAL_STEPS: must be at least 1"
[ "$SAMPLE_SIZE" -ge 60 ] || die "SAMPLE_SIZE=$SAMPLE_SIZE: need at least 6 samples per class (60)"
case "$SAMPLER" in ddpm|ddim) ;; *) die "SAMPLER=$SAMPLER: ddpm or ddim" ;; esac
# main.py writes omega into file names as a python float (1 -> 1.0)
OMEGA="$("$PYTHON" -c 'import sys; print(float(sys.argv[1]))' "$OMEGA" 2>/dev/null)" \
    || die "OMEGA=$OMEGA: not a number"
case "$PARALLEL" in ''|0|false|no) PARALLEL=0 ;; *) PARALLEL=1 ;; esac

FINAL=$((TOTAL_STEPS - 1))   # the last checkpoint of a run: ckpt_$FINAL.pt
# --sample_step 0: no grids during training (the --sample grid below is the one reported)
COMMON=(--flagfile ./config/demo.txt --total_steps "$TOTAL_STEPS" --batch_size "$BATCH_SIZE"
        --seed "$SEED" --save_step "$TOTAL_STEPS" --sample_step 0)
DDPM_FLAGS=(--conditional --cfg --nocb)
CBDM_FLAGS=(--conditional --cb --tau 1.0)
SAMPLE_FLAGS=(--sample_method cfg --omega "$OMEGA" --sampler "$SAMPLER")
[ "$SAMPLER" = ddpm ] || SAMPLE_FLAGS+=(--sample_steps "$SAMPLE_STEPS")

mode=''
[ "$DRY_RUN" != 1 ] || mode=' (dry run)'
say "digits-LT proxy: DDPM vs CBDM, $TOTAL_STEPS steps, batch $BATCH_SIZE, seed $SEED;" \
    "$SAMPLE_SIZE cfg samples (omega $OMEGA, $SAMPLER) each; logs $LOG_ROOT$mode"

SAMPLE_NAME="proxy_samples_STEP$FINAL"   # --sample writes LOGDIR/$SAMPLE_NAME.png / .npy
stem_of() {  # the --sample files of run folder $1 (without .png / .npy)
    echo "$1/$SAMPLE_NAME"
}

# pipeline NAME FLAGS...: train LOG_ROOT/proxy_NAME (unless finished), then sample it
pipeline() {
    local name="$1"
    shift
    local dir="$LOG_ROOT/proxy_$name"
    row_train "$dir" "$FINAL" "${COMMON[@]}" "$@" --logdir "$dir"
    local stem
    stem="$(stem_of "$dir")"
    if [ -f "$stem.npy" ] && [ -f "${stem}_labels.npy" ]; then
        say "skip sampling: $stem.npy exists"
    else
        say "sampling $SAMPLE_SIZE images from $dir/ckpt_$FINAL.pt"
        main_py --notrain --sample --flagfile "$dir/flagfile.txt" --logdir "$dir" \
            --ckpt_step "$FINAL" --sample_size "$SAMPLE_SIZE" --batch_size "$SAMPLE_BATCH" \
            --seed "$SEED" --sample_name "$SAMPLE_NAME" "${SAMPLE_FLAGS[@]}"
    fi
}

START=$SECONDS
if [ "$PARALLEL" = 1 ] && [ "$DRY_RUN" != 1 ]; then
    say "PARALLEL=1: both models at once, OMP_NUM_THREADS=1 each"
    mkdir -p "$LOG_ROOT"
    OMP_NUM_THREADS=1 pipeline ddpm "${DDPM_FLAGS[@]}" > "$LOG_ROOT/proxy_ddpm.log" 2>&1 &
    pid_ddpm=$!
    OMP_NUM_THREADS=1 pipeline cbdm "${CBDM_FLAGS[@]}" > "$LOG_ROOT/proxy_cbdm.log" 2>&1 &
    pid_cbdm=$!
    # Ctrl-C / kill: stop both pipelines (main.py saves a checkpoint on SIGTERM, so a re-run
    # resumes)
    stop_children() {
        for pid in "$pid_ddpm" "$pid_cbdm"; do
            pkill -TERM -P "$pid" 2>/dev/null || true
            kill -TERM "$pid" 2>/dev/null || true
        done
        wait 2>/dev/null || true
        die "interrupted"
    }
    trap stop_children INT TERM
    status=0
    wait "$pid_ddpm" || { status=1; echo "ddpm failed; see $LOG_ROOT/proxy_ddpm.log" >&2; }
    wait "$pid_cbdm" || { status=1; echo "cbdm failed; see $LOG_ROOT/proxy_cbdm.log" >&2; }
    trap - INT TERM
    [ "$status" = 0 ] || die "a pipeline failed"
else
    pipeline ddpm "${DDPM_FLAGS[@]}"
    pipeline cbdm "${CBDM_FLAGS[@]}"
fi
say "training and sampling: $((SECONDS - START)) s"

say "evaluating both sample sets"
run "$PYTHON" scripts/proxy_eval.py --log_root "$LOG_ROOT" --seed "$SEED" \
    --samples "DDPM=$(stem_of "$LOG_ROOT/proxy_ddpm").npy" \
    --samples "CBDM=$(stem_of "$LOG_ROOT/proxy_cbdm").npy" \
    --out "$LOG_ROOT/proxy_results.md" --json "$LOG_ROOT/proxy_results.json"
say "done in $((SECONDS - START)) s; table: $LOG_ROOT/proxy_results.md;" \
    "grids: $(stem_of "$LOG_ROOT/proxy_ddpm").png, $(stem_of "$LOG_ROOT/proxy_cbdm").png"
