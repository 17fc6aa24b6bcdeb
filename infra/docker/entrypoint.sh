#!/bin/sh
# Container entrypoint for the blindspot images: `docker run IMAGE <blindspot arguments>`.
#
# With BLINDSPOT_MODEL_URL set (s3://bucket/models/name, or a mounted folder), the model folder is
# first copied to BLINDSPOT_MODEL_DIR (default /scratch/model), which the arguments then name as
# the model (`denoise /scratch/model ...`, `watch ... --model /scratch/model`). The CLI reads
# models from local folders only; fetching here lets one image serve every model.
#
# `exec` makes the CLI the process that receives SIGTERM (tini, PID 1, forwards it), so the CLI's
# own shutdown runs: finish or abandon in-flight blocks, flush state, exit 130 (resumable).
# Exit codes are the CLI's: 0 ok, 1 failure, 2 usage, 3 bad input, 4 output refused, 130 interrupted.
set -eu

if [ -n "${BLINDSPOT_MODEL_URL:-}" ]; then
  model_dir="${BLINDSPOT_MODEL_DIR:-/scratch/model}"
  # A failed fetch exits with its own code (3: no model at the URL, 130: interrupted).
  node /app/dist/infra/fetchModel.js "$BLINDSPOT_MODEL_URL" "$model_dir" --json
fi

exec blindspot "$@"
