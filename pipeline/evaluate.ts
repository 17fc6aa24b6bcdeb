/** `blindspot eval`: PSNR and SSIM of denoised images against clean ones, matched by file stem. */
import path from 'node:path';
import { InputError, UsageError } from '../core/errors.js';
import { psnr, ssim } from '../core/metrics.js';
import { sampleTypeRange, type Volume } from '../core/volume.js';
import { expandInputs, readImage } from '../storage/index.js';

export interface ImageScore {
  name: string;
  clean: string;
  denoised: string;
  psnr: number;
  ssim: number;
  range: number;
}

export interface EvalReport {
  images: ImageScore[];
  mean: { psnr: number; ssim: number };
  count: number;
}

export function fileStem(file: string): string {
  let base = path.basename(file);
  for (const ext of ['.gz', '.png', '.tiff', '.tif', '.fits', '.fit', '.npy']) {
    if (base.toLowerCase().endsWith(ext)) base = base.slice(0, -ext.length);
  }
  return base;
}

/** Data range for PSNR: the clean image's integer type range (255 for 8-bit), else its max - min. */
export function dataRange(clean: Volume): number {
  const [lo, hi] = sampleTypeRange(clean.sampleType);
  if (Number.isFinite(hi)) return hi - lo;
  let min = Infinity;
  let max = -Infinity;
  for (const v of clean.data) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return max - min;
}

export async function evaluateFolders(opts: { clean: string[]; denoised: string[]; range?: number }): Promise<EvalReport> {
  const cleanFiles = await expandInputs(opts.clean);
  const denoisedFiles = await expandInputs(opts.denoised);
  const byStem = new Map(denoisedFiles.map((f) => [fileStem(f), f]));
  const images: ImageScore[] = [];
  for (const cleanFile of cleanFiles) {
    const denoisedFile = byStem.get(fileStem(cleanFile));
    if (!denoisedFile) continue;
    const clean = await readImage(cleanFile);
    const denoised = await readImage(denoisedFile);
    if (clean.shape.join('x') !== denoised.shape.join('x')) {
      throw new InputError(denoisedFile, `shape ${denoised.shape.join('x')} differs from the clean image ${cleanFile} (${clean.shape.join('x')})`);
    }
    const range = opts.range ?? dataRange(clean);
    images.push({
      name: fileStem(cleanFile),
      clean: cleanFile,
      denoised: denoisedFile,
      psnr: psnr(clean.data, denoised.data, range),
      ssim: ssim(clean.data, denoised.data, clean.shape, range),
      range,
    });
  }
  if (images.length === 0) {
    throw new UsageError(`no denoised image matches a clean one by name (clean: ${cleanFiles.length} files, denoised: ${denoisedFiles.length} files)`);
  }
  const mean = {
    psnr: images.reduce((a, s) => a + s.psnr, 0) / images.length,
    ssim: images.reduce((a, s) => a + s.ssim, 0) / images.length,
  };
  return { images, mean, count: images.length };
}
