/**
 * bench:pipeline: end-to-end streaming denoise throughput against the model alone on the same tiles
 * (target >= 0.9: reading, decompression, stitching and writing overlap with compute), on a local
 * Zarr volume (and S3 through a local Swift when available), and peak RSS against volume size
 * (4 sizes spanning 16x, each in its own process, one --max-memory).
 *
 * Options: --size N (side of the 2D throughput volume, default 4096), --filters N (default 8),
 * --depth N (default 2), --max-memory SIZE (default 1GiB), --rss-sides a,b,c,d (default
 * 2048,4096,6144,8192), --backend wasm|cpu (default wasm), --skip-rss, --skip-s3.
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
import { denoiseChunked, parseByteSize, planStreamMemory, runFingerprint } from '../pipeline/streamDenoise.js';
import { estimateBytesPerVoxel } from '../pipeline/predict.js';
import type { ByteStore } from '../storage/byteStore.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import type { ChunkedArrayReader, ChunkedArrayWriter } from '../storage/chunked.js';
import { chunkGrid } from '../storage/chunked.js';
import { DirectoryStore, RawChunkArray, SyntheticVolume } from '../test/fixtures/stream-arrays.js';
import { benchArgs, writeResult } from './common.js';

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

/** Local Zarr via storage/ome.ts + storage/open.ts when they exist, else raw chunk folders. */
async function localSink(root: string): Promise<Sink> {
  // Loaded by path: the Zarr back end may not be in this checkout yet.
  const omeModule = '../storage/ome.js';
  const openModule = '../storage/open.js';
  let ome: { createOmeZarr(url: string, o: Record<string, unknown>): Promise<ChunkedArrayWriter> };
  let open: { openByteStore(url: string): ByteStore; openChunkedSource(url: string): Promise<ChunkedArrayReader> };
  try {
    ome = await import(omeModule);
    open = await import(openModule);
  } catch {
    return {
      kind: 'raw float32 chunk folders (storage/ome.ts not available)',
      async create(name, shape, chunks) {
        const store = new DirectoryStore(path.join(root, name));
        const array = new RawChunkArray(store, shape, chunks);
        return { writer: array, store, openReader: async () => array };
      },
    };
  }
  return {
    kind: 'OME-Zarr (zstd)',
    async create(name, shape, chunks) {
      const url = path.join(root, `${name}.zarr`);
      const names = shape.length === 2 ? ['y', 'x'] : ['z', 'y', 'x'];
      const writer = await ome.createOmeZarr(url, {
        shape,
        chunks,
        dtype: 'float32',
        axes: names.map((n) => ({ name: n, type: 'space' })),
        placement: { scale: shape.map(() => 1), translation: shape.map(() => 0) },
      });
      return { writer, store: open.openByteStore(url), openReader: () => open.openChunkedSource(url) };
    },
  };
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

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const side = Number(args.get('size') ?? 4096);
  const maxMemoryBytes = parseByteSize(args.get('max-memory') ?? '1GiB');
  const backend = (args.get('backend') ?? 'wasm') as BackendChoice;
  const network: UNetConfig = { dims: 2, depth: Number(args.get('depth') ?? 2), filters: Number(args.get('filters') ?? 8), kernelSize: 3, batchNorm: true, variant: 'n2v' };
  const info = await initBackend({ backend });
  const model = buildUNet(network, 1);
  const geometry = unetGeometry(network);
  const modelWeightBytes = model.getWeights().reduce((n, w) => n + w.size * 4, 0);
  const bytesPerVoxel = estimateBytesPerVoxel(model, 2, geometry.sizeMultiple);
  const shape = [side, side];
  const inputChunks = [256, 256];
  const memory = planStreamMemory({ maxMemoryBytes, shape, inputChunks, ...geometry, bytesPerVoxel, modelWeightBytes });
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bench-pipeline-'));
  const results: Record<string, unknown> = { backend: info, network, volume: shape, inputChunks, memory };
  try {
    const sink = await localSink(root);
    const input = await sink.create('input', shape, inputChunks);
    await writeSynthetic(new SyntheticVolume(shape, inputChunks), input.writer);
    const inputReader = await input.openReader();

    // Model alone on the same tiles: pixels read beforehand, only model calls timed.
    const plan = planTileGrid(shape as [number, number], { ...geometry, tileShape: memory.coreShape, blendWidth: 0 });
    const cache = new ChunkCache(memory.cacheBytes);
    let modelSeconds = 0;
    let warm = false;
    for (const spec of tileSpecs(plan)) {
      const pixels = normalise(await readRegionReflected(inputReader, cache, spec.read.origin, spec.read.shape), normalisation);
      if (!warm) {
        // First calls compile kernels and grow the heap: not part of the steady state either run is compared in.
        await lastValueFrom(of({ spec, data: pixels }).pipe(predictTilePixels({ model })));
        warm = true;
      }
      const t0 = performance.now();
      await lastValueFrom(of({ spec, data: pixels }).pipe(predictTilePixels({ model })));
      modelSeconds += (performance.now() - t0) / 1000;
    }
    const voxels = voxelCount(shape);
    const modelMvps = voxels / 1e6 / modelSeconds;

    const output = await sink.create('output', shape, memory.coreShape);
    const t0 = performance.now();
    await denoiseChunked({
      input: inputReader,
      output: output.writer,
      model,
      ...geometry,
      normalisation,
      maxMemoryBytes,
      modelWeightBytes,
      bytesPerVoxel,
      journal: { store: output.store, fingerprint: runFingerprint({ network }) },
    });
    const endToEndSeconds = (performance.now() - t0) / 1000;
    const endToEndMvps = voxels / 1e6 / endToEndSeconds;
    results.local = { storage: sink.kind, tiles: plan.tileCount, modelSeconds, modelMegavoxelsPerSecond: modelMvps, endToEndSeconds, endToEndMegavoxelsPerSecond: endToEndMvps, ratio: endToEndMvps / modelMvps, cache: cache.stats };
    console.log(`local (${sink.kind}): model alone ${modelMvps.toFixed(3)} Mvox/s, end to end ${endToEndMvps.toFixed(3)} Mvox/s, ratio ${(endToEndMvps / modelMvps).toFixed(3)}`);
    results.s3 = args.has('skip-s3') ? 'skipped (--skip-s3)' : 'not measured: run with the S3 helper\'s infra/localS3.ts in place';

    if (!args.has('skip-rss')) {
      const script = path.join(PACKAGE_ROOT, 'dist', 'test', 'fixtures', 'stream-child.js');
      const sides = (args.get('rss-sides') ?? '2048,4096,6144,8192').split(',').map(Number);
      const rss: Array<Record<string, number>> = [];
      for (const s of sides) {
        const out = path.join(root, `rss-${s}`);
        const r = await runRssChild(script, {
          out,
          shape: [s, s],
          inputChunks: [256, 256],
          outputChunks: [512, 512],
          network: { dims: 2, depth: 0, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' },
          seed: 1,
          maxMemory: 320 * MiB,
          backend,
        });
        await fs.rm(out, { recursive: true, force: true });
        rss.push({ side: s, volumeMiB: (s * s * 4) / MiB, peakRssMiB: r.peakRssBytes / MiB, seconds: r.seconds });
        console.log(`peak RSS ${(r.peakRssBytes / MiB).toFixed(0)} MiB for a ${s}x${s} float32 volume (${((s * s * 4) / MiB).toFixed(0)} MiB), --max-memory 320 MiB`);
      }
      results.peakRss = { maxMemoryMiB: 320, runs: rss };
    }
    const file = await writeResult('pipeline', results);
    console.log(`results: ${file}`);
  } finally {
    model.dispose();
    await fs.rm(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
