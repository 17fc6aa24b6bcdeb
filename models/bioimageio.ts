/**
 * A model folder as a bioimage.io model package (format_version 0.5.7): a zip with rdf.yaml,
 * `weights.onnx` (the exported graph, models/onnx/export.ts, with the denoised output only) and
 * `tensorflow_js.zip` (the trained layers model, the parent weights), test tensors made by our own
 * tfjs prediction, a cover image (noisy | denoised), documentation.md and the method's citations.
 *
 * Tensors: NHWC / NDHWC float32 in input intensity units ([batch, (z,) y, x, channel], one channel).
 * Preprocessing `scale_linear` (gain 1 / scale, offset -offset / scale) gives exactly our normalised
 * units (models/normalise.ts); postprocessing `scale_linear` (gain scale, offset offset) undoes it.
 * Output axes carry `halo` = the network's receptive radius.
 */
import { strToU8, zipSync } from 'fflate';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { stringify } from 'yaml';
import { InputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { VERSION } from '../core/version.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { voxelCount, type Shape, type Volume } from '../core/volume.js';
import { percentileOfSorted } from './normalise.js';
import { encodeNpy } from '../storage/npy.js';
import { encodePng } from '../storage/png.js';
import { denoisingTileModel } from './bayes.js';
import { documentationMarkdown, METHOD_CITATIONS } from './bioimageioDocs.js';
import { modelToFiles, type ModelManifest } from './io.js';
import { networkGeometry } from './network.js';
import { exportOnnx, sha256Hex } from './onnx/export.js';

export const BIOIMAGEIO_FORMAT_VERSION = '0.5.7';
/** The TensorFlow.js the layers model is saved by (recorded as tensorflow_js weights' version). */
const TFJS_VERSION = tf.version_core;

export interface BioimageioAuthor {
  name: string;
  affiliation?: string;
  orcid?: string;
}

export interface BioimageioOptions {
  /** At least one: the people who trained the model (bioimage.io's `authors`). */
  authors: BioimageioAuthor[];
  /** SPDX identifier of the model's licence (default CC-BY-4.0). */
  license?: string;
  /** Human-readable name (default "blindspot <method> <dims>D denoiser"). */
  name?: string;
  /** The raw image the test tensors and cover are cut from; absent: a synthetic image (with a warning). */
  sample?: Volume & { name: string };
}

export interface BioimageioPackage {
  zip: Uint8Array;
  /** The rdf.yaml content as an object (what was serialised). */
  rdf: Record<string, unknown>;
  /** name -> bytes of every file in the zip. */
  files: Record<string, Uint8Array>;
  warnings: string[];
}

/** Spatial sizes of the test crop: multiples of `step`, at least `min`, at most the sample (centred) and a preview size. */
function cropShape(shape: Shape, step: number, min: number, name: string): number[] {
  const preview = shape.length === 2 ? [256, 256] : [16, 64, 64];
  return shape.map((s, axis) => {
    const largest = Math.floor(s / step) * step;
    if (largest < min) throw new InputError(name, `is ${shape.join('x')}: the test tensor needs at least ${min} pixels per axis (a multiple of ${step} beyond twice the halo)`);
    return Math.max(min, Math.min(largest, Math.ceil(preview[axis] / step) * step));
  });
}

function crop(volume: Volume, extent: number[]): Float32Array {
  const shape3 = volume.shape.length === 2 ? [1, ...volume.shape] : [...volume.shape];
  const extent3 = extent.length === 2 ? [1, ...extent] : extent;
  const origin3 = shape3.map((s, a) => Math.floor((s - extent3[a]) / 2));
  const out = new Float32Array(voxelCount(extent3));
  let o = 0;
  for (let z = 0; z < extent3[0]; z++) {
    for (let y = 0; y < extent3[1]; y++) {
      const row = ((origin3[0] + z) * shape3[1] + origin3[1] + y) * shape3[2] + origin3[2];
      out.set(volume.data.subarray(row, row + extent3[2]), o);
      o += extent3[2];
    }
  }
  return out;
}

/** A synthetic noisy image in the model's intensity range, for folders whose training images are not at hand. */
export function syntheticSample(manifest: ModelManifest): Volume & { name: string } {
  const dims = manifest.network.dims;
  const shape = (dims === 2 ? [1, 256, 256] : [32, 96, 96]) as [number, number, number];
  const clean = syntheticCells(shape, new Rng(7));
  const { offset, scale } = manifest.normalisation;
  const sigma = manifest.noise?.[0]?.sigma ?? 0.2 * scale;
  const data = addGaussianNoise(
    clean.data.map((v) => offset + v * scale),
    sigma,
    new Rng(8),
  );
  return { data, shape: dims === 2 ? [shape[1], shape[2]] : shape, sampleType: 'float32', name: 'a synthetic image (blobs and filaments, Gaussian noise)' };
}

/** noisy | denoised (the middle z slice in 3D), 8-bit, one intensity window from the noisy crop's 0.5-99.5 percentiles. */
function coverPng(noisy: Float32Array, denoised: Float32Array, extent: number[]): Uint8Array {
  const [h, w] = extent.slice(-2);
  const slice = extent.length === 3 ? Math.floor(extent[0] / 2) * h * w : 0;
  const sorted = Float32Array.from(noisy.subarray(slice, slice + h * w)).sort();
  const lo = percentileOfSorted(sorted, 0.5);
  const hi = Math.max(percentileOfSorted(sorted, 99.5), lo + 1e-6);
  const width = 2 * w;
  const pixels = new Uint8Array(h * width);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = slice + y * w + x;
      for (const [panel, data] of [noisy, denoised].entries()) pixels[y * width + panel * w + x] = Math.round(255 * Math.min(1, Math.max(0, (data[i] - lo) / (hi - lo))));
    }
  }
  return concat(encodePng('cover.png', pixels, [h, width], 'uint8'));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A float32 .npy of any rank (storage/npy.ts writes the header for any shape; its type says 2D/3D for images). */
function npy(data: Float32Array, shape: number[]): Uint8Array {
  return concat(encodeNpy(data, shape as unknown as Shape, 'float32'));
}

/** The tfjs prediction on one whole normalised tensor, denormalised: what the test output must be. */
function predictWhole(model: tfl.LayersModel, manifest: ModelManifest, raw: Float32Array, tensorShape: number[]): Float32Array {
  const { offset, scale } = manifest.normalisation;
  const tileModel = denoisingTileModel(model, manifest, 'denoised');
  const normalised = tf.tensor(raw.map((v) => (v - offset) / scale), tensorShape);
  const out = tf.tidy(() => (typeof tileModel === 'function' ? tileModel(normalised) : (tileModel.predict(normalised) as tf.Tensor)).dataSync() as Float32Array);
  normalised.dispose();
  return out.map((v) => v * scale + offset);
}

/**
 * Builds the package of a loaded model. Throws UsageError without authors, InputError for a sample
 * of the wrong dimensionality or too small for the network's halo.
 */
export async function bioimageioPackage(model: tfl.LayersModel, manifest: ModelManifest, opts: BioimageioOptions): Promise<BioimageioPackage> {
  if (opts.authors.length === 0) throw new UsageError('a bioimage.io package needs at least one author (--author "Name[;affiliation[;orcid]]")');
  if (opts.name !== undefined && !/^[A-Za-z0-9_\-() ]{5,128}$/.test(opts.name)) {
    throw new UsageError(`a bioimage.io model name has 5-128 letters, digits, spaces, '_', '-', '(' or ')', got '${opts.name}'`);
  }
  const dims = manifest.network.dims;
  const warnings: string[] = [];
  const sample = opts.sample ?? syntheticSample(manifest);
  if (!opts.sample) warnings.push('no sample image was available: the test tensors and the cover come from a synthetic image');
  if (sample.shape.length !== dims) throw new InputError(sample.name, `is ${sample.shape.length}D but the model is ${dims}D`);

  const geometry = networkGeometry(manifest.network);
  const halo = Math.max(1, geometry.receptiveRadius);
  const step = geometry.sizeMultiple;
  const minSize = (Math.floor((2 * halo) / step) + 1) * step;
  const extent = cropShape(sample.shape, step, minSize, sample.name);
  const tensorShape = [1, ...extent, 1];
  const testInput = crop(sample, extent);
  const testOutput = predictWhole(model, manifest, testInput, tensorShape);

  const onnx = exportOnnx(model, manifest, { outputs: 'denoised' });
  warnings.push(...onnx.info.warnings);
  const tfjs = await modelToFiles(model);
  const tfjsZip = zipSync({ 'model.json': strToU8(tfjs.modelJson), 'weights.bin': tfjs.weights }, { mtime: new Date('2000-01-01T00:00:00Z') });

  const files: Record<string, Uint8Array> = {
    'weights.onnx': onnx.bytes,
    'tensorflow_js.zip': tfjsZip,
    'test_input.npy': npy(testInput, tensorShape),
    'test_output.npy': npy(testOutput, tensorShape),
    'cover.png': coverPng(testInput, testOutput, extent),
  };
  files['documentation.md'] = strToU8(documentationMarkdown({ manifest, halo, sizeMultiple: step, minSize, sampleName: sample.name, warnings }));

  const spaceIds = dims === 2 ? ['y', 'x'] : ['z', 'y', 'x'];
  const { offset, scale } = manifest.normalisation;
  const file = (name: string) => ({ source: name, sha256: sha256Hex(files[name]) });
  const authors = opts.authors.map((a) => ({ name: a.name, ...(a.affiliation ? { affiliation: a.affiliation } : {}), ...(a.orcid ? { orcid: a.orcid } : {}) }));
  const rdf: Record<string, unknown> = {
    format_version: BIOIMAGEIO_FORMAT_VERSION,
    type: 'model',
    name: opts.name ?? `blindspot ${manifest.method} ${dims}D denoiser`,
    description: `Self-supervised denoising (${manifest.method}, ${dims}D), trained with blindspot ${manifest.createdBy.version}. Output in input intensity units.`,
    authors,
    cite: METHOD_CITATIONS[manifest.method],
    license: opts.license ?? 'CC-BY-4.0',
    covers: ['cover.png'],
    documentation: 'documentation.md',
    tags: ['denoising', 'self-supervised', manifest.method, `${dims}d`, 'onnx', 'blindspot'],
    timestamp: new Date().toISOString(),
    inputs: [
      {
        id: 'input',
        description: 'noisy image, input intensity units',
        axes: [
          { type: 'batch' },
          ...spaceIds.map((id) => ({ type: 'space', id, size: { min: minSize, step } })),
          { type: 'channel', channel_names: ['intensity'] },
        ],
        test_tensor: file('test_input.npy'),
        preprocessing: [
          { id: 'ensure_dtype', kwargs: { dtype: 'float32' } },
          { id: 'scale_linear', kwargs: { gain: 1 / scale, offset: -offset / scale } },
        ],
      },
    ],
    outputs: [
      {
        id: 'output',
        description: manifest.prior ? 'denoised image (posterior mean), input intensity units' : 'denoised image, input intensity units',
        axes: [
          { type: 'batch' },
          ...spaceIds.map((id) => ({ type: 'space', id, size: { tensor_id: 'input', axis_id: id }, halo })),
          { type: 'channel', channel_names: ['denoised'] },
        ],
        test_tensor: file('test_output.npy'),
        postprocessing: [
          { id: 'scale_linear', kwargs: { gain: scale, offset } },
          { id: 'ensure_dtype', kwargs: { dtype: 'float32' } },
        ],
      },
    ],
    weights: {
      tensorflow_js: { ...file('tensorflow_js.zip'), tensorflow_version: TFJS_VERSION, authors },
      onnx: { ...file('weights.onnx'), opset_version: onnx.info.opset, parent: 'tensorflow_js', comment: `exported from the tensorflow_js weights by blindspot ${VERSION}` },
    },
  };
  files['rdf.yaml'] = strToU8(stringify(rdf, { lineWidth: 0, aliasDuplicateObjects: false }));
  const zip = zipSync(files, { mtime: new Date('2000-01-01T00:00:00Z') });
  return { zip, rdf, files, warnings };
}
