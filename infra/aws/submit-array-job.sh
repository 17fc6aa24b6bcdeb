#!/usr/bin/env bash
# Submits one archive-scale denoise as an AWS Batch array job of N children; child i computes
# shard i of N (`--shard-count N`; Batch sets AWS_BATCH_JOB_ARRAY_INDEX). N is written to both
# arrayProperties.size and the shardCount parameter, which must agree.
#
#   infra/aws/submit-array-job.sh N <input> <output> <model-url> [job-queue] [job-definition]
#   infra/aws/submit-array-job.sh 16 s3://lab/raw/vol.ome.zarr s3://lab/den/vol.zarr s3://lab/models/vol
#
# Register the job definition once first:
#   aws batch register-job-definition --cli-input-json file://infra/aws/batch-job-definition.json
# infra/aws/submit-array-job.json is the same request written out, for `--cli-input-json`.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
shards="$1"
input="$2"
output="$3"
model_url="$4"
queue="${5:-blindspot-gpu-spot}"
definition="${6:-blindspot-denoise}"

# Batch array jobs have 2..10000 children; one shard runs as a plain job.
if ! [[ "$shards" =~ ^[0-9]+$ ]] || [ "$shards" -lt 2 ] || [ "$shards" -gt 10000 ]; then
  echo "submit-array-job: N must be an integer from 2 to 10000, got '$shards'" >&2
  exit 2
fi
for url in "$input" "$output" "$model_url"; do
  case "$url" in
    *'"'* | *'\'*) echo "submit-array-job: '$url' holds a quote or backslash" >&2; exit 2 ;;
    s3://*) ;;
    *) echo "submit-array-job: '$url' is not an s3:// URL (Batch children share no filesystem)" >&2; exit 2 ;;
  esac
done

# Batch job names: up to 128 letters, digits, hyphens and underscores.
name="blindspot-$(printf '%s' "$(basename "${input%/}")" | tr -c 'A-Za-z0-9_-' '-' | cut -c1-80)-${shards}x"
request=$(cat <<JSON
{
  "jobName": "$name",
  "jobQueue": "$queue",
  "jobDefinition": "$definition",
  "arrayProperties": { "size": $shards },
  "parameters": { "input": "$input", "output": "$output", "shardCount": "$shards" },
  "containerOverrides": {
    "environment": [ { "name": "BLINDSPOT_MODEL_URL", "value": "$model_url" } ]
  }
}
JSON
)
aws batch submit-job --cli-input-json "$request"
