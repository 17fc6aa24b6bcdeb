/**
 * Is the trained network better than a classical filter that needs no training? Both are scored by
 * the same J-invariant loss (Noise2Self) on the same pixels: each grid phase is donut-interpolated,
 * the denoiser runs on the masked image and its output on the phase is compared with the noisy
 * values. For noise independent across pixels that loss is the loss against the clean image plus
 * the noise variance, so the smaller one is the better denoiser, with no clean image. The
 * classical opponent is non-local means with its strength calibrated by the same loss
 * (pipeline/calibrate.ts), i.e. the filter a user gets from `blindspot calibrate`.
 */
import type { Shape, Volume } from '../core/volume.js';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { loadModelFolder, type ModelManifest } from '../models/io.js';
import type { EngineName, InferenceEngine } from '../engines/engine.js';
import { openModelEngine, type EngineRequest } from '../engines/modelEngine.js';
import { DEFAULT_SAMPLES, denoiseVolume } from './denoise.js';
import {
  type ClassicalDenoiser,
  type CalibrationResult,
  calibrateDenoiser,
  defaultGrid,
  jInvariantLossAsync,
} from './calibrate.js';

/** The network as `blindspot denoise` runs it: noisy image in, denoised image out, input units. */
export type ImageDenoiser = (data: Float32Array, shape: Shape) => Promise<Float32Array>;

export interface ClassicalComparison {
  /** What was scored (the held-out pixels' name, e.g. the validation slab). */
  region: string;
  /** Pixels scored (every pixel of the region, once). */
  pixels: number;
  /** Grid side of the J-invariant masking. */
  grid: number;
  /** The network's J-invariant loss (mean squared difference to the noisy values, input units^2). */
  networkLoss: number;
  classical: { denoiser: ClassicalDenoiser; parameter: number; loss: number; edge?: 'lower' | 'upper' };
  /** The classical filter's loss is the lower one. */
  classicalBetter: boolean;
  seconds: number;
  /** The inference engine that ran the network (when the comparison opened one). */
  engine?: EngineName;
}

export interface ClassicalComparisonOptions {
  /** Name of the region, for the report. */
  region: string;
  /** Grid side (default 4 in 2D, 3 in 3D, as calibrate). */
  grid?: number;
  /** The opponent (default nlm). */
  denoiser?: ClassicalDenoiser;
}

/** Scores `network` and the calibrated classical denoiser on `volume` by the same J-invariant loss. */
export async function compareWithClassical(network: ImageDenoiser, volume: Volume, opts: ClassicalComparisonOptions): Promise<ClassicalComparison> {
  const t0 = performance.now();
  const grid = opts.grid ?? defaultGrid(volume.shape);
  const calibration: CalibrationResult = calibrateDenoiser(volume, { denoiser: opts.denoiser ?? 'nlm', grid, name: opts.region });
  const classicalLoss = calibration.losses.find((l) => l.parameter === calibration.best)!.loss;
  const { loss: networkLoss } = await jInvariantLossAsync(
    volume,
    async (input, shape, indices) => {
      const out = await network(input, shape);
      return Float32Array.from(indices, (i) => out[i]);
    },
    grid,
  );
  return {
    region: opts.region,
    pixels: volume.data.length,
    grid,
    networkLoss,
    classical: { denoiser: calibration.denoiser, parameter: calibration.best, loss: classicalLoss, ...(calibration.edge ? { edge: calibration.edge } : {}) },
    classicalBetter: classicalLoss < networkLoss,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** The lines `blindspot train` prints: both losses, and the advice when the filter wins. */
export function classicalComparisonLines(c: ClassicalComparison): string[] {
  const lines = [
    `J-invariant loss on ${c.region} (${c.pixels} pixels, lower is better): network ${c.networkLoss.toPrecision(5)}, ` +
      `calibrated ${c.classical.denoiser} (strength ${c.classical.parameter}) ${c.classical.loss.toPrecision(5)}`,
  ];
  if (c.classicalBetter) {
    const gapPercent = (100 * (c.networkLoss - c.classical.loss)) / c.classical.loss;
    lines.push(
      `warning: the calibrated ${c.classical.denoiser} filter denoises these pixels better than the network: train longer, or use \`blindspot calibrate --denoiser ${c.classical.denoiser}\`` +
        ` (its --out writes the filtered image)`,
      // Both losses carry the same noise variance: their difference is that of the errors against the clean image.
      `  the network's loss is ${gapPercent.toFixed(1)}% above the filter's; for pixel-independent noise the losses differ (in expectation)` +
        ` by as much as the two outputs' mean squared errors against the clean image do (${(c.networkLoss - c.classical.loss).toPrecision(3)}), measured without one.` +
        ` More --steps, a larger --patch or another --method may close it; the filter needs no training`,
    );
  }
  return lines;
}

/**
 * Voxels of the held-out region scored at the end of training: the network runs once per grid phase
 * (16 in 2D, 27 in 3D), so the region is cropped (centred) to keep the check to seconds on a CPU.
 */
export const CLASSICAL_CHECK_VOXELS = { 2: 2 ** 17, 3: 2 ** 15 } as const;

/** The centred crop of `volume` with at most `maxVoxels` voxels (the longest axes shrink first). */
export function centredCrop(volume: Volume, maxVoxels: number): Volume {
  const shape = [...volume.shape];
  const size = (): number => shape.reduce((a, b) => a * b, 1);
  while (size() > maxVoxels) {
    const axis = shape.indexOf(Math.max(...shape));
    shape[axis] = Math.max(1, Math.floor(shape[axis] * Math.min(0.9, (maxVoxels / size()) ** (1 / shape.length))));
  }
  if (shape.every((n, axis) => n === volume.shape[axis])) return volume;
  const start = shape.map((n, axis) => Math.floor((volume.shape[axis] - n) / 2));
  const full = volume.shape.length === 3 ? volume.shape : [1, ...volume.shape];
  const cut = shape.length === 3 ? shape : [1, ...shape];
  const origin = start.length === 3 ? start : [0, ...start];
  const data = new Float32Array(size());
  let o = 0;
  for (let z = 0; z < cut[0]; z++) {
    for (let y = 0; y < cut[1]; y++) {
      const row = ((origin[0] + z) * full[1] + origin[1] + y) * full[2] + origin[2];
      data.set(volume.data.subarray(row, row + cut[2]), o);
      o += cut[2];
    }
  }
  return { data, shape: shape as unknown as Shape, sampleType: volume.sampleType };
}

/**
 * What `blindspot train` reports after a run on one image or stack: the trained model (as
 * `blindspot denoise` runs it, on `engine` when given, else on tfjs) and the calibrated classical
 * filter on the held-out region (its validation slab, cropped to CLASSICAL_CHECK_VOXELS).
 */
export async function compareTrainedWithClassical(
  model: LayersModel,
  manifest: ModelManifest,
  heldOut: { volume: Volume; name: string },
  engine?: InferenceEngine,
): Promise<ClassicalComparison> {
  const dims = heldOut.volume.shape.length as 2 | 3;
  const volume = centredCrop(heldOut.volume, CLASSICAL_CHECK_VOXELS[dims]);
  const network: ImageDenoiser = async (data, shape) => (await denoiseVolume(model, manifest, { data, shape, sampleType: 'float32' }, engine ? { engine } : {})).data;
  const region = volume === heldOut.volume ? heldOut.name : `${heldOut.name}, centre ${volume.shape.join('x')}`;
  return { ...(await compareWithClassical(network, volume, { region })), ...(engine ? { engine: engine.name } : {}) };
}

/**
 * compareTrainedWithClassical for the model saved in `modelDir` (the best weights of a finished run),
 * on the engine `blindspot denoise` would pick (default auto: ONNX Runtime where it loads and the
 * folder's network exports, else tfjs). The network runs once per grid phase (27 in 3D) on the crop
 * plus its receptive-field halo (a 8x63x61 crop of the demo is read as 56x112x112), so the engine
 * sets the check's cost (the demo's whole check on 2 busy cores: 59 s with ONNX Runtime, 142 s with
 * tfjs-wasm; bench/results/demo-noise2self.md).
 */
export async function compareSavedModelWithClassical(
  modelDir: string,
  manifest: ModelManifest,
  heldOut: { volume: Volume; name: string },
  request: EngineRequest = {},
): Promise<ClassicalComparison> {
  const best = (await loadModelFolder(modelDir)).model;
  let engine: InferenceEngine | undefined;
  try {
    // The samples and seed denoiseVolume uses without an engine, so both engines score the same output.
    engine = await openModelEngine(request, { modelDir, model: best, manifest, output: 'denoised', sampling: { samples: DEFAULT_SAMPLES, seed: 1 } });
    return await compareTrainedWithClassical(best, manifest, heldOut, engine);
  } finally {
    await engine?.dispose();
    best.dispose();
  }
}
