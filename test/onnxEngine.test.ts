/**
 * The inference engine (engines/): ONNX Runtime gives what tfjs gives for every network kind the
 * exporter covers, in memory, tiled, with TTA and streamed through a Zarr store on disk; shards on
 * the ONNX engine are byte-identical to one run; engine and device selection, and the clear error
 * for a provider that is not installed (no CUDA here).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode, UsageError } from '../core/errors.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { writeImage } from '../storage/index.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { EngineUnavailableError, type InferenceEngine } from '../engines/engine.js';
import { type EngineRequest, openModelEngine } from '../engines/modelEngine.js';
import { missingProviderLibraries, nvidiaGpuPresent } from '../engines/onnxRuntime.js';
import { openEngine } from '../engines/select.js';
import { dihedralForwardArray, dihedralTransforms, predictDihedralMeanArray, predictDihedralMean } from '../models/tta.js';
import type { NoiseSpec } from '../models/bayes.js';
import { loadModelFolder, saveModelFolder } from '../models/io.js';
import { buildNetwork, type NetworkConfig } from '../models/network.js';
import { exportOnnx } from '../models/onnx/export.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import { errorOverRange, randomiseWeights, testManifest } from './fixtures/onnxModels.js';

const TOLERANCE = 1e-4;
const ONNX_CPU: EngineRequest = { engine: 'onnx', device: 'cpu', threads: 1 };
const TFJS: EngineRequest = { engine: 'tfjs' };

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'blindspot-onnx-engine-'));
});
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

/** A model folder with random (not initial) weights: every layer matters. */
async function saveRandomModel(name: string, network: NetworkConfig, prior?: NoiseSpec): Promise<string> {
  const dir = path.join(tmp, name);
  const model = buildNetwork(network, 7);
  randomiseWeights(model, 11);
  const method = network.kind === 'laine19' || network.kind === 'dbsn' ? network.kind : 'n2v';
  await saveModelFolder(dir, model, testManifest(network, { prior, method }));
  model.dispose();
  return dir;
}

function randomVolume(shape: number[], seed: number): Volume {
  const rng = new Rng(seed);
  const data = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => 100 + 20 * rng.normal());
  return { data, shape: shape as unknown as Volume['shape'], sampleType: 'float32' };
}

interface Case {
  name: string;
  network: NetworkConfig;
  prior?: NoiseSpec;
  shape: number[];
  /** Tile core for the tiled run (several tiles). */
  tile: number[];
  /** Also with TTA (the transforms are engine-independent typed-array code: two kinds suffice, keeping tfjs-cpu time down). */
  tta?: boolean;
}

const cases: Case[] = [
  { name: 'U-Net 2D n2v', network: { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' }, shape: [36, 44], tile: [16, 20], tta: true },
  { name: 'U-Net 2D n2v2', network: { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v2', blurPool: 'centred' }, shape: [28, 36], tile: [16, 16] },
  { name: 'U-Net 3D n2v', network: { dims: 3, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' }, shape: [8, 14, 16], tile: [4, 8, 8], tta: true },
  {
    name: 'U-Net 2D Poisson-Gaussian prior (posterior mean and std)',
    network: { dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v', outputChannels: 2 },
    prior: { kind: 'poisson-gaussian', a: 0.8, b: 30 },
    shape: [24, 30],
    tile: [12, 12],
  },
  { name: 'laine19 2D Gaussian prior', network: { kind: 'laine19', dims: 2, depth: 1, filters: 3, outputChannels: 2 }, prior: { kind: 'gaussian', sigma: 15 }, shape: [20, 24], tile: [8, 12] },
  { name: 'dbsn 2D', network: { kind: 'dbsn', dims: 2, filters: 4, blocks: 2 }, shape: [22, 26], tile: [12, 14] },
];

describe('ONNX Runtime engine gives what the tfjs engine gives (within 1e-4 of the range)', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const dir = await saveRandomModel(c.name.replace(/\W+/g, '_'), c.network, c.prior);
      const { model, manifest } = await loadModelFolder(dir);
      const volume = randomVolume(c.shape, 3);
      const outputs = c.prior ? (['denoised', 'uncertainty'] as const) : (['denoised'] as const);
      try {
        for (const output of outputs) {
          const onnx = await openModelEngine(ONNX_CPU, { modelDir: dir, model, manifest, output });
          const tfjs = await openModelEngine(TFJS, { modelDir: dir, model, manifest, output });
          expect([onnx.name, onnx.provider, onnx.threads, tfjs.name]).toEqual(['onnx', 'cpu', 1, 'tfjs']);
          const runs: Array<[string, { tta?: boolean; tileShape?: number[] }]> = [
            ['whole', {}],
            ['tiled', { tileShape: c.tile }],
            ...(c.tta ? [['tta', { tta: true }] as [string, { tta: boolean }]] : []),
          ];
          for (const [label, opts] of runs) {
            const reference = (await denoiseVolume(model, manifest, volume, { ...opts, output, engine: tfjs })).data;
            const got = (await denoiseVolume(model, manifest, volume, { ...opts, output, engine: onnx })).data;
            expect(new Set(reference).size, `${output} ${label}: a non-trivial output`).toBeGreaterThan(20);
            expect(errorOverRange(got, reference), `${output} ${label}`).toBeLessThan(TOLERANCE);
          }
          await onnx.dispose();
        }
      } finally {
        model.dispose();
      }
    });
  }
});

describe('typed-array TTA (every engine) equals the tensor TTA', () => {
  it('each forward transform matches its tensor version, and the mean over a random U-Net matches bit for bit', async () => {
    const shape = [2, 3, 6, 10, 1];
    const x = Float32Array.from({ length: 360 }, (_, i) => Math.sin(i * 1.7));
    const xt = tf.tensor(x, shape);
    for (const t of dihedralTransforms()) {
      const want = t.forward(xt);
      const got = dihedralForwardArray(x, shape, t);
      expect(got.shape).toEqual(want.shape);
      expect(Array.from(got.data)).toEqual(Array.from(want.dataSync()));
      want.dispose();
    }
    xt.dispose();
    const network: NetworkConfig = { dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: false, variant: 'n2v' };
    const model = buildNetwork(network, 3);
    randomiseWeights(model, 4);
    const image = Float32Array.from({ length: 12 * 16 }, (_, i) => Math.cos(i * 0.9));
    const tensorMean = tf.tidy(() => predictDihedralMean((v) => model.predict(v) as tf.Tensor, tf.tensor(image, [1, 12, 16, 1])).dataSync() as Float32Array);
    const predict = async (b: Float32Array, s: readonly number[]): Promise<Float32Array> =>
      tf.tidy(() => (model.predict(tf.tensor(b, [...s])) as tf.Tensor).dataSync() as Float32Array);
    const arrayMean = await predictDihedralMeanArray(predict, image, [1, 12, 16, 1]);
    expect(Array.from(arrayMean)).toEqual(Array.from(tensorMean));
    model.dispose();
  });
});

/** Every stored object of a Zarr output except the run bookkeeping, key -> bytes. */
async function storedObjects(url: string): Promise<Map<string, Buffer>> {
  const store = openByteStore(url);
  const objects = new Map<string, Buffer>();
  try {
    for await (const key of store.list('/')) {
      if (key.startsWith('/.blindspot-denoise/')) continue;
      objects.set(key, Buffer.from((await store.get(key)) as Uint8Array));
    }
  } finally {
    await store.close?.();
  }
  return objects;
}

async function readLevelZero(url: string): Promise<Float32Array[]> {
  const reader = await openChunkedSource(url);
  try {
    const grid = chunkGrid(reader.info);
    const chunks: Float32Array[] = [];
    const index = grid.map(() => 0);
    const total = grid.reduce((a, b) => a * b, 1);
    for (let n = 0; n < total; n++) {
      let rest = n;
      for (let a = grid.length - 1; a >= 0; a--) {
        index[a] = rest % grid[a];
        rest = Math.floor(rest / grid[a]);
      }
      chunks.push(await reader.readChunk(index));
    }
    return chunks;
  } finally {
    await reader.close?.();
  }
}

describe('streamed through Zarr on disk', () => {
  for (const c of [cases[0], cases[2]]) {
    const dims = c.network.dims;
    it(`${c.name}: ONNX equals tfjs streamed${dims === 2 ? ' (and with TTA), and 3 shards equal one run byte for byte' : ''}`, async () => {
      const dir = await saveRandomModel(`stream_${c.network.dims}d`, c.network);
      const shape = dims === 2 ? [48, 64] : [8, 16, 24];
      const chunks = dims === 2 ? [16, 32] : [4, 8, 16];
      const outputChunks = dims === 2 ? [16, 16] : [4, 8, 8];
      const input = path.join(tmp, `in${dims}d.zarr`);
      const axes = (dims === 2 ? ['y', 'x'] : ['z', 'y', 'x']).map((name) => ({ name, type: 'space' as const }));
      const writer = await createOmeZarr(input, { shape, chunks, dtype: 'float32', axes, placement: { scale: shape.map(() => 1), translation: shape.map(() => 0) }, maxLevels: 1 });
      const rng = new Rng(9);
      const grid = chunkGrid(writer.info);
      const chunkVoxels = chunks.reduce((a, b) => a * b, 1);
      const indices = dims === 2 ? grid[0] * grid[1] : grid[0] * grid[1] * grid[2];
      for (let n = 0; n < indices; n++) {
        const index = dims === 2 ? [Math.floor(n / grid[1]), n % grid[1]] : [Math.floor(n / (grid[1] * grid[2])), Math.floor(n / grid[2]) % grid[1], n % grid[2]];
        await writer.writeChunk(index, Float32Array.from({ length: chunkVoxels }, () => 100 + 20 * rng.normal()));
      }
      const run = (out: string, engine: EngineRequest, extra: object = {}) =>
        denoiseUrl({ input, out, modelDir: dir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks, engine, ...extra });

      for (const tta of dims === 2 ? [false, true] : [false]) {
        const onnxOut = path.join(tmp, `onnx${dims}d${tta}.zarr`);
        const tfjsOut = path.join(tmp, `tfjs${dims}d${tta}.zarr`);
        await run(onnxOut, ONNX_CPU, { tta });
        await run(tfjsOut, TFJS, { tta });
        const [got, want] = [await readLevelZero(onnxOut), await readLevelZero(tfjsOut)];
        const flat = (a: Float32Array[]): Float32Array => Float32Array.from(a.flatMap((x) => Array.from(x)));
        expect(errorOverRange(flat(got), flat(want)), `tta ${tta}`).toBeLessThan(TOLERANCE);
      }
      if (dims === 3) return;

      const whole = path.join(tmp, `whole${dims}d.zarr`);
      const sharded = path.join(tmp, `sharded${dims}d.zarr`);
      const engine: EngineRequest = { engine: 'onnx', device: 'cpu', threads: 2 };
      const threadsOf = async (out: string, request: EngineRequest): Promise<number[]> => {
        const seen: number[] = [];
        await run(out, request, { onEvent: (e: { type: string; threads?: number }) => e.type === 'engine' && seen.push(e.threads!) });
        return seen;
      };
      expect(await threadsOf(whole, engine)).toEqual([2]);
      for (const index of [2, 0, 1]) await run(sharded, engine, { shard: { index, count: 3 } });
      const [a, b] = [await storedObjects(whole), await storedObjects(sharded)];
      expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
      for (const [key, bytes] of a) expect(Buffer.compare(b.get(key) as Buffer, bytes), key).toBe(0);
    });
  }
});

describe('engine and device selection', () => {
  const network: NetworkConfig = { dims: 2, depth: 1, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' };
  let engines: InferenceEngine[] = [];
  afterAll(async () => {
    await Promise.all(engines.map((e) => e.dispose()));
    engines = [];
  });

  it('auto is ONNX Runtime (CPU here: the log line says why not CUDA); tfjs when asked; tfjs when there is no ONNX graph', async () => {
    const model = buildNetwork(network, 1);
    const { bytes } = exportOnnx(model, testManifest(network));
    const both = { tfjs: model, onnx: async () => ({ bytes }) };
    const auto = await openEngine({}, both);
    engines.push(auto);
    expect(auto.name).toBe('onnx');
    if (missingProviderLibraries('cuda').length > 0 || !nvidiaGpuPresent()) {
      expect(auto.provider).toBe('cpu');
      expect(auto.describe()).toMatch(/provider cpu, \d+ intra-op thread\(s\)\); cuda: (provider libraries not installed|no NVIDIA GPU visible|cuda did not start)/);
    }
    const tfjs = await openEngine({ engine: 'tfjs' }, both);
    expect(tfjs.name).toBe('tfjs');
    expect(tfjs.describe()).toMatch(/^engine tfjs \(backend cpu/);
    const noGraph = await openEngine({}, { tfjs: model, onnx: () => Promise.reject(new Error('no converter for tfjs layer class Foo')) });
    expect(noGraph.name).toBe('tfjs');
    expect(noGraph.describe()).toMatch(/no ONNX graph: no converter for tfjs layer class Foo/);
    await expect(openEngine({ engine: 'onnx' }, { tfjs: model, onnx: () => Promise.reject(new Error('no converter for tfjs layer class Foo')) })).rejects.toThrow(/no converter/);
    await expect(openEngine({ engine: 'tfjs', device: 'cuda' }, both)).rejects.toThrow(UsageError);
    // The ONNX engine refuses a graph whose output does not keep the tile's shape, like tfjs does.
    const x = new Float32Array(2 * 8 * 8);
    expect((await auto.predict(x, [2, 8, 8, 1])).length).toBe(x.length);
    model.dispose();
  });

  it.skipIf(missingProviderLibraries('cuda').length === 0 && nvidiaGpuPresent())('--device cuda / tensorrt where they cannot start: EngineUnavailableError (exit 1), never the CPU', async () => {
    const model = buildNetwork(network, 1);
    const { bytes } = exportOnnx(model, testManifest(network));
    for (const device of ['cuda', 'tensorrt'] as const) {
      for (const engine of ['onnx', 'auto'] as const) {
        const failure = await openEngine({ engine, device }, { tfjs: model, onnx: async () => ({ bytes }) }).then(
          () => null,
          (err: unknown) => err,
        );
        expect(failure).toBeInstanceOf(EngineUnavailableError);
        expect((failure as EngineUnavailableError).exitCode).toBe(ExitCode.failure);
        expect((failure as Error).message).toMatch(new RegExp(`^device ${device} is not available: (ONNX Runtime's ${device} provider is not installed \\(.*libonnxruntime_providers_.*\\.so.*\\); install it with 'npm run gpu:install'|no NVIDIA GPU)`));
      }
    }
    model.dispose();
  });
});

describe('blindspot denoise --device cuda without CUDA (the built CLI)', () => {
  it.skipIf(missingProviderLibraries('cuda').length === 0 && nvidiaGpuPresent())('exits 1 with one clear line and writes nothing', async () => {
    const dir = await saveRandomModel('cli_cuda', { dims: 2, depth: 1, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' });
    const image = path.join(tmp, 'cli_in.tif');
    await writeImage(image, randomVolume([16, 16], 1));
    const out = path.join(tmp, 'cli_out');
    const run = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'), 'denoise', dir, image, '--out', out, '--device', 'cuda', '--backend', 'cpu'], { encoding: 'utf8' });
    expect(run.status).toBe(ExitCode.failure);
    expect(run.stderr).toMatch(/^blindspot: device cuda is not available: .*npm run gpu:install/m);
    expect(run.stderr).not.toMatch(/unexpected error/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('infra/docker/Dockerfile.onnx-gpu', () => {
  it('CUDA 12 with cuDNN base, the onnxruntime-node of package.json, its providers fetched by the same command as npm run gpu:install', async () => {
    const root = path.join(path.dirname(new URL(import.meta.url).pathname), '..');
    const text = await fs.readFile(path.join(root, 'infra/docker/Dockerfile.onnx-gpu'), 'utf8');
    const pkg = JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; scripts: Record<string, string> };
    const cudaImage = /^ARG CUDA_IMAGE=(nvidia\/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+)$/m.exec(text);
    expect(cudaImage, 'a pinned nvidia/cuda cudnn runtime base').not.toBeNull();
    expect(Number(cudaImage![2])).toBe(12);
    expect(text).toMatch(/^FROM \$\{CUDA_IMAGE\} AS runtime$/m);
    expect(text).toContain(`onnxruntime-node ${pkg.dependencies['onnxruntime-node']}`);
    expect(text).toContain(pkg.scripts['gpu:install']);
    expect(text).toMatch(/npm ci --omit=dev --omit=optional --ignore-scripts/);
  });
});
