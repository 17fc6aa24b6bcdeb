/**
 * What a run report holds: the JSON document embedded in the HTML page (report/html.ts) and drawn by
 * its script (report/client.ts). Every number is copied from the run's own records (the model's
 * blindspot.json, the outputs' .noise.json sidecars, the OME-Zarr's provenance and run history), never
 * recomputed, so the page and the JSON logs agree; the tiles are the one thing computed here.
 */
import type { TrainingRecord } from '../models/io.js';
import type { NlfBin } from '../noise/nlf.js';
import type { RunHistory } from '../pipeline/runHistory.js';

export type ReportKind = 'model' | 'denoise' | 'stream' | 'demo';

export interface ReportProvenance {
  /** Command lines that made what the report shows (training, denoising), as recorded. */
  commands: Array<{ what: string; argv: string[] }>;
  model?: { folder?: string; sha256?: string; method: string; network: string; backend?: string; threads?: number };
  versions: { blindspot: string; node: string; tfjs?: string };
  /** The backend the denoise ran on (streamed runs record it; in-process runs know it). */
  backend?: string;
  machine?: { hostname: string; cpus: number; cpuModel: string; totalMemoryBytes: number; platform: string };
  generated: string;
}

export interface TrainingSection {
  history: TrainingRecord[];
  steps: number;
  stepsDone: number;
  bestStep: number;
  bestValLoss: number | null;
  /** The method's own validation loss, when not its training loss ('j-invariant'). */
  validationLoss?: string;
  wallSeconds: number;
  /** Steps where the learning rate changed (plateau halvings), from the history. */
  learningRateChanges: Array<{ step: number; seconds: number; from: number; to: number }>;
  /** A cosine schedule's first and last rates (it changes every step: no markers). */
  annealed?: { from: number; to: number };
}

/** One image's noise-level function: its binned variances and the fitted curves, input units. */
export interface NoiseCurve {
  name: string;
  /** 'training': a training image (model manifest); 'input': a denoised input (sidecar or OME-Zarr provenance). */
  source: 'training' | 'input';
  a: number;
  b: number;
  sigma: number;
  medianIntensity: number;
  bins: NlfBin[];
  /** The fitted NLF's variance on a grid of intensities (absent when only the Poisson-Gaussian summary is recorded). */
  fitted: Array<{ intensity: number; variance: number }>;
}

export interface QualityRow {
  name: string;
  range: number;
  psnrNoisy: number;
  psnrDenoised: number;
  ssimNoisy?: number;
  ssimDenoised?: number;
}

/** One tile at full resolution: PNGs (data URIs) per z slice, all windowed alike within the image. */
export interface Tile {
  label: string;
  /** Why the tool chose it. */
  reason: string;
  /** ZYX or YX origin and shape in the image, voxels. */
  origin: number[];
  shape: number[];
  /** Image z of each slice (3D), or [] for 2D. */
  z: number[];
  noisy: string[];
  denoised: string[];
  residual: string[];
  uncertainty?: string[];
}

export interface TileImage {
  name: string;
  shape: number[];
  /** Display window of noisy and denoised (input units), and the residual's +-range. */
  window: [number, number];
  residualRange: number;
  uncertaintyRange?: number;
  tiles: Tile[];
  /** Why tiles are missing (e.g. the input could not be read), if they are. */
  note?: string;
}

export interface StreamSection {
  output: string;
  input: string;
  shape: number[];
  chunks: number[];
  /** One record per shard (or one for an unsharded run), as stored in the output. */
  histories: RunHistory[];
  /** Shard count expected (from the records; 1 unsharded). */
  shardCount: number;
}

export interface ReportData {
  format: 'blindspot-report';
  version: 1;
  kind: ReportKind;
  title: string;
  subject: string;
  provenance: ReportProvenance;
  training?: TrainingSection;
  noise: NoiseCurve[];
  quality: QualityRow[];
  tiles: TileImage[];
  stream?: StreamSection;
  /** Things the report could not show and why. */
  notes: string[];
}
