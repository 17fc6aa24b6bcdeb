/**
 * bench:pipeline: end-to-end streaming denoise throughput against the model alone on the same tiles
 * (target >= 0.9: reading, decompression, stitching and writing overlap with compute), on a local
 * Zarr volume (and S3 through a local Swift when available), and peak RSS against volume size
 * (4 sizes spanning 16x, each in its own process, one --max-memory).
 *
 * Options: --size N (side of the 2D throughput volume, default 3072), --filters N (default 8),
 * --depth N (default 2), --max-memory SIZE (default 1GiB), --rss-sides a,b,c,d (default
 * 5793,11585,16384,23170: 128 MiB to 2 GiB of float32), --backend wasm|cpu (default wasm), --skip-rss, --skip-s3,
 * --engine onnx|tfjs (default onnx, the default engine: ONNX Runtime on the CPU), --threads N (engine threads,
 * default all cores; both runs use the same), --codec-threads N (zstd worker threads, workers/codecPool.ts;
 * default workers/codecPool.ts defaultCodecThreads: cores - 2, at most 4; 0 = zstd in the main thread).
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lastValueFrom, of } from 'rxjs';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { voxelCount } from '../core/volume.js';
import { buildUNet, unetGeometry, type UNetConfig } from '../models/unet.js';
import { normalise, type Normalisation } from '../models/normalise.js';
import { predictTilePixels } from '../operators/predictTiles.js';
import { planTileGrid, tileSpecs } from '../operators/tileGrid.js';
import { denoiseChunked, parseByteSize, planStreamMemory, runFingerprint, type StreamMemoryPlan } from '../pipeline/streamDenoise.js';
import { estimateBytesPerVoxel } from '../pipeline/predict.js';
import type { ByteStore } from '../storage/byteStore.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import type { ChunkedArrayReader, ChunkedArrayWriter } from '../storage/chunked.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import { isS3Url, type S3Settings } from '../storage/s3.js';
import { SWIFT_MISSING_MESSAGE, startLocalS3, swiftAvailable } from '../infra/localS3.js';
import { SyntheticVolume } from '../test/fixtures/stream-arrays.js';
import { benchArgs, writeResult } from './common.js';
import { benchManifest } from './engineSpeed.js';
import type { InferenceEngine } from '../engines/engine.js';
import { openEngine } from '../engines/select.js';
import { exportOnnx } from '../models/onnx/export.js';
import { codecThreads, setCodecThreads } from '../workers/codecPool.js';

const MiB = 2 ** 20;
const normalisation: Normalisation = { mode: 'meanstd', offset: 100, scale: 30 };

interface CreatedArray {
  writer: ChunkedArrayWriter;
  /** The journal's store (the array's own). */
  store: ByteStore;
  /** Reopens the array for reading, as the CLI would. */
  openReader(): Promise<ChunkedArrayReader>;
}

interface Sink {
  kind: string;
  create(name: string, shape: number[], chunks: number[]): Promise<CreatedArray>;
}

/** OME-Zarr (zstd) arrays under a local folder or an s3:// prefix; read back through openChunkedSource as the CLI does. */
function omeZarrSink(root: string, s3?: S3Settings): Sink {
  return {
    kind: isS3Url(root) ? 'OME-Zarr (zstd) on S3 (local OpenStack Swift, s3api)' : 'OME-Zarr (zstd) on the local file system',
    async create(name, shape, chunks) {
      const url = isS3Url(root) ? `${root}/${name}.zarr` : path.join(root, `${name}.zarr`);
      const names = shape.length === 2 ? ['y', 'x'] : ['z', 'y', 'x'];
      const writer = await createOmeZarr(url, {
        shape,
        chunks,
        dtype: 'float32',
        axes: names.map((n) => ({ name: n, type: 'space' as const })),
        placement: { scale: shape.map(() => 1), translation: shape.map(() => 0) },
        s3,
      });
      return { writer, store: openByteStore(url, s3), openReader: () => openChunkedSource(url, { s3 }) };
    },
  };
}

function cpuSeconds(usage: NodeJS.CpuUsage): number {
  return (usage.user + usage.system) / 1e6;
}

async function writeSynthetic(source: ChunkedArrayReader, writer: ChunkedArrayWriter): Promise<void> {
  const grid = chunkGrid(writer.info);
  const total = voxelCount(grid);
  for (let ordinal = 0; ordinal < total; ordinal++) {
    const index: number[] = [];
    let rest = ordinal;
    for (let axis = grid.length - 1; axis >= 0; axis--) {
      index.unshift(rest % grid[axis]);
      rest = Math.floor(rest / grid[axis]);
    }
    await writer.writeChunk(index, await source.readChunk(index));
  }
}

function runRssChild(script: string, args: Record<string, unknown>): Promise<{ peakRssBytes: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(stdout.trim().split('\n').at(-1)!)) : reject(new Error(stderr))));
  });
}

interface ThroughputSetup {
  /** The engine both runs use (the tfjs model sizes the tiles). */
  model: InferenceEngine;
  network: UNetConfig;
  shape: number[];
  inputChunks: number[];
  maxMemoryBytes: number;
  modelWeightBytes: number;
  bytesPerVoxel: number;
  memory: StreamMemoryPlan;
}

/**
 * Writes the synthetic input into the sink, times the model alone on the tiles the streaming run
 * uses (pixels read and normalised beforehand, only model calls timed), then the whole streaming
 * denoise from that input into a new array of the same sink.
 */
async function measureThroughput(sink: Sink, setup: ThroughputSetup): Promise<Record<string, unknown>> {
  const { model, network, shape, inputChunks, memory } = setup;
  const geometry = unetGeometry(network);
  const tw = performance.now();
  const input = await sink.create('input', shape, inputChunks);
  await writeSynthetic(new SyntheticVolume(shape, inputChunks), input.writer);
  const inputWriteSeconds = (performance.now() - tw) / 1000;
  const inputReader = await input.openReader();

  const plan = planTileGrid(shape as [number, number], { ...geometry, tileShape: memory.coreShape, blendWidth: 0 });
  const cache = new ChunkCache(memory.cacheBytes);
  let modelSeconds = 0;
  let modelCpu = 0;
  let warm = false;
  for (const spec of tileSpecs(plan)) {
    const pixels = normalise(await readRegionReflected(inputReader, cache, spec.read.origin, spec.read.shape), normalisation);
    if (!warm) {
      // First calls compile kernels and grow the heap: not part of the steady state either run is compared in.
      await lastValueFrom(of({ spec, data: pixels }).pipe(predictTilePixels({ model })));
      warm = true;
    }
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    await lastValueFrom(of({ spec, data: pixels }).pipe(predictTilePixels({ model })));
    modelSeconds += (performance.now() - t0) / 1000;
    modelCpu += cpuSeconds(process.cpuUsage(c0));
  }
  const voxels = voxelCount(shape);
  const modelMvps = voxels / 1e6 / modelSeconds;

  const output = await sink.create('output', shape, memory.coreShape);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  await denoiseChunked({
    input: inputReader,
    output: output.writer,
    model,
    ...geometry,
    normalisation,
    maxMemoryBytes: setup.maxMemoryBytes,
    modelWeightBytes: setup.modelWeightBytes,
    bytesPerVoxel: setup.bytesPerVoxel,
    journal: { store: output.store, fingerprint: runFingerprint({ network }) },
  });
  const endToEndSeconds = (performance.now() - t0) / 1000;
  const endToEndCpu = cpuSeconds(process.cpuUsage(c0));
  const endToEndMvps = voxels / 1e6 / endToEndSeconds;
  const ratio = endToEndMvps / modelMvps;
  console.log(
    `${sink.kind}: model alone ${modelMvps.toFixed(3)} Mvox/s (${modelCpu.toFixed(2)} CPU s in ${modelSeconds.toFixed(2)} s), ` +
      `end to end ${endToEndMvps.toFixed(3)} Mvox/s (${endToEndCpu.toFixed(2)} CPU s in ${endToEndSeconds.toFixed(2)} s), ratio ${ratio.toFixed(3)}`,
  );
  return {
    storage: sink.kind,
    tiles: plan.tileCount,
    inputWriteSeconds,
    modelSeconds,
    modelMegavoxelsPerSecond: modelMvps,
    /** CPU seconds of the whole process (every thread: the engine's, the codec workers', the main one). */
    modelCpuSeconds: modelCpu,
    endToEndCpuSeconds: endToEndCpu,
    endToEndSeconds,
    endToEndMegavoxelsPerSecond: endToEndMvps,
    ratio,
    loadAverageAfter: os.loadavg(),
  };
}

async function main(): Promise<void> {
  const loadAverageAtStart = os.loadavg();
  const args = benchArgs(process.argv.slice(2));
  const side = Number(args.get('size') ?? 3072);
  const maxMemoryBytes = parseByteSize(args.get('max-memory') ?? '1GiB');
  const backend = (args.get('backend') ?? 'wasm') as BackendChoice;
  const network: UNetConfig = { dims: 2, depth: Number(args.get('depth') ?? 2), filters: Number(args.get('filters') ?? 8), kernelSize: 3, batchNorm: true, variant: 'n2v' };
  const threads = args.has('threads') ? Number(args.get('threads')) : undefined;
  if (args.has('codec-threads')) await setCodecThreads(Number(args.get('codec-threads')));
  const info = await initBackend({ backend, threads });
  const model = buildUNet(network, 1);
  const engineName = (args.get('engine') ?? 'onnx') as 'onnx' | 'tfjs';
  const engine = await openEngine({ engine: engineName, device: engineName === 'onnx' ? 'cpu' : 'auto', threads }, { tfjs: model, onnx: async () => ({ bytes: exportOnnx(model, benchManifest(network)).bytes }) });
  console.log(engine.describe());
  const geometry = unetGeometry(network);
  const modelWeightBytes = model.getWeights().reduce((n, w) => n + w.size * 4, 0);
  const bytesPerVoxel = estimateBytesPerVoxel(model, 2, geometry.sizeMultiple);
  const shape = [side, side];
  const inputChunks = [256, 256];
  const memory = planStreamMemory({ maxMemoryBytes, shape, inputChunks, ...geometry, bytesPerVoxel, modelWeightBytes });
  const setup: ThroughputSetup = { model: engine, network, shape, inputChunks, maxMemoryBytes, modelWeightBytes, bytesPerVoxel, memory };
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bench-pipeline-'));
  const results: Record<string, unknown> = {
    loadAverageAtStart,
    backend: info,
    engine: { name: engine.name, provider: engine.provider, threads: engine.threads, detail: engine.describe() },
    codecThreads: codecThreads(),
    throughputModel: { ...network, parameters: modelWeightBytes / 4, note: 'small U-Net so the bench fits in minutes on 2 cores' },
    throughputVolume: { shape, dtype: 'float32', MiB: (voxelCount(shape) * 4) / MiB, inputChunks, content: 'synthetic (test/fixtures/stream-arrays.ts SyntheticVolume)' },
    maxMemoryMiB: maxMemoryBytes / MiB,
    memory,
  };
  try {
    results.local = await measureThroughput(omeZarrSink(path.join(root, 'local')), setup);

    if (args.has('skip-s3')) results.s3 = 'skipped (--skip-s3)';
    else if (!swiftAvailable()) {
      console.log(SWIFT_MISSING_MESSAGE);
      results.s3 = `not measured: ${SWIFT_MISSING_MESSAGE}`;
    } else {
      const s3 = await startLocalS3();
      try {
        process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
        process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
        process.env.AWS_REGION = s3.region;
        await s3.createBucket('bench');
        results.s3 = { server: 'OpenStack Swift with s3api on loopback (infra/localS3.ts)', ...(await measureThroughput(omeZarrSink('s3://bench/pipeline', { endpoint: s3.endpoint, region: s3.region }), setup)) };
      } finally {
        await s3.stop();
      }
    }

    if (!args.has('skip-rss')) {
      const script = path.join(PACKAGE_ROOT, 'dist', 'test', 'fixtures', 'stream-child.js');
      // 128 MiB .. 2 GiB of float32: 16x in volume.
      const sides = (args.get('rss-sides') ?? '5793,11585,16384,23170').split(',').map(Number);
      const rssNetwork: UNetConfig = { dims: 2, depth: 0, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' };
      const rssMaxMemory = 320 * MiB;
      const rss: Array<Record<string, number>> = [];
      for (const s of sides) {
        const out = path.join(root, `rss-${s}`);
        const r = await runRssChild(script, {
          out,
          shape: [s, s],
          inputChunks: [256, 256],
          outputChunks: [512, 512],
          network: rssNetwork,
          seed: 1,
          maxMemory: rssMaxMemory,
          backend,
        });
        await fs.rm(out, { recursive: true, force: true });
        rss.push({ side: s, volumeMiB: (s * s * 4) / MiB, peakRssMiB: r.peakRssBytes / MiB, seconds: r.seconds });
        console.log(`peak RSS ${(r.peakRssBytes / MiB).toFixed(0)} MiB for a ${s}x${s} float32 volume (${((s * s * 4) / MiB).toFixed(0)} MiB), --max-memory 320 MiB, ${r.seconds.toFixed(1)} s`);
      }
      results.peakRss = {
        model: rssNetwork,
        maxMemoryMiB: rssMaxMemory / MiB,
        setup: 'each size in its own node process (test/fixtures/stream-child.ts): synthetic chunked input, float32 raw chunk folder output, VmHWM',
        runs: rss,
      };
    }
    results.loadAverageAtEnd = os.loadavg();
    const file = await writeResult('pipeline', results);
    console.log(`results: ${file}`);
  } finally {
    await engine.dispose();
    model.dispose();
    await fs.rm(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
