/**
 * Gathers a report's data from what a run left on disk (or in S3): a model folder, a folder of
 * denoised files with their noise sidecars, or a streamed OME-Zarr output with its provenance and run
 * history. A sharded run needs nothing but its output: every shard records its history there.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { InputError, UsageError } from '../core/errors.js';
import { psnr, ssim } from '../core/metrics.js';
import type { Volume } from '../core/volume.js';
import { MANIFEST_JSON, readManifest, type ModelManifest } from '../models/io.js';
import type { InputNoiseRecord } from '../noise/inputNoise.js';
import { dataRange, fileStem } from '../pipeline/evaluate.js';
import { uncertaintyPathFor } from '../pipeline/denoise.js';
import { readRunHistories } from '../pipeline/runHistory.js';
import { modelFolderHash } from '../pipeline/runJournal.js';
import { exists } from '../storage/common.js';
import { expandInputs, readImage } from '../storage/index.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import { readOmeMetadata } from '../storage/omeMetadata.js';
import type { S3Settings } from '../storage/s3.js';
import { inputNoise, provenanceOf, trainingNoise, trainingSection } from './records.js';
import { chunkedRegions, renderTiles, volumeRegions } from './tiles.js';
import type { QualityRow, ReportData, ReportProvenance } from './types.js';

export interface GatherOptions {
  /** The model folder, when the target does not name it (a folder of denoised files). */
  modelDir?: string;
  /** Clean reference images (files, folders or globs), matched to outputs by file name. */
  reference?: string[];
  /** Commands to record beside the training one (e.g. this denoise). */
  commands?: ReportProvenance['commands'];
  backend?: string;
  seed?: number;
  s3?: S3Settings;
}

function base(kind: ReportData['kind'], title: string, subject: string, provenance: ReportProvenance): ReportData {
  return { format: 'blindspot-report', version: 1, kind, title, subject, provenance, noise: [], quality: [], tiles: [], notes: [] };
}

/** Images of a denoised folder that get tiles (each adds ~0.1-1 MB of PNG); the rest are listed by their noise and quality only. */
export const MAX_TILE_IMAGES = 6;

async function isModelFolder(dir: string): Promise<boolean> {
  return exists(path.join(dir, MANIFEST_JSON));
}

/** A model folder: training curves, the training images' noise, provenance. */
export async function gatherModel(modelDir: string, opts: GatherOptions = {}): Promise<ReportData> {
  const manifest = await readManifest(modelDir);
  const data = base('model', `blindspot model: ${manifest.method}`, modelDir, provenanceOf({ manifest, modelFolder: modelDir, modelHash: await modelFolderHash(modelDir), commands: opts.commands, backend: opts.backend }));
  data.training = trainingSection(manifest);
  data.noise = trainingNoise(manifest);
  data.notes.push(`no denoised output in a model folder: 'blindspot report <denoised folder or .zarr> --model ${modelDir}' shows before/after tiles`);
  return data;
}

/** Adds the model's sections (if a model folder is known) to an output's report. */
async function withModel(data: ReportData, modelDir: string | undefined, commands: ReportProvenance['commands'], backend: string | undefined, machine?: ReportProvenance['machine']): Promise<ModelManifest | null> {
  if (!modelDir || !(await isModelFolder(modelDir))) {
    data.provenance = provenanceOf({ commands, backend, machine });
    data.notes.push(modelDir ? `model folder ${modelDir} not found: no training section` : 'no model folder given (--model): no training section');
    return null;
  }
  const manifest = await readManifest(modelDir);
  data.provenance = provenanceOf({ manifest, modelFolder: modelDir, modelHash: await modelFolderHash(modelDir), commands, backend, machine });
  data.training = trainingSection(manifest);
  data.noise.push(...trainingNoise(manifest));
  return manifest;
}

/** A folder of denoised files: each `<output>.noise.json` names its input. */
export async function gatherFileOutputs(outDir: string, opts: GatherOptions = {}): Promise<ReportData> {
  const sidecars = (await fs.readdir(outDir)).filter((f) => f.endsWith('.noise.json')).sort();
  if (sidecars.length === 0) throw new InputError(outDir, 'holds no <output>.noise.json sidecar: not a blindspot denoise output (nor a model folder or .zarr)');
  const data = base('denoise', 'blindspot denoise', outDir, provenanceOf({}));
  await withModel(data, opts.modelDir, opts.commands ?? [], opts.backend);
  const references = opts.reference ? new Map((await expandInputs(opts.reference)).map((f) => [fileStem(f), f])) : null;
  for (const [k, sidecar] of sidecars.entries()) {
    const record = JSON.parse(await fs.readFile(path.join(outDir, sidecar), 'utf8')) as InputNoiseRecord;
    data.noise.push(inputNoise(record));
    const output = path.join(outDir, record.output);
    const clean = references?.get(fileStem(record.input));
    if (k >= MAX_TILE_IMAGES && !clean) continue;
    const denoised = await readImage(output);
    const noisy = await readImage(record.input).catch((err: Error) => {
      data.notes.push(`input ${record.input} unreadable (${err.message}): tiles show the output only`);
      return null;
    });
    if (clean && noisy) data.quality.push(qualityRow(record.input, await readImage(clean), noisy, denoised));
    if (k >= MAX_TILE_IMAGES) continue;
    const stdFile = uncertaintyPathFor(output);
    const std = (await exists(stdFile)) ? await readImage(stdFile) : null;
    data.tiles.push(
      await renderTiles({ name: record.input, noisy: noisy ? volumeRegions(noisy) : null, denoised: volumeRegions(denoised), uncertainty: std ? volumeRegions(std) : null, seed: (opts.seed ?? 1) + k }),
    );
  }
  if (sidecars.length > MAX_TILE_IMAGES) data.notes.push(`tiles of the first ${MAX_TILE_IMAGES} of ${sidecars.length} images (by name), to keep the page small`);
  if (references && data.quality.length === 0) data.notes.push('no reference image matches an input by file name: no PSNR/SSIM');
  return data;
}

/** PSNR and SSIM of noisy and denoised against a clean reference (range as 'blindspot eval'). */
export function qualityRow(name: string, clean: Volume, noisy: Volume, denoised: Volume, range = dataRange(clean)): QualityRow {
  if (clean.shape.join() !== denoised.shape.join()) throw new InputError(name, `reference shape ${clean.shape.join('x')} differs from the output's ${denoised.shape.join('x')}`);
  return {
    name,
    range,
    psnrNoisy: psnr(clean.data, noisy.data, range),
    psnrDenoised: psnr(clean.data, denoised.data, range),
    ssimNoisy: ssim(clean.data, noisy.data, clean.shape, range),
    ssimDenoised: ssim(clean.data, denoised.data, clean.shape, range),
  };
}

interface StreamProvenance {
  command?: string[];
  input?: string;
  model?: { folder?: string; sha256?: string; method?: string };
  inputNoise?: InputNoiseRecord | { error: string };
}

/** A streamed (possibly sharded) OME-Zarr output: its provenance and the run history every shard stored in it. */
export async function gatherStreamOutput(url: string, opts: GatherOptions = {}): Promise<ReportData> {
  const store = openByteStore(url, opts.s3);
  try {
    const meta = await readOmeMetadata(store);
    const provenance = meta?.attributes.blindspot as StreamProvenance | undefined;
    if (!meta || !provenance) throw new InputError(url, 'has no blindspot provenance in its OME-Zarr attributes: not written by blindspot denoise');
    const histories = await readRunHistories(store);
    const last = histories.flatMap((h) => h.segments).at(-1);
    const data = base('stream', 'blindspot streamed denoise', url, provenanceOf({}));
    const modelDir = opts.modelDir ?? provenance.model?.folder;
    await withModel(data, modelDir, [...(opts.commands ?? []), ...(provenance.command ? [{ what: 'denoise', argv: provenance.command }] : [])], opts.backend ?? last?.backend, last?.machine);
    // The hash the run recorded is the one that counts (the folder may have changed since).
    if (provenance.model?.sha256) data.provenance.model = { ...(data.provenance.model ?? { method: provenance.model.method ?? 'unknown', network: 'unknown' }), sha256: provenance.model.sha256, folder: modelDir };
    if (provenance.inputNoise && 'nlf' in provenance.inputNoise) data.noise.push(inputNoise(provenance.inputNoise));
    else if (provenance.inputNoise) data.notes.push(`input noise fit failed during the run: ${provenance.inputNoise.error}`);
    const output = await openChunkedSource(url, { s3: opts.s3 });
    const input = provenance.input
      ? await openChunkedSource(provenance.input, { s3: opts.s3 }).catch((err: Error) => {
          data.notes.push(`input ${provenance.input} unreadable (${err.message}): tiles show the output only`);
          return null;
        })
      : null;
    const stdUrl = url.replace(/\.zarr\/?$/i, '').replace(/\/+$/, '') + '.std.zarr';
    const std = await openChunkedSource(stdUrl, { s3: opts.s3 }).catch(() => null);
    try {
      const sameShape = (r: typeof input): boolean => r !== null && r.info.shape.join() === output.info.shape.join();
      if (input && !sameShape(input)) data.notes.push(`input ${provenance.input} has shape [${input.info.shape.join(', ')}], the output [${output.info.shape.join(', ')}] (a channel or time point of it?): tiles show the output only`);
      data.tiles.push(
        await renderTiles({
          name: provenance.input ?? url,
          noisy: input && sameShape(input) ? chunkedRegions(input) : null,
          denoised: chunkedRegions(output),
          uncertainty: std && sameShape(std) ? chunkedRegions(std) : null,
          seed: opts.seed ?? 1,
        }),
      );
      data.stream = {
        output: url,
        input: provenance.input ?? 'unknown',
        shape: [...output.info.shape],
        chunks: [...output.info.chunks],
        histories,
        shardCount: histories[0]?.shard?.count ?? 1,
      };
      if (histories.length === 0) data.notes.push('the output holds no run history (written before blindspot recorded one, or by the library without it): no throughput section');
    } finally {
      await Promise.all([output.close?.(), input?.close?.(), std?.close?.()]);
    }
    return data;
  } finally {
    await store.close?.();
  }
}

/** Any target: a model folder, a .zarr / s3:// output, or a folder of denoised files. */
export async function gatherReport(target: string, opts: GatherOptions = {}): Promise<ReportData> {
  if (/^s3:\/\//i.test(target) || /\.zarr\/?$/i.test(target)) return gatherStreamOutput(target, opts);
  const stat = await fs.stat(target).catch(() => null);
  if (!stat) throw new InputError(target, 'does not exist');
  if (!stat.isDirectory()) throw new UsageError(`report takes a model folder, a denoised folder or a .zarr / s3:// output, got the file '${target}'`);
  if (await isModelFolder(target)) return gatherModel(target, opts);
  return gatherFileOutputs(target, opts);
}

/** A run held in memory (the demo): the model folder's records plus volumes the caller has. */
export async function gatherInMemory(opts: {
  kind: ReportData['kind'];
  title: string;
  /** The line under the title (default: the model folder). */
  subject?: string;
  modelDir: string;
  images: Array<{ name: string; noisy: Volume; denoised: Volume; clean?: Volume; range?: number; uncertainty?: Volume }>;
  commands?: ReportProvenance['commands'];
  backend?: string;
  seed?: number;
}): Promise<ReportData> {
  const data = base(opts.kind, opts.title, opts.subject ?? opts.modelDir, provenanceOf({}));
  await withModel(data, opts.modelDir, opts.commands ?? [], opts.backend);
  for (const [k, image] of opts.images.entries()) {
    data.tiles.push(
      await renderTiles({ name: image.name, noisy: volumeRegions(image.noisy), denoised: volumeRegions(image.denoised), uncertainty: image.uncertainty ? volumeRegions(image.uncertainty) : null, seed: (opts.seed ?? 1) + k }),
    );
    if (image.clean) data.quality.push(qualityRow(image.name, image.clean, image.noisy, image.denoised, image.range));
  }
  return data;
}
