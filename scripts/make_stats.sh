#!/usr/bin/env bash
# FID statistics of the balanced CIFAR-10 and CIFAR-100 training sets (the references of all
# evaluations): STATS_DIR/cifar10.train.npz and STATS_DIR/cifar100.train.npz, each with the
# Inception features for precision/recall/F_beta beside it (*.train_feats.npz).
#
# usage: scripts/make_stats.sh [--dry-run] [DATA_ROOT]
#   DATA_ROOT (default ./data) holds cifar-10-batches-py and cifar-100-python.
#   Environment: DATA_ROOT, DRY_RUN=1, STATS_DIR (./stats), DATASETS ("cifar10 cifar100"),
#   EXTRA_FLAGS (appended to main.py, e.g. "--batch_size 500 --num_workers 8"), PYTHON.
#   A statistics file that already exists is skipped (delete it to recompute).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 'DATA_ROOT' '[--dry-run] [DATA_ROOT]' "$@"

DATASETS="${DATASETS:-cifar10 cifar100}"
for ds in $DATASETS; do
    case "$ds" in
        cifar10|cifar100) ;;
        *) die "DATASETS: unknown data set $ds (cifar10 or cifar100)" ;;
    esac
    cache="$STATS_DIR/$ds.train.npz"
    # main.py writes the features first and the cache last: the cache marks a finished run
    if [ -f "$cache" ]; then
        say "skip $ds: $cache already exists"
        continue
    fi
    say "$ds: computing $cache from $DATA_ROOT$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"
    main_py --make_stats --data_type "$ds" --root "$DATA_ROOT" --fid_cache "$cache"
done
say done
