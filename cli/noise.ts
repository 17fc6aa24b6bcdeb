/**
 * `blindspot noise <inputs...>`: per image, the noise-level function (variance against intensity),
 * its Poisson-Gaussian summary and a plot; `blindspot noise --calibrate <stack> --out model.json`:
 * a calibrated noise model (histograms, or a Gaussian mixture) from repeated acquisitions of a static
 * sample; `blindspot noise --bootstrap <model-dir> <inputs...> --out model.json`: either of them
 * fitted to a trained model's output as pseudo-clean signal.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ExitCode, InputError, OutputError, UsageError } from '../core/errors.js';
import { expandInputs, readImage } from '../storage/index.js';
import { nlfVariance, type NlfRecord } from '../noise/nlf.js';
import { calibrateNoise, saveNoiseModel, type CalibratedNoiseModel, type GmmNoiseModel } from '../noise/model.js';
import { calibrationPairs } from '../noise/pairs.js';
import { fitGmmNoiseModel, GMM_DEFAULTS, GMM_MAX_COMPONENTS, GMM_MAX_DEGREE } from '../noise/gmmFit.js';
import { bootstrapNoiseModel } from '../noise/bootstrap.js';
import { loadModelFolder } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { NoisePool } from '../workers/noisePool.js';
import { choice, intOption, parse, setUp } from './options.js';
import { createReporter } from './progress.js';

export const noiseHelp = `Usage: blindspot noise <inputs...> [--plot-dir <dir>] [--json]
       blindspot noise --calibrate <stack> --out <noise-model.json> [--model histogram|gmm]
       blindspot noise --bootstrap <model-dir> <inputs...> --out <noise-model.json>

Estimates the noise of each image: a noise-level function (variance against intensity, a small
per-pixel network fitted to blind-spot residuals, CNN_est style) and its Poisson-Gaussian summary
var = a * x + b, in input units. Residuals come from Immerkaer's 3x3 filter or from a 5x5 filter
learned from the image's weak-texture patches (cross-fitted), whichever leaves less structure; pixels
near texture or edges, and clipped or saturated pixels, are left out. blindspot denoise writes the
same fit of each input beside its output (<output>.noise.json).

Options:
  --plot-dir <dir>       write <name>.noise.svg per image: binned variances and both fitted curves
  --json                 one JSON line per image: file, sigma (noise std at the median intensity), a, b, ...
  --workers <n>          fit in n worker threads (default: cores - 1, at least 1)
  --max-samples <n>      pixels sampled per image (default 200000)
  --seed <n>             sampling and fitting seed (default 1)
  --calibrate <stack>    a multi-page TIFF / 3D .npy of ~100 frames of a static sample: fits a
                         calibrated noise model (per-signal histograms and Poisson-Gaussian fit)
  --bootstrap <model-dir>  no calibration frames: denoise the inputs with this trained model and fit
                         the model (--model) to (denoised, noisy) pairs (the DivNoising bootstrap;
                         the denoiser's own error counts as noise, so use a well-trained model)
  --out <file>           where --calibrate / --bootstrap write the model (for blindspot train --prior <file>)
  --model <kind>         histogram (per-signal histograms and a Poisson-Gaussian fit; the default
                         for --calibrate) or gmm (the PN2V/DivNoising Gaussian mixture; the
                         default for --bootstrap)
  --gmm-components <K>   Gaussians in the mixture, 1-${GMM_MAX_COMPONENTS} (default ${GMM_DEFAULTS.components})
  --gmm-degree <D>       degree of the polynomials in the signal, 0-${GMM_MAX_DEGREE} (default ${GMM_DEFAULTS.degree})
  --backend B --threads N  for --bootstrap's denoiser, as for denoise
  -h, --help`;

export async function runNoise(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      'plot-dir': { type: 'string' },
      json: { type: 'boolean', default: false },
      workers: { type: 'string' },
      'max-samples': { type: 'string' },
      seed: { type: 'string' },
      calibrate: { type: 'string' },
      bootstrap: { type: 'string' },
      out: { type: 'string' },
      model: { type: 'string' },
      'gmm-components': { type: 'string' },
      'gmm-degree': { type: 'string' },
      backend: { type: 'string' },
      threads: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    true,
  );
  if (values.help) {
    process.stdout.write(noiseHelp + '\n');
    return ExitCode.ok;
  }
  const reporter = createReporter({ json: values.json === true || !process.stderr.isTTY });
  const seed = intOption('seed', values.seed) ?? 1;

  const fitsModel = values.calibrate !== undefined || values.bootstrap !== undefined;
  if (values.calibrate !== undefined && values.bootstrap !== undefined) throw new UsageError('--calibrate and --bootstrap do not go together: calibrate when you have repeated frames, bootstrap when you do not');
  if (!fitsModel) {
    for (const option of ['out', 'model', 'gmm-components', 'gmm-degree', 'backend', 'threads'] as const) {
      if (values[option] !== undefined) throw new UsageError(`--${option} applies only to --calibrate or --bootstrap`);
    }
  }
  if (fitsModel) {
    const kind = choice('model', values.model, ['histogram', 'gmm'] as const) ?? (values.bootstrap !== undefined ? 'gmm' : 'histogram');
    if (kind !== 'gmm' && (values['gmm-components'] !== undefined || values['gmm-degree'] !== undefined)) throw new UsageError('--gmm-components and --gmm-degree need --model gmm');
    const components = boundedInt('gmm-components', values['gmm-components'], 1, GMM_MAX_COMPONENTS);
    const degree = boundedInt('gmm-degree', values['gmm-degree'], 0, GMM_MAX_DEGREE);
    const mode = values.calibrate !== undefined ? '--calibrate' : '--bootstrap';
    if (!values.out) throw new UsageError(`${mode} needs --out <noise-model.json>`);
    if (values.calibrate !== undefined && positionals.length > 0) throw new UsageError('--calibrate takes one stack and no other inputs');
    if (values.bootstrap !== undefined && positionals.length === 0) throw new UsageError('--bootstrap needs <model-dir> and the noisy images to denoise: blindspot noise --bootstrap <model-dir> <inputs...> --out <file>');
    const inputs = values.calibrate !== undefined ? [values.calibrate] : await expandInputs(positionals);
    if (inputs.some((input) => path.resolve(input) === path.resolve(values.out!))) throw new OutputError(values.out, 'would overwrite an input; choose another --out');
    const gmmOptions = { components, degree, seed, onProgress: (iteration: number, nll: number) => reporter.event('gmm-fit', { iteration, negLogLikelihood: nll }) };
    let model: CalibratedNoiseModel | GmmNoiseModel;
    if (values.calibrate !== undefined) {
      const stack = await readImage(values.calibrate);
      if (stack.shape.length !== 3) throw new InputError(values.calibrate, 'is a single 2D image; calibration needs a stack of repeated frames (multi-page TIFF or 3D .npy)');
      model =
        kind === 'gmm'
          ? await fitGmmNoiseModel(values.calibrate, calibrationPairs(values.calibrate, stack.data, stack.shape, stack.sampleType), { ...gmmOptions, signalFrom: 'frame-mean' })
          : calibrateNoise(values.calibrate, stack.data, stack.shape, { sampleType: stack.sampleType });
    } else {
      const modelDir = values.bootstrap!;
      await setUp(values);
      const { model: network, manifest } = await loadModelFolder(modelDir);
      try {
        model = await bootstrapNoiseModel(
          inputs.map((file) => ({
            name: file,
            read: async () => {
              const volume = await readImage(file);
              if (volume.shape.length !== manifest.network.dims) throw new InputError(file, `is ${volume.shape.length}D but the model ${modelDir} was trained on ${manifest.network.dims}D data`);
              return volume;
            },
          })),
          (volume) => denoiseVolume(network, manifest, volume),
          { ...gmmOptions, model: kind, onImage: (file, index, count) => reporter.log(`denoising ${file} (${index + 1}/${count}) as pseudo-clean signal`) },
        );
      } finally {
        network.dispose();
      }
    }
    await saveNoiseModel(values.out, model);
    const what =
      model.kind === 'gmm'
        ? `${model.components}-component Gaussian mixture (degree ${model.degree}), mean -log p ${fmt(model.fit.negLogLikelihood)}`
        : model.kind === 'calibrated' && model.frames > 0
          ? `${model.frames} frames, histograms`
          : 'histograms of denoised against noisy';
    reporter.log(`${inputs.join(', ')}: ${what}; var ~ ${fmt(model.a)} x + ${fmt(model.b)}; noise model written to ${values.out}`);
    reporter.event(values.calibrate !== undefined ? 'calibration' : 'bootstrap', { file: inputs.join(', '), out: values.out, model: kind, a: model.a, b: model.b, ...(model.kind === 'gmm' ? { components: model.components, degree: model.degree, negLogLikelihood: model.fit.negLogLikelihood } : {}), ...(model.kind === 'calibrated' ? { frames: model.frames, bins: model.bins.length } : {}) });
    return ExitCode.ok;
  }

  if (positionals.length === 0) throw new UsageError('noise needs input images (blindspot noise --help)');
  const files = await expandInputs(positionals);
  const plotDir = values['plot-dir'];
  if (plotDir) await fsp.mkdir(plotDir, { recursive: true }).catch((err: Error) => {
    throw new OutputError(plotDir, `cannot create the plot folder: ${err.message}`);
  });
  const pool = new NoisePool({ size: intOption('workers', values.workers) });
  try {
    // Images are read and sampled one at a time (memory: one image), fits overlap in the workers.
    const fits: Promise<void>[] = [];
    for (const file of files) {
      const image = await readImage(file);
      const record = pool.fit([{ name: file, data: image.data, shape: image.shape, sampleType: image.sampleType }], { maxSamples: intOption('max-samples', values['max-samples']), seed });
      fits.push(
        record.then(async ([nlf]) => {
          for (const warning of nlf.warnings) reporter.log(`${file}: ${warning}`);
          let plot: string | undefined;
          if (plotDir) {
            plot = path.join(plotDir, `${path.basename(file).replace(/\.[^.]+$/, '')}.noise.svg`);
            await fsp.writeFile(plot, noisePlotSvg(nlf)).catch((err: Error) => {
              throw new OutputError(plot!, `cannot write the plot: ${err.message}`);
            });
          }
          if (reporter.json) reporter.event('noise', { file, sigma: nlf.sigma, a: nlf.a, b: nlf.b, medianIntensity: nlf.medianIntensity, method: nlf.method, percentiles: nlf.percentiles, plot, warnings: nlf.warnings, nlf });
          else process.stdout.write(noiseTable(file, nlf) + (plot ? `  plot: ${plot}\n` : '') + '\n');
        }),
      );
    }
    await Promise.all(fits);
  } finally {
    await pool.close();
  }
  return ExitCode.ok;
}

function boundedInt(name: string, value: string | undefined, lo: number, hi: number): number | undefined {
  const n = intOption(name, value);
  if (n !== undefined && (n < lo || n > hi)) throw new UsageError(`--${name} must be from ${lo} to ${hi}, got '${value}'`);
  return n;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1000 || a < 0.01 ? v.toExponential(3) : v.toPrecision(4);
}

/** The per-image table: summary line and sigma at intensity percentiles. */
export function noiseTable(file: string, nlf: NlfRecord): string {
  const lines = [
    `${file}: sigma ${fmt(nlf.sigma)} at median intensity ${fmt(nlf.medianIntensity)}; var = ${fmt(nlf.a)} x + ${fmt(nlf.b)} (${nlf.method === 'nlf' ? `NLF from ${nlf.pixelsUsed} pixels` : 'global estimate'})`,
    '  percentile   intensity       sigma   sigma(a,b)',
  ];
  for (const { p, intensity, sigma } of nlf.percentiles) {
    const pg = Math.sqrt(Math.max(0, nlf.a * intensity + nlf.b));
    lines.push(`  ${String(p).padStart(10)}  ${fmt(intensity).padStart(10)}  ${fmt(sigma).padStart(10)}  ${fmt(pg).padStart(11)}`);
  }
  return lines.join('\n') + '\n';
}

/** SVG plot of variance against intensity: binned data, the fitted network and the Poisson-Gaussian line. */
export function noisePlotSvg(nlf: NlfRecord): string {
  const W = 640, H = 420, L = 70, R = 20, T = 30, B = 50;
  const xs = [...nlf.bins.map((b) => b.intensity), ...nlf.percentiles.map((p) => p.intensity)].filter(Number.isFinite);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (!(x1 > x0)) { x0 = (x0 || 0) - 1; x1 = x0 + 2; }
  const curve = Array.from({ length: 101 }, (_, i) => x0 + ((x1 - x0) * i) / 100);
  const ys = [...nlf.bins.map((b) => b.variance), ...curve.map((x) => nlfVariance(nlf, x)), ...curve.map((x) => nlf.a * x + nlf.b)].filter(Number.isFinite);
  const y0 = 0;
  let y1 = Math.max(...ys) * 1.1;
  if (!(y1 > 0)) y1 = 1;
  const px = (x: number): number => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number): number => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const poly = (f: (x: number) => number): string => curve.map((x) => `${px(x).toFixed(1)},${py(Math.max(0, f(x))).toFixed(1)}`).join(' ');
  const ticks = (lo: number, hi: number): number[] => Array.from({ length: 5 }, (_, i) => lo + ((hi - lo) * i) / 4);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="18">${esc(path.basename(nlf.name))}: noise variance against intensity</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
    ...ticks(x0, x1).map((x) => `<text x="${px(x).toFixed(1)}" y="${H - B + 16}" text-anchor="middle">${fmt(x)}</text>`),
    ...ticks(y0, y1).map((y) => `<text x="${L - 6}" y="${(py(y) + 4).toFixed(1)}" text-anchor="end">${fmt(y)}</text>`),
    `<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">intensity</text>`,
    `<text x="16" y="${(T + H - B) / 2}" transform="rotate(-90 16 ${(T + H - B) / 2})" text-anchor="middle">variance</text>`,
    ...nlf.bins.map((b) => `<circle cx="${px(b.intensity).toFixed(1)}" cy="${py(b.variance).toFixed(1)}" r="3" fill="#555"><title>${fmt(b.intensity)}: ${fmt(b.variance)} (${b.count} px)</title></circle>`),
    `<polyline fill="none" stroke="#d62728" stroke-width="2" points="${poly((x) => nlfVariance(nlf, x))}"/>`,
    `<polyline fill="none" stroke="#1f77b4" stroke-width="2" stroke-dasharray="6 4" points="${poly((x) => nlf.a * x + nlf.b)}"/>`,
    `<text x="${W - R - 250}" y="${T + 14}" fill="#d62728">NLF network (${nlf.method})</text>`,
    `<text x="${W - R - 250}" y="${T + 30}" fill="#1f77b4">var = ${fmt(nlf.a)} x + ${fmt(nlf.b)}</text>`,
    `<text x="${W - R - 250}" y="${T + 46}" fill="#555">binned data</text>`,
    '</svg>',
    '',
  ].join('\n');
}
