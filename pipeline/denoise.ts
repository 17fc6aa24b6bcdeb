/**
 * Denoise files with a trained model folder: read, normalise, predict (whole or tiled with
 * blending), denormalise, write. Inputs are never overwritten.
 * The noise of every input is fitted (noise-level function, noise/nlf.ts) in a worker pool while the
 * network predicts, and recorded beside its output as `<output>.noise.json` (noise/inputNoise.ts).
 */
import path from 'node:path';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import type { SampleType, Volume } from '../core/volume.js';
import { loadModelFolder, type ModelManifest } from '../models/io.js';
import { networkGeometry } from '../models/network.js';
import { denoisingTileModel, type DenoiseOutput } from '../methods/denoiser.js';
import type { SamplingOptions } from '../methods/method.js';
import { normalise, denormalise } from '../models/normalise.js';
import { maxTileVoxelsFor, predictVolume, type PredictOptions } from './predict.js';
import type { InferenceEngine } from '../engines/engine.js';
import { type EngineRequest, engineEvent, openModelEngine } from '../engines/modelEngine.js';
import { readImage, writeImage } from '../storage/index.js';
import { exists } from '../storage/common.js';
import { VERSION } from '../core/version.js';
import { assertOutputOutsideInputs, assertWritableFolder, mkdirOutput } from '../storage/location.js';
import { assertSidecarsWritable, inputNoiseRecord, noiseSidecarPath, writeNoiseSidecar } from '../noise/inputNoise.js';
import { fitNlf, type NlfRecord } from '../noise/nlf.js';
import { sampleNoise } from '../noise/sample.js';
import { NoisePool, noiseTaskFile } from '../workers/noisePool.js';

export type OutputType = 'float32' | 'input';

/** Noise fits started but not yet written (the current image's included). */
const MAX_PENDING_FITS = 2;

export interface DenoiseOptions {
  modelDir: string;
  inputs: string[];
  outDir: string;
  /** float32 (default, lossless) or the input's sample type, rounded and clipped. */
  outputType?: OutputType;
  tta?: boolean;
  tileShape?: number[];
  overwrite?: boolean;
  /** Gaussian-prior models: also write the posterior standard deviation next to each output (`<name>.std.tif`). */
  uncertainty?: boolean;
  /** Gaussian-prior models: write the prior mean (a plain blind-spot estimate) instead of the posterior mean. */
  priorMean?: boolean;
  /** Sampling methods (divnoising): posterior samples averaged for the MMSE and --uncertainty (default 100). */
  samples?: number;
  /** Sampling methods: also write the first K samples, `<name>.sample<k>.tif`. */
  writeSamples?: number;
  /** Sampling methods: the base seed of the samples (default 1). */
  sampleSeed?: number;
  /**
   * Fit each input's noise and write `<output>.noise.json` beside the output (default true). 'inline'
   * fits on this thread (no worker start-up; blocks prediction meanwhile).
   */
  noise?: boolean | 'inline';
  /** Inference engine and device (engines/select.ts); default auto: ONNX Runtime where it loads. */
  engine?: EngineRequest;
  onEvent?: (event: DenoiseEvent) => void;
}

export type DenoiseEvent =
  | { type: 'model'; manifest: ModelManifest }
  | ReturnType<typeof engineEvent>
  | { type: 'image-start'; file: string; index: number; count: number; shape: readonly number[] }
  | { type: 'tiles'; file: string; done: number; total: number }
  | { type: 'image-done'; file: string; output: string; seconds: number; megapixelsPerSecond: number }
  | { type: 'noise'; file: string; sidecar: string; sigma: number; a: number; b: number; method: NlfRecord['method'] };

/** Output file for an input: same base name in outDir; float32 output of a PNG goes to TIFF. */
export function outputPathFor(input: string, outDir: string, outputType: OutputType): string {
  const base = path.basename(input);
  const lower = base.toLowerCase();
  if (outputType === 'float32' && lower.endsWith('.png')) return path.join(outDir, base.slice(0, -4) + '.tif');
  if (lower.endsWith('.fits.gz') || lower.endsWith('.fit.gz')) return path.join(outDir, base.slice(0, -3));
  return path.join(outDir, base);
}

/** Where posterior sample k of `output` goes: `<name>.sample<k>.tif`. */
export function samplePathFor(output: string, k: number): string {
  return `${output.replace(/\.(tiff?|png|fits|npy)$/i, '')}.sample${k}.tif`;
}

/** The in-memory default of SamplingOptions.samples (streaming's is smaller: pipeline/streamDenoise.ts). */
export const DEFAULT_SAMPLES = 100;

/** Where the posterior standard deviation of `output` goes: `<name>.std.tif`. */
export function uncertaintyPathFor(output: string): string {
  const base = output.replace(/\.(tiff?|png|fits|npy)$/i, '');
  return `${base}.std.tif`;
}

export async function denoiseFiles(opts: DenoiseOptions): Promise<string[]> {
  const outputType = opts.outputType ?? 'float32';
  if (opts.inputs.length === 0) throw new UsageError('denoise needs at least one input image');
  const outputs = opts.inputs.map((f) => outputPathFor(f, opts.outDir, outputType));
  const uncertaintyOutputs = opts.uncertainty ? outputs.map(uncertaintyPathFor) : [];
  const writeSamples = opts.writeSamples ?? 0;
  const sampling: SamplingOptions = { samples: opts.samples ?? DEFAULT_SAMPLES, seed: opts.sampleSeed ?? 1 };
  if (!(Number.isInteger(sampling.samples) && sampling.samples >= 1)) throw new UsageError(`--samples must be a positive integer, got ${sampling.samples}`);
  if (!(Number.isInteger(writeSamples) && writeSamples >= 0)) throw new UsageError(`--write-samples must be a non-negative integer, got ${writeSamples}`);
  const sampleOutputs = outputs.map((o) => Array.from({ length: writeSamples }, (_, k) => samplePathFor(o, k)));
  // Real locations, not path strings: a --out that is a link to the inputs' folder is caught too.
  await assertOutputOutsideInputs(opts.outDir, opts.inputs, { refuseContaining: false, what: '--out' });
  for (const o of [...outputs, ...uncertaintyOutputs, ...sampleOutputs.flat()]) {
    await assertOutputOutsideInputs(o, opts.inputs, { refuseContaining: false, what: 'the output' });
    await assertOutputOutsideInputs(noiseSidecarPath(o), opts.inputs, { refuseContaining: false, what: 'the noise record' });
  }
  await assertWritableFolder(opts.outDir);
  if (new Set(outputs.map((o) => path.resolve(o))).size !== outputs.length) {
    throw new UsageError('two inputs would write the same output file (same base name); denoise them into separate --out folders');
  }
  if (!opts.overwrite) {
    for (const o of [...outputs, ...uncertaintyOutputs, ...sampleOutputs.flat()]) {
      if (await exists(o)) throw new OutputError(o, 'exists already; pass --overwrite to replace it');
    }
  }
  const noise = opts.noise ?? true;
  if (noise) await assertSidecarsWritable(outputs, opts.overwrite === true, exists);
  const { model, manifest } = await loadModelFolder(opts.modelDir);
  opts.onEvent?.({ type: 'model', manifest });
  const mainOutput: DenoiseOutput = opts.priorMean ? 'prior-mean' : 'denoised';
  // Fails early (before any work) when the model has no prior.
  denoisingTileModel(model, manifest, mainOutput, sampling);
  if (opts.uncertainty) denoisingTileModel(model, manifest, 'uncertainty', sampling);
  if (writeSamples > 0) denoisingTileModel(model, manifest, 'sample', { ...sampling, sampleIndex: 0 });
  const engines: InferenceEngine[] = [];
  try {
    for (const output of opts.uncertainty ? [mainOutput, 'uncertainty' as const] : [mainOutput]) {
      engines.push(await openModelEngine(opts.engine ?? {}, { modelDir: opts.modelDir, model, manifest, output, sampling }));
    }
  } catch (err) {
    await Promise.all(engines.map((e) => e.dispose()));
    model.dispose();
    throw err;
  }
  opts.onEvent?.(engineEvent(engines[0]));
  await mkdirOutput(opts.outDir);
  // The fit is a fixed cost (Adam iterations; 1-4 s whatever the image size) beside a worker's start
  // (well under that), so it runs in one pool worker, overlapping prediction; inline on request, or when
  // the worker task is not compiled (running from source without a build).
  const pool = noise === true && workerTaskCompiled() ? new NoisePool({ size: 1 }) : null;
  const sidecars: Promise<void>[] = [];
  try {
    for (let i = 0; i < opts.inputs.length; i++) {
      const file = opts.inputs[i];
      const volume = await readImage(file);
      if (volume.shape.length !== manifest.network.dims) {
        throw new InputError(file, `is ${volume.shape.length}D but the model ${opts.modelDir} was trained on ${manifest.network.dims}D data`);
      }
      opts.onEvent?.({ type: 'image-start', file, index: i, count: opts.inputs.length, shape: volume.shape });
      let fitted: Promise<NlfRecord> | null = null;
      if (noise) {
        // Each pending fit holds its pixel sample: with many small images fits would queue up faster
        // than they finish, so at most MAX_PENDING_FITS wait (the pool runs them in order).
        if (sidecars.length >= MAX_PENDING_FITS) await sidecars[sidecars.length - MAX_PENDING_FITS];
        const image = { name: file, data: volume.data, shape: volume.shape, sampleType: volume.sampleType };
        fitted = pool ? pool.fit([image]).then(([nlf]) => nlf) : Promise.resolve().then(() => fitNlf(sampleNoise(image)));
        // Nothing awaits it until the output is written; keep a failure from being unhandled meanwhile.
        fitted.catch(() => undefined);
      }
      const t0 = performance.now();
      const tiling = {
        tta: opts.tta,
        tileShape: opts.tileShape,
        onProgress: (done: number, total: number) => opts.onEvent?.({ type: 'tiles', file, done, total }),
        sampling,
      };
      const denoised = await denoiseVolume(model, manifest, volume, { ...tiling, output: mainOutput, engine: engines[0], sampling });
      const sampleType: SampleType = outputType === 'input' ? volume.sampleType : 'float32';
      // The input's metadata (FITS cards, TIFF resolution and description) goes with its output.
      const history = `blindspot ${VERSION} denoise: ${manifest.method} model ${path.basename(path.resolve(opts.modelDir))}, input ${path.basename(file)}${opts.tta ? ', tta' : ''}`;
      await writeImage(outputs[i], { ...denoised, metadata: volume.metadata }, { sampleType, overwrite: opts.overwrite, history });
      if (opts.uncertainty) {
        // A second pass: the tile pipeline carries one channel. Always float32: a standard deviation is not an intensity.
        const std = await denoiseVolume(model, manifest, volume, { ...tiling, output: 'uncertainty', engine: engines[1], sampling });
        await writeImage(uncertaintyOutputs[i], std, { sampleType: 'float32', overwrite: opts.overwrite });
      }
      for (let k = 0; k < writeSamples; k++) {
        const sample = await denoiseVolume(model, manifest, volume, { ...tiling, output: 'sample', sampling: { ...sampling, sampleIndex: k } });
        await writeImage(sampleOutputs[i][k], sample, { sampleType, overwrite: opts.overwrite });
      }
      const seconds = (performance.now() - t0) / 1000;
      opts.onEvent?.({ type: 'image-done', file, output: outputs[i], seconds, megapixelsPerSecond: volume.data.length / 1e6 / seconds });
      if (fitted) {
        const output = outputs[i];
        sidecars.push(
          fitted.then(async (nlf) => {
            const sidecar = noiseSidecarPath(output);
            await writeNoiseSidecar(sidecar, inputNoiseRecord(nlf, file, output), opts.overwrite === true);
            opts.onEvent?.({ type: 'noise', file, sidecar, sigma: nlf.sigma, a: nlf.a, b: nlf.b, method: nlf.method });
          }),
        );
      }
    }
    await Promise.all(sidecars);
  } finally {
    await Promise.all(engines.map((e) => e.dispose()));
    model.dispose();
    await Promise.allSettled(sidecars);
    await pool?.close();
  }
  return outputs;
}

/**
 * Denoises one in-memory volume with a loaded model: the library entry point beneath `denoiseFiles`.
 * `engine` (opened for this model and `output`, engines/modelEngine.ts) runs the network; without
 * it the tfjs model does. Tiles are sized from the tfjs model either way, so both engines see the
 * same tiles.
 */
export async function denoiseVolume(
  model: tfl.LayersModel,
  manifest: ModelManifest,
  volume: Volume,
  opts: Pick<PredictOptions, 'tta' | 'tileShape' | 'onProgress' | 'maxTileVoxels'> & { output?: DenoiseOutput; engine?: InferenceEngine; sampling?: SamplingOptions } = {},
): Promise<Volume> {
  const geometry = networkGeometry(manifest.network);
  const input = normalise(volume.data, manifest.normalisation);
  const { engine, sampling, ...tiling } = opts;
  const output = opts.output ?? 'denoised';
  const predicted = await predictVolume(engine ?? denoisingTileModel(model, manifest, output, sampling ?? { samples: DEFAULT_SAMPLES, seed: 1 }), input, volume.shape, {
    sizeMultiple: geometry.sizeMultiple,
    receptiveRadius: geometry.receptiveRadius,
    ...tiling,
    // Sized from the network itself (memory budget and device buffers): a posterior wraps it in a function, which cannot be measured.
    maxTileVoxels: opts.maxTileVoxels ?? maxTileVoxelsFor(model, manifest.network.dims, geometry.sizeMultiple),
    tfjsModel: model,
  });
  // A standard deviation scales with the normalisation but has no offset.
  const data = output === 'uncertainty' ? predicted.map((v) => v * manifest.normalisation.scale) : denormalise(predicted, manifest.normalisation);
  return { data, shape: volume.shape, sampleType: volume.sampleType };
}

function workerTaskCompiled(): boolean {
  try {
    noiseTaskFile();
    return true;
  } catch {
    return false;
  }
}
