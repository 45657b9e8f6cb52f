# Shared logic of the experiment scripts in scripts/ (sourced, not run).
#
# A row script sets its settings and calls `row_train` and `row_eval`; see scripts/*lt_*.sh.
#
# Arguments (parsed by `parse_args`):  [--dry-run|-n] [DATA_ROOT [LOG_ROOT]]
# Environment (arguments win over the environment):
#   DATA_ROOT    dataset folder holding cifar-10-batches-py / cifar-100-python   (./data)
#   LOG_ROOT     folder of the run folders                                        (./logs)
#   DRY_RUN=1    print the commands only; run and write nothing
#   PYTHON       python interpreter                                               (python)
#   STATS_DIR    folder of the FID statistics                                     (./stats)
#   FID_CACHE    FID cache used for evaluation          (STATS_DIR/cifar10[0].train.npz)
#   EXTRA_FLAGS  extra main.py flags appended to every main.py command (they win), e.g.
#                EXTRA_FLAGS="--num_workers 8 --amp bf16"
#   Row scripts also take TOTAL_STEPS, BATCH_SIZE, SAVE_STEP, SAMPLE_STEP, EVAL_CKPT, OMEGA,
#   EVAL_BATCH, NUM_IMAGES, SAMPLE_METHOD, RUN_NAME (and FT_CKPT, DDPM_RUN for fine-tuning),
#   with the paper's values as defaults.
# Relative paths given as arguments or in the environment are relative to the caller's
# folder; the defaults and the commands run from the repository root.
#
# Re-running a script is safe: a finished training (its last checkpoint exists) and an
# evaluation already in the run's eval.jsonl (same ckpt_step, sample_method, omega,
# num_images) are skipped; an unfinished training resumes from its newest checkpoint
# (main.py --train resumes by itself).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_PWD="$PWD"
SCRIPT_NAME="$(basename "$0")"

die() {
    echo "$SCRIPT_NAME: error: $*" >&2
    exit 1
}

# absolute path of $1 against the caller's folder (the path need not exist)
abs_path() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$CALLER_PWD/${1#./}" ;;
    esac
}

# parse_args "NAME..." USAGE "$@": sets DRY_RUN (0/1) and the folders DATA_ROOT (default ./data)
# and LOG_ROOT (./logs); the positional arguments fill the variables NAME... in order (so
# "DATA_ROOT LOG_ROOT" for the table rows, "LOG_ROOT" for the proxy experiment); a folder not
# given as an argument comes from the environment, else its default
parse_args() {
    local -a names
    read -r -a names <<< "$1"
    local usage="$2"
    shift 2
    local -a pos=()
    DRY_RUN="${DRY_RUN:-0}"
    case "$DRY_RUN" in
        ''|0|false|no) DRY_RUN=0 ;;
        *) DRY_RUN=1 ;;
    esac
    while [ $# -gt 0 ]; do
        case "$1" in
            -n|--dry-run|--dry_run) DRY_RUN=1 ;;
            -h|--help)
                echo "usage: $SCRIPT_NAME $usage"
                awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                exit 0 ;;
            --) shift; pos+=("$@"); break ;;
            -*) echo "usage: $SCRIPT_NAME $usage" >&2; die "unknown option $1" ;;
            *) pos+=("$1") ;;
        esac
        shift
    done
    if [ "${#pos[@]}" -gt "${#names[@]}" ]; then
        echo "usage: $SCRIPT_NAME $usage" >&2
        die "too many arguments: ${pos[*]}"
    fi
    local i
    for i in "${!pos[@]}"; do
        printf -v "${names[$i]}" '%s' "${pos[$i]}"
    done
    if [ -n "${DATA_ROOT:-}" ]; then DATA_ROOT="$(abs_path "$DATA_ROOT")"; else DATA_ROOT=./data; fi
    if [ -n "${LOG_ROOT:-}" ]; then LOG_ROOT="$(abs_path "$LOG_ROOT")"; else LOG_ROOT=./logs; fi
    DATA_ROOT="${DATA_ROOT%/}"
    LOG_ROOT="${LOG_ROOT%/}"
    [ -n "$DATA_ROOT" ] || DATA_ROOT=/
    [ -n "$LOG_ROOT" ] || LOG_ROOT=/
    if [ -n "${STATS_DIR:-}" ]; then
        STATS_DIR="$(abs_path "$STATS_DIR")"
        STATS_DIR="${STATS_DIR%/}"
    else
        STATS_DIR=./stats
    fi
    if [ -z "${PYTHON:-}" ]; then
        if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
    fi
    # EXTRA_FLAGS: whitespace-separated main.py flags
    read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"
    cd "$REPO_ROOT"
}

# say MESSAGE: a progress line (also in dry-run)
say() {
    echo "[$SCRIPT_NAME] $*"
}

# run CMD ARGS...: echo the command (shell-quoted), then run it unless dry-run
run() {
    local quoted
    quoted="$(printf '%q ' "$@")"
    echo "+ ${quoted% }"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    "$@"
}

# main_py ARGS...: run main.py with ARGS and the EXTRA_FLAGS
main_py() {
    run "$PYTHON" main.py "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

# is_int NAME VALUE: die unless VALUE is a non-negative integer
is_int() {
    case "$2" in
        ''|*[!0-9]*) die "$1=$2: must be a non-negative integer" ;;
    esac
}

# eval_done LOGDIR CKPT METHOD OMEGA NUM_IMAGES: success when LOGDIR/eval.jsonl has a line of
# that evaluation (ckpt_step, sample_method, omega, num_images)
eval_done() {
    local jsonl="$1/eval.jsonl"
    [ -f "$jsonl" ] || return 1
    "$PYTHON" - "$jsonl" "$2" "$3" "$4" "$5" <<'EOF'
import json, sys
path, ckpt, method, omega, n = sys.argv[1:]
with open(path) as f:
    for line in f:
        try:
            r = json.loads(line)
            if (int(r.get('ckpt_step', -1)) == int(ckpt) and r.get('sample_method') == method
                    and abs(float(r.get('omega')) - float(omega)) < 1e-9
                    and int(r.get('num_images', -1)) == int(n)
                    and not r.get('during_training')):
                sys.exit(0)
        except (ValueError, TypeError, AttributeError):
            continue
sys.exit(1)
EOF
}

# row_train OUT_DIR FINAL_STEP ARGS...: train into OUT_DIR unless OUT_DIR/ckpt_FINAL_STEP.pt (the
# last checkpoint of the run) exists; ARGS are the main.py flags
row_train() {
    local out_dir="$1" final="$2"
    shift 2
    if [ -f "$out_dir/ckpt_$final.pt" ]; then
        say "skip training: $out_dir/ckpt_$final.pt exists (training already complete)"
        return 0
    fi
    if [ "$DRY_RUN" != 1 ]; then
        mkdir -p "$LOG_ROOT"
    fi
    say "training into $out_dir (resumes from its newest checkpoint, if any)"
    main_py --train "$@"
}

# row_eval LOGDIR: evaluate LOGDIR/ckpt_$EVAL_CKPT.pt with SAMPLE_METHOD, OMEGA, NUM_IMAGES,
# EVAL_BATCH and FID_CACHE, unless already in LOGDIR/eval.jsonl
row_eval() {
    local logdir="$1"
    if eval_done "$logdir" "$EVAL_CKPT" "$SAMPLE_METHOD" "$OMEGA" "$NUM_IMAGES"; then
        say "skip evaluation: $logdir/eval.jsonl already has ckpt_step $EVAL_CKPT," \
            "$SAMPLE_METHOD omega $OMEGA, $NUM_IMAGES images"
        return 0
    fi
    if [ "$DRY_RUN" != 1 ] && [ ! -f "$FID_CACHE" ]; then
        die "FID statistics $FID_CACHE not found; run scripts/make_stats.sh first"
    fi
    say "evaluating $logdir ckpt_step $EVAL_CKPT ($SAMPLE_METHOD, omega $OMEGA, $NUM_IMAGES images)"
    main_py --flagfile "$logdir/flagfile.txt" --logdir "$logdir" --root "$DATA_ROOT" \
        --fid_cache "$FID_CACHE" --ckpt_step "$EVAL_CKPT" \
        --num_images "$NUM_IMAGES" --batch_size "$EVAL_BATCH" \
        --notrain --eval --sample_method "$SAMPLE_METHOD" --omega "$OMEGA"
}

# row_setup DATASET DEFAULT_RUN_NAME: the flags every row shares; call after parse_args and
# after setting the row's defaults
row_setup() {
    DATASET="$1"                       # cifar10 or cifar100
    RUN_NAME="${RUN_NAME:-$2}"
    SAMPLE_METHOD="${SAMPLE_METHOD:-cfg}"
    if [ -n "${FID_CACHE:-}" ]; then FID_CACHE="$(abs_path "$FID_CACHE")"
    else FID_CACHE="$STATS_DIR/$DATASET.train.npz"; fi
    for v in TOTAL_STEPS BATCH_SIZE SAVE_STEP SAMPLE_STEP EVAL_CKPT EVAL_BATCH NUM_IMAGES; do
        is_int "$v" "${!v}"
    done
    [ "$TOTAL_STEPS" -ge 1 ] || die "TOTAL_STEPS=$TOTAL_STEPS: must be at least 1"
    RUN_DIR="$LOG_ROOT/$RUN_NAME"
    COMMON_FLAGS=(--flagfile "./config/$DATASET.txt" --parallel
                  --data_type "${DATASET}lt" --imb_factor 0.01 --img_size 32
                  --root "$DATA_ROOT" --conditional
                  --num_images "$NUM_IMAGES" --fid_cache "$FID_CACHE")
    local mode=''
    [ "$DRY_RUN" != 1 ] || mode=' (dry run)'
    say "$DATASET-LT run $RUN_NAME: data $DATA_ROOT, logs $LOG_ROOT$mode"
    if [ "$DRY_RUN" != 1 ] && [ ! -f "$FID_CACHE" ]; then
        say "warning: FID statistics $FID_CACHE not found: the evaluation will fail;" \
            "run scripts/make_stats.sh first"
    fi
}
