#!/usr/bin/env bash
# A schedule x learning-rate sweep as SLURM jobs (one GPU each) through Hydra's submitit launcher.
#   pip install -e '.[slurm]'
#   PARTITION=gpu DATA=/data scripts/slurm_sweep.sh
# Each job trains in its own numbered folder under outputs/train/multirun/<date>/<time>/; submitit's
# logs go to .submitit/ there. Then: python scripts/sweep_table.py <that folder>
set -euo pipefail
diffctl train -m hydra/launcher=slurm \
  hydra.launcher.partition="${PARTITION:-gpu}" hydra.launcher.timeout_min="${TIMEOUT_MIN:-1440}" \
  experiment=ddpm_cifar10 dataset.root="${DATA:-data}" \
  schedule=linear,cosine optim.lr=1e-4,2e-4 "$@"
