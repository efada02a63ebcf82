#!/usr/bin/env bash
# Hyper-parameter search with Optuna (TPE) through Hydra's optuna sweeper.
#   pip install -e '.[optuna]'
#   scripts/optuna_search.sh                      # 12 short trials on the digits, minimising the final loss
# The search space is configs/hydra/sweeper/optuna_lr.yaml (optim.lr, optim.warmup_steps,
# trainer.ema_decay); override it on the command line, e.g. 'hydra.sweeper.params.optim.lr=interval(1e-4,3e-3)'.
# The best parameters land in outputs/train/multirun/<date>/<time>/optimization_results.yaml.
set -euo pipefail
diffctl train -m hydra/sweeper=optuna_lr hydra.sweeper.n_trials="${TRIALS:-12}" trainer.steps="${STEPS:-500}" \
  trainer.sample_every=0 "$@"
