#!/usr/bin/env bash
# The generated Dockerfile differential (tests/e2e/differential.rs) with a random seed and more
# Dockerfiles than CI's fixed run: ecr-build's skips against `docker buildx build` on Docker 28.
# Run by hand; a failure prints the seed that reproduces it.
#
#   scripts/differential.sh [COUNT [SEED]]    default: 50 Dockerfiles, a random seed
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
count=${1:-50}
seed=${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "==> seed $seed, $count Dockerfiles (ECR_BUILD_DIFF_SEED=$seed ECR_BUILD_DIFF_COUNT=$count)" >&2
ECR_BUILD_ENGINES=28 ECR_BUILD_SKIP_LINT=1 ECR_BUILD_DIFF_SEED=$seed ECR_BUILD_DIFF_COUNT=$count \
    exec scripts/test.sh differential -- --nocapture
