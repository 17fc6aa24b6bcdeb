/**
 * Distillation (pipeline/distill.ts, `blindspot distill`) on tiny problems, wasm backend: a quickly
 * trained laine19 teacher (posterior mean) distilled into a plain U-Net reaches the teacher's PSNR
 * within 0.5 dB and predicts the same tile faster (measured here only as a relative comparison, same
 * tile, same backend, same process); the manifest records the teacher; chunked inputs stream through
 * a temporary Zarr that is removed afterwards; --clean pairs are noised by the teacher's noise model;
 * bad calls are refused with typed errors before anything is written.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { psnr } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder, readManifest, type ModelManifest } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { distillModel, noiseLike, teacherNoise, teacherTargetsDir } from '../pipeline/distill.js';
import { trainModel, TrainingInterrupted } from '../pipeline/train.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { writeImage } from '../storage/index.js';
import { runDistill } from '../cli/distill.js';
import { createOmeZarr } from '../storage/ome.js';

const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
const range = 100;
let tmp: string;
let teacherDir: string;
let noisyFile: string;
let clean: Float32Array;
let noisy: Volume;

/** Blobs and filaments scaled to [5, 100], Gaussian noise sigma 20 (about 14 dB). */
function problem(side: number, seed: number): { clean: Float32Array; noisy: Volume } {
  const rng = new Rng(seed);
  const cells = syntheticCells([1, side, side], rng, { blobs: Math.round((side * side) / 50), filaments: 4 });
  const c = cells.data.map((v) => v * 100);
  return { clean: c, noisy: { data: addGaussianNoise(c, 20, rng), shape: [side, side], sampleType: 'float32' } };
}

async function denoisedPsnr(dir: string, volume: Volume): Promise<number> {
  const { model, manifest } = await loadModelFolder(dir);
  try {
    return psnr(clean, (await denoiseVolume(model, manifest, volume)).data, range);
  } finally {
    model.dispose();
  }
}

/**
 * Median wall time (ms) of denoising the same 64x64 image as one tile (denoiseVolume: normalise,
 * predict, denormalise; the posterior mean for the teacher), after a warm-up. maxTileVoxels is given
 * so that no per-call memory probe of the network is timed.
 */
async function tileMilliseconds(dir: string, tile: Volume): Promise<number> {
  const { model, manifest } = await loadModelFolder(dir);
  const run = async (): Promise<number> => {
    const t0 = performance.now();
    await denoiseVolume(model, manifest, tile, { maxTileVoxels: 2 ** 20 });
    return performance.now() - t0;
  };
  await run();
  const times: number[] = [];
  for (let i = 0; i < 7; i++) times.push(await run());
  model.dispose();
  return times.sort((a, b) => a - b)[3];
}

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-distill-'));
  ({ clean, noisy } = problem(64, 3));
  noisyFile = path.join(tmp, 'data', 'noisy.tif');
  await fs.mkdir(path.dirname(noisyFile));
  await writeImage(noisyFile, noisy);
  // The teacher: laine19 (four rotated branch U-Nets) with a learned Gaussian noise level, so its
  // output is the posterior mean and its manifest has a noise model.
  teacherDir = path.join(tmp, 'teacher');
  await trainModel({
    volumes: [{ volume: noisy, name: noisyFile }],
    out: teacherDir,
    method: 'laine19',
    prior: 'learned',
    network: { depth: 2, filters: 8 },
    steps: 40,
    batchSize: 4,
    patchShape: [32, 32],
    learningRate: 4e-3,
    validateEvery: 20,
    valPatches: 4,
    seed: 5,
    noiseFits: false,
  });
}, 120_000);

afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const studentOptions = {
  steps: 60,
  batchSize: 4,
  patchShape: [32, 32],
  learningRate: 4e-3,
  validateEvery: 20,
  valPatches: 4,
  seed: 7,
  network: { depth: 2, filters: 16, batchNorm: false },
};

describe('distill: a U-Net student of a laine19 teacher', () => {
  it('reaches the teacher PSNR within 0.5 dB, predicts a tile faster, and records the teacher', async () => {
    const out = path.join(tmp, 'student');
    const t0 = performance.now();
    const manifest = await distillModel({ teacher: teacherDir, inputs: [noisyFile], out, ...studentOptions });
    const seconds = (performance.now() - t0) / 1000;
    const teacherPsnr = await denoisedPsnr(teacherDir, noisy);
    const studentPsnr = await denoisedPsnr(out, noisy);
    const teacherMs = await tileMilliseconds(teacherDir, noisy);
    const studentMs = await tileMilliseconds(out, noisy);
    console.log(
      `distill: noisy ${psnr(clean, noisy.data, range).toFixed(2)} dB, teacher ${teacherPsnr.toFixed(2)} dB, student ${studentPsnr.toFixed(2)} dB ` +
        `(${seconds.toFixed(1)} s for ${studentOptions.steps} steps); 64x64 tile: teacher ${teacherMs.toFixed(1)} ms, student ${studentMs.toFixed(1)} ms`,
    );
    expect(studentPsnr).toBeGreaterThan(teacherPsnr - 0.5);
    expect(studentMs).toBeLessThan(teacherMs);

    // An ordinary model folder: a U-Net trained on pairs, the teacher recorded.
    const saved = await readManifest(out);
    expect(saved).toEqual(manifest);
    expect(saved.method).toBe('care');
    expect(saved.network.kind ?? 'unet').toBe('unet');
    const weights = await fs.readFile(path.join(teacherDir, 'weights.bin'));
    expect(saved.distillation?.teacher).toEqual({
      path: path.resolve(teacherDir),
      method: 'laine19',
      network: expect.stringContaining('laine19'),
      weightsSha256: createHash('sha256').update(weights).digest('hex'),
    });
    expect(saved.methodSettings?.targets).toEqual([`${noisyFile} (teacher output)`]);
  }, 90_000);

  it('streams a Zarr input through a temporary Zarr of teacher outputs, removed afterwards', async () => {
    const input = path.join(tmp, 'data', 'noisy.zarr');
    const axes = ['y', 'x'].map((name) => ({ name, type: 'space' as const, unit: 'micrometer' }));
    const writer = await createOmeZarr(input, { shape: [64, 64], chunks: [32, 32], dtype: 'float32', axes, placement: { scale: [1, 1], translation: [0, 0] } });
    for (const [y, x] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
      const block = new Float32Array(32 * 32);
      for (let r = 0; r < 32; r++) block.set(noisy.data.subarray((y * 32 + r) * 64 + x * 32, (y * 32 + r) * 64 + x * 32 + 32), r * 32);
      await writer.writeChunk([y, x], block);
    }
    const out = path.join(tmp, 'student-streamed');
    const inputFiles = await fs.readdir(input, { recursive: true });
    const seen: string[] = [];
    const manifest = await distillModel({
      teacher: teacherDir,
      inputs: [input],
      out,
      streaming: { maxMemoryBytes: 2 ** 30 },
      ...studentOptions,
      steps: 10,
      onEvent: (e) => {
        if (e.type === 'teacher-image') seen.push(e.input);
      },
    });
    expect(seen).toEqual([input]);
    expect(manifest.distillation?.teacher.method).toBe('laine19');
    expect(manifest.training.stepsDone).toBe(10);
    expect(manifest.training.inputs).toEqual([input]);
    await expect(fs.access(teacherTargetsDir(out))).rejects.toThrow();
    // Nothing was written into the input.
    expect((await fs.readdir(input, { recursive: true })).sort()).toEqual(inputFiles.sort());
    expect(await denoisedPsnr(out, noisy)).toBeGreaterThan(psnr(clean, noisy.data, range));
  }, 60_000);

  it('--clean: clean images noised by the teacher noise model, recorded in the manifest', async () => {
    const other = problem(64, 11);
    const cleanFile = path.join(tmp, 'clean', 'clean.tif');
    await fs.mkdir(path.dirname(cleanFile));
    await writeImage(cleanFile, { data: other.clean, shape: [64, 64], sampleType: 'float32' });
    const teacherManifest = await readManifest(teacherDir);
    const notes: string[] = [];
    const manifest = await distillModel({
      teacher: teacherDir,
      inputs: [noisyFile],
      clean: [cleanFile],
      out: path.join(tmp, 'student-clean'),
      ...studentOptions,
      steps: 6,
      validateEvery: 3,
      onEvent: (e) => {
        if (e.type === 'note') notes.push(e.message);
      },
    });
    expect(manifest.distillation?.clean).toEqual([cleanFile]);
    expect(manifest.distillation?.cleanNoise).toEqual(teacherManifest.prior?.noise);
    // One input, one clean image: nothing to spare for validation, so both train.
    expect(notes.join()).toMatch(/too few to hold one out/);
    // The teacher's pass runs where `denoise` would: ONNX Runtime under the default engine request.
    expect(notes.join()).toMatch(/the teacher's pass on engine onnx/);
    expect(manifest.training.inputs).toHaveLength(2);
    expect(manifest.methodSettings?.targets).toContain(cleanFile);
  }, 60_000);

  it('an interrupted distillation resumes to the end with the teacher recorded', async () => {
    const out = path.join(tmp, 'student-resumed');
    const controller = new AbortController();
    const run = (resume: boolean) =>
      distillModel({
        teacher: teacherDir,
        inputs: [noisyFile],
        out,
        ...studentOptions,
        steps: 8,
        validateEvery: 4,
        resume,
        // The resumed run gets no signal: the first one's stays aborted.
        signal: resume ? undefined : controller.signal,
        onEvent: (e) => {
          if (e.type === 'train' && e.event.type === 'step' && e.event.step === 2 && !resume) controller.abort();
        },
      });
    await expect(run(false)).rejects.toThrow(TrainingInterrupted);
    await fs.access(path.join(out, 'checkpoint'));
    const manifest = await run(true);
    expect(manifest.training.stepsDone).toBe(8);
    expect(manifest.distillation?.teacher.method).toBe('laine19');
    await expect(fs.access(path.join(out, 'checkpoint'))).rejects.toThrow();
  }, 60_000);

  it('noiseLike draws the variance of the noise model: Poisson-Gaussian var = a x + b', () => {
    const x = new Float32Array(200_000).fill(50);
    const y = noiseLike(x, { kind: 'poisson-gaussian', a: 2, b: 9 }, new Rng(1));
    let mean = 0;
    for (const v of y) mean += v / y.length;
    let variance = 0;
    for (const v of y) variance += (v - mean) ** 2 / y.length;
    expect(Math.abs(mean - 50)).toBeLessThan(0.1);
    expect(Math.abs(variance - 109) / 109).toBeLessThan(0.02);
    const manifest = { noise: [{ a: 1, b: 4 }, { a: 3, b: 8 }] } as unknown as ModelManifest;
    expect(teacherNoise(manifest, 't')).toEqual({ kind: 'poisson-gaussian', a: 2, b: 6 });
    expect(() => teacherNoise({} as ModelManifest, 'models/t')).toThrow(UsageError);
  });
});

describe('distill refuses bad calls before writing anything', () => {
  it('a missing teacher, an output inside an input or the teacher, --clean with streamed inputs', async () => {
    const out = path.join(tmp, 'refused');
    await expect(distillModel({ teacher: path.join(tmp, 'no-such-model'), inputs: [noisyFile], out })).rejects.toThrow(InputError);
    await expect(distillModel({ teacher: teacherDir, inputs: [path.join(tmp, 'data')], out: path.join(tmp, 'data', 'student') })).rejects.toThrow(OutputError);
    await expect(distillModel({ teacher: teacherDir, inputs: [noisyFile], out: teacherDir })).rejects.toThrow(/would overwrite the teacher/);
    await expect(distillModel({ teacher: teacherDir, inputs: [noisyFile], out: path.join(teacherDir, 'student') })).rejects.toThrow(/would overwrite the teacher/);
    await expect(
      distillModel({ teacher: teacherDir, inputs: [path.join(tmp, 'data', 'noisy.zarr')], clean: [noisyFile], streaming: {}, out }),
    ).rejects.toThrow(/--clean/);
    await expect(distillModel({ teacher: teacherDir, inputs: [], out })).rejects.toThrow(UsageError);
    // An existing student is not replaced without overwrite.
    await expect(distillModel({ teacher: teacherDir, inputs: [noisyFile], out: path.join(tmp, 'student'), ...studentOptions })).rejects.toThrow(OutputError);
    await expect(fs.access(out)).rejects.toThrow();
  });

  it('the CLI: help with examples, usage errors for bad options, exit 3 for a missing teacher', async () => {
    // Option errors in-process (they are thrown before any backend or file is touched) ...
    await expect(runDistill([teacherDir, noisyFile])).rejects.toThrow(/--out/);
    await expect(runDistill([teacherDir])).rejects.toThrow(UsageError);
    await expect(runDistill([teacherDir, noisyFile, '--out', 's', '--steps', 'many'])).rejects.toThrow(/--steps/);
    await expect(runDistill([teacherDir, noisyFile, '--out', 's', '--loss', 'l3'])).rejects.toThrow(/--loss/);
    await expect(runDistill([teacherDir, noisyFile, '--out', 's', '--channel', '1'])).rejects.toThrow(/--channel applies only to streamed/);
    await expect(runDistill([teacherDir, noisyFile, '--out', 's', '--no-such-option'])).rejects.toThrow(UsageError);
    // ... and the exit codes from the command itself.
    const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'distill', ...args], { cwd: tmp, encoding: 'utf8', timeout: 60_000 });
    const help = cli('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Examples:[\s\S]*blindspot distill models\//);
    const ok = cli(teacherDir, noisyFile, '--out', 'cli-student', '--steps', '2', '--batch-size', '2', '--patch', '32x32', '--depth', '1', '--filters', '8', '--backend', 'wasm', '--json');
    expect(ok.status, ok.stderr).toBe(0);
    const written = JSON.parse(readFileSync(path.join(tmp, 'cli-student', 'blindspot.json'), 'utf8')) as ModelManifest;
    expect(written.distillation?.teacher.path).toBe(path.resolve(teacherDir));
    expect(written.createdBy.command.slice(0, 3)).toEqual(['blindspot', 'distill', teacherDir]);
    expect(written.network).toMatchObject({ depth: 1, filters: 8 });
    const missing = cli(path.join(tmp, 'nope'), noisyFile, '--out', 's', '--backend', 'cpu');
    expect(missing.status).toBe(3);
    expect(missing.stderr).toMatch(/nope/);
  }, 60_000);
});
