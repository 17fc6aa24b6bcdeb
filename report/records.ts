/**
 * The report's sections from the run's own records, copied as they are: a model manifest's history
 * and noise fits, a denoised input's noise sidecar or OME-Zarr provenance, provenance of this process.
 */
import os from 'node:os';
import { createRequire } from 'node:module';
import { VERSION } from '../core/version.js';
import type { ModelManifest } from '../models/io.js';
import { nlfVariance, type NlfRecord } from '../noise/nlf.js';
import type { InputNoiseRecord } from '../noise/inputNoise.js';
import type { NoiseCurve, ReportProvenance, TrainingSection } from './types.js';

/**
 * Training history and where the learning rate changed (the plateau schedule halves it). A cosine
 * schedule changes it every step: it is summed up as one annealing, not thousands of markers.
 */
export function trainingSection(manifest: ModelManifest): TrainingSection {
  const history = manifest.history;
  const t = manifest.training;
  const section: TrainingSection = { history, steps: t.steps, stepsDone: t.stepsDone, bestStep: t.bestStep, bestValLoss: t.bestValLoss, wallSeconds: t.wallSeconds, learningRateChanges: [] };
  if (t.validationLoss !== undefined) section.validationLoss = t.validationLoss;
  if (t.learningRateSchedule === 'cosine') {
    if (history.length > 0) section.annealed = { from: history[0].learningRate, to: history[history.length - 1].learningRate };
    return section;
  }
  for (let i = 1; i < history.length; i++) {
    if (history[i].learningRate !== history[i - 1].learningRate) {
      section.learningRateChanges.push({ step: history[i].step, seconds: history[i].seconds, from: history[i - 1].learningRate, to: history[i].learningRate });
    }
  }
  return section;
}

const CURVE_POINTS = 48;

/** An NLF record as a plot: its bins, and the fitted variance over the bins' intensity range. */
export function noiseCurve(record: NlfRecord, source: NoiseCurve['source'], name = record.name): NoiseCurve {
  const intensities = record.bins.map((b) => b.intensity);
  const low = intensities.length > 0 ? Math.min(...intensities) : record.medianIntensity;
  const high = intensities.length > 0 ? Math.max(...intensities) : record.medianIntensity;
  const fitted =
    high > low
      ? Array.from({ length: CURVE_POINTS }, (_, k) => {
          const intensity = low + ((high - low) * k) / (CURVE_POINTS - 1);
          return { intensity, variance: nlfVariance(record, intensity) };
        })
      : [];
  return { name, source, a: record.a, b: record.b, sigma: record.sigma, medianIntensity: record.medianIntensity, bins: record.bins, fitted };
}

/** Noise curves of a model's training images. */
export function trainingNoise(manifest: ModelManifest): NoiseCurve[] {
  return (manifest.noise ?? []).map((record) => noiseCurve(record, 'training'));
}

/** The curve of a denoised input's sidecar (or the OME-Zarr provenance copy of one). */
export function inputNoise(record: Pick<InputNoiseRecord, 'input' | 'nlf'>): NoiseCurve {
  return noiseCurve(record.nlf, 'input', record.input);
}

function tfjsVersion(): string | undefined {
  try {
    const require = createRequire(import.meta.url);
    return (require('@tensorflow/tfjs-core/package.json') as { version: string }).version;
  } catch {
    return undefined;
  }
}

export function thisMachine(): NonNullable<ReportProvenance['machine']> {
  const cpus = os.cpus();
  return { hostname: os.hostname(), cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', totalMemoryBytes: os.totalmem(), platform: `${os.platform()} ${os.arch()}` };
}

/** Provenance from a model manifest (training command, network, backend) plus what the caller knows. */
export function provenanceOf(opts: {
  manifest?: ModelManifest;
  modelFolder?: string;
  modelHash?: string;
  commands?: ReportProvenance['commands'];
  backend?: string;
  machine?: ReportProvenance['machine'];
}): ReportProvenance {
  const m = opts.manifest;
  const commands = [...(m ? [{ what: 'train', argv: m.createdBy.command }] : []), ...(opts.commands ?? [])];
  const network = m ? describeNetwork(m) : undefined;
  return {
    commands,
    ...(m
      ? { model: { folder: opts.modelFolder, sha256: opts.modelHash, method: m.method, network: network!, backend: m.training.backend, threads: m.training.threads } }
      : {}),
    versions: { blindspot: VERSION, node: process.version, tfjs: tfjsVersion() },
    ...(opts.backend ? { backend: opts.backend } : {}),
    machine: opts.machine ?? thisMachine(),
    generated: new Date().toISOString(),
  };
}

function describeNetwork(m: ModelManifest): string {
  const n = m.network as unknown as Record<string, unknown>;
  const fields = ['kind', 'dims', 'depth', 'filters', 'blocks', 'kernelSize', 'batchNorm'].filter((k) => n[k] !== undefined).map((k) => `${k} ${String(n[k])}`);
  return `${fields.join(', ')}; patch ${m.patchShape.join('x')}; loss ${m.loss}`;
}
