/**
 * `blindspot calibrate <image> --denoiser median|gaussian|nlm`: chooses a classical denoiser's
 * parameter by the J-invariant (Noise2Self) loss, with no clean image, prints the loss of every
 * candidate and the choice, and optionally writes the image denoised with the chosen parameter.
 */
import path from 'node:path';
import { ExitCode, OutputError, UsageError } from '../core/errors.js';
import { applyClassicalDenoiser, calibrateDenoiser, CLASSICAL_DENOISERS, type CalibrationResult } from '../pipeline/calibrate.js';
import { formatOf, readImage, writeImage } from '../storage/index.js';
import { choice, intOption, parse } from './options.js';
import { createReporter } from './progress.js';

export const CALIBRATE_HELP = `Usage: blindspot calibrate <image> --denoiser median|gaussian|nlm [options]

Chooses a classical denoiser's parameter with no ground truth, by the J-invariant self-supervised
loss of Noise2Self (Batson & Royer 2019): the pixels are split into the phases of a k x k (k x k x k
in 3D) grid; for each phase the phase's pixels are replaced by the mean of their neighbours, the
denoiser runs, and its output on the phase is compared with the noisy values there. For noise that
is independent from pixel to pixel this loss is the loss against the clean image plus the noise
variance, so its minimum picks the best parameter. 2D images and 3D stacks ([Z, Y, X]).

Denoisers and their parameter:
  median     window radius r in pixels (window 2r+1 per axis); default candidates 1,2,3,4
  gaussian   standard deviation sigma in pixels; default candidates 0.5,0.75,1,1.25,1.5,2,2.5,3
  nlm        non-local means filter strength h in image units; default candidates 0.4..1.6 x a
             robust noise estimate (patch radius 1, search radius 5 in 2D / 2 in 3D)
While the lowest loss sits at an end of the default candidates, the range grows past that end
(radius + 1, or x1.5 / /1.5) up to 8 times, so the choice is interior; a choice still at an end
(or at an end of --candidates) is reported with a warning.

Options:
  --denoiser <name>        median, gaussian or nlm (required)
  --candidates <a,b,...>   parameter values to try
  --grid <k>               grid side k >= 2 (default 4 in 2D, 3 in 3D)
  --patch-radius <n>       nlm patch radius (default 1)
  --search-radius <n>      nlm search radius (default 5 in 2D, 2 in 3D)
  --out <file>             write the image denoised with the chosen parameter (.tif, .npy, .fits;
                           .png for 8/16-bit inputs); never the input itself
  --output invariant|plain what --out holds (default invariant): the J-invariant filter the loss
                           scored (each pixel filtered with its grid phase interpolated from its
                           neighbours; the choice is right for it by construction), or the plain
                           filter with the chosen parameter (often sharper on natural images, but
                           the choice is not guaranteed optimal for it: it also averages each
                           pixel's own noise)
  --overwrite              replace an existing --out file
  --json                   one JSON line with the losses and the choice
  -h, --help`;

export async function runCalibrate(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      denoiser: { type: 'string' },
      candidates: { type: 'string' },
      grid: { type: 'string' },
      'patch-radius': { type: 'string' },
      'search-radius': { type: 'string' },
      out: { type: 'string' },
      output: { type: 'string', default: 'invariant' },
      overwrite: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    true,
  );
  if (values.help) {
    process.stdout.write(CALIBRATE_HELP + '\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 1) throw new UsageError(`calibrate takes one image, got ${positionals.length} (blindspot calibrate --help)`);
  const input = positionals[0];
  const denoiser = choice('denoiser', values.denoiser, CLASSICAL_DENOISERS);
  if (!denoiser) throw new UsageError(`calibrate needs --denoiser ${CLASSICAL_DENOISERS.join('|')}`);
  const candidates = candidateList(values.candidates, denoiser);
  const grid = intOption('grid', values.grid);
  if (grid !== undefined && grid < 2) throw new UsageError(`--grid must be at least 2, got ${grid}`);
  const patchRadius = intOption('patch-radius', values['patch-radius']);
  const searchRadius = intOption('search-radius', values['search-radius']);
  if (searchRadius === 0) throw new UsageError('--search-radius must be at least 1');
  const output = choice('output', values.output, ['invariant', 'plain'] as const) ?? 'invariant';
  const out = values.out;
  if (out !== undefined) {
    if (path.resolve(out) === path.resolve(input)) throw new OutputError(out, `output would overwrite the input ${input}; choose another --out`);
    if (!formatOf(out)) throw new OutputError(out, 'has an unsupported file type; write .tif, .npy, .fits or .png');
  }

  const reporter = createReporter({ json: values.json === true });
  const volume = await readImage(input);
  const result = calibrateDenoiser(volume, { denoiser, candidates, grid, patchRadius, searchRadius, name: input });
  if (reporter.json) reporter.event('calibration', { file: input, shape: [...volume.shape], ...result, ...(out ? { out, output } : {}) });
  else process.stdout.write(calibrationTable(input, result));

  if (out !== undefined) {
    const denoised = applyClassicalDenoiser(volume, denoiser, result.best, { ...result.nlm, grid: result.grid, output });
    // PNG stores integers only: round back to the input's type there; elsewhere keep the floats.
    const sampleType = formatOf(out) === 'png' ? volume.sampleType : 'float32';
    await writeImage(out, denoised, { sampleType, overwrite: values.overwrite });
    if (!reporter.json) process.stdout.write(`denoised image (${output} filter) written to ${out}\n`);
  }
  return ExitCode.ok;
}

function candidateList(text: string | undefined, denoiser: (typeof CLASSICAL_DENOISERS)[number]): number[] | undefined {
  if (text === undefined) return undefined;
  const parts = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const values = parts.map(Number);
  if (values.length === 0) throw new UsageError('--candidates needs at least one value, e.g. --candidates 1,2,3');
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (denoiser === 'median' ? !(Number.isInteger(v) && v >= 1) : !(v > 0 && Number.isFinite(v))) {
      throw new UsageError(`--candidates: '${parts[i]}' is not a valid ${denoiser === 'median' ? 'median radius (an integer >= 1)' : denoiser === 'gaussian' ? 'Gaussian sigma (a positive number)' : 'nlm strength h (a positive number)'}`);
    }
  }
  return values;
}

const parameterName = { median: 'radius', gaussian: 'sigma', nlm: 'h' } as const;

/** The human-readable result: one row per candidate, the choice marked. */
export function calibrationTable(file: string, result: CalibrationResult): string {
  const name = parameterName[result.denoiser];
  const geometry = result.nlm ? `, patch radius ${result.nlm.patchRadius}, search radius ${result.nlm.searchRadius}` : '';
  const lines = [
    `${file}: ${result.denoiser}${geometry}; J-invariant loss over ${result.phases} grid phases (k = ${result.grid}), noise sigma estimate ${result.noiseSigmaEstimate.toPrecision(4)}`,
    `  ${name.padStart(10)}  ${'loss'.padStart(14)}`,
  ];
  for (const { parameter, loss } of result.losses) {
    lines.push(`  ${String(parameter).padStart(10)}  ${loss.toPrecision(6).padStart(14)}${parameter === result.best ? '  <- chosen' : ''}`);
  }
  lines.push(`chosen ${name} = ${result.best} (${result.seconds.toFixed(2)} s)`);
  if (result.edge) {
    lines.push(`warning: the chosen ${name} is the ${result.edge === 'upper' ? 'largest' : 'smallest'} one searched; the best ${name} may lie beyond it (try --candidates past ${result.best})`);
  }
  return lines.join('\n') + '\n';
}
