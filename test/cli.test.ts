import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Rng } from '../core/rng.js';
import { syntheticCells, addGaussianNoise } from '../core/synthetic.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { writeImage, readImage } from '../storage/index.js';

// The CLI runs from dist/, which `npm test` builds first (pretest) and `npm ci` builds on install.
const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
let tmp: string;

function blindspot(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: tmp, encoding: 'utf8', timeout: 180_000, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function listFiles(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir, { recursive: true })).map(String).sort();
  } catch {
    return [];
  }
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-cli-'));
  await fs.mkdir(path.join(tmp, 'noisy'));
  await fs.mkdir(path.join(tmp, 'clean'));
  const rng = new Rng(11);
  for (const name of ['a', 'b']) {
    const cells = syntheticCells([1, 64, 64], rng, { blobs: 60, filaments: 4 });
    const clean = cells.data.map((v) => Math.round(v * 200));
    const noisy = addGaussianNoise(clean, 20, rng);
    await writeImage(path.join(tmp, 'clean', `${name}.png`), { data: clean, shape: [64, 64], sampleType: 'uint8' });
    await writeImage(path.join(tmp, 'noisy', `${name}.png`), { data: noisy, shape: [64, 64], sampleType: 'uint8' });
  }
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('blindspot CLI end to end', () => {
  it('trains, denoises and evaluates tiny images', async () => {
    const train = blindspot('train', 'noisy', '--out', 'model', '--steps', '6', '--batch-size', '4', '--patch', '32x32', '--filters', '8', '--validate-every', '3', '--backend', 'wasm', '--json');
    expect(train.stderr + train.stdout).not.toMatch(/unexpected error/);
    expect(train.code).toBe(0);
    const events = train.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; step?: number });
    expect(events.some((e) => e.type === 'backend')).toBe(true);
    expect(events.filter((e) => e.type === 'step').map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(await listFiles(path.join(tmp, 'model'))).toEqual(['blindspot.json', 'model.json', 'model.onnx', 'weights.bin']);

    const denoise = blindspot('denoise', 'model', 'noisy', '--out', 'denoised', '--dtype', 'input', '--json', '--backend', 'wasm');
    expect(denoise.code).toBe(0);
    // Each output has its input's noise fit beside it.
    expect(await listFiles(path.join(tmp, 'denoised'))).toEqual(['a.png', 'a.png.noise.json', 'b.png', 'b.png.noise.json']);
    const sidecar = JSON.parse(await fs.readFile(path.join(tmp, 'denoised', 'a.png.noise.json'), 'utf8')) as { output: string; sigma: number };
    expect(sidecar.output).toBe('a.png');
    expect(sidecar.sigma).toBeGreaterThan(0);
    const out = await readImage(path.join(tmp, 'denoised', 'a.png'));
    expect(out.shape).toEqual([64, 64]);
    expect(out.sampleType).toBe('uint8');

    const floatOut = blindspot('denoise', 'model', 'noisy/a.png', '--out', 'denoised-float', '--tile', '32x32', '--backend', 'wasm');
    expect(floatOut.code).toBe(0);
    expect((await readImage(path.join(tmp, 'denoised-float', 'a.tif'))).sampleType).toBe('float32');

    const evaluation = blindspot('eval', '--clean', 'clean', '--denoised', 'denoised', '--json');
    expect(evaluation.code).toBe(0);
    const report = JSON.parse(evaluation.stdout) as { count: number; mean: { psnr: number; ssim: number } };
    expect(report.count).toBe(2);
    expect(report.mean.psnr).toBeGreaterThan(10);
    expect(report.mean.ssim).toBeGreaterThan(0);
    expect(blindspot('eval', '--clean', 'clean', '--denoised', 'denoised').stdout).toMatch(/mean\s+\d+\.\d\d/);
  });

  it('prints help with examples for every command', () => {
    for (const cmd of ['train', 'denoise', 'eval', 'demo']) {
      const r = blindspot(cmd, '--help');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: blindspot/);
    }
    expect(blindspot('train', '--help').stdout).toMatch(/Examples:/);
    const unknown = blindspot('frobnicate');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command 'frobnicate'/);
  });

  it('gives a clear error, a non-zero exit and no complete-looking output for bad input', async () => {
    await fs.writeFile(path.join(tmp, 'corrupt.png'), 'this is not a PNG');
    const corrupt = blindspot('train', 'corrupt.png', '--out', 'm-corrupt', '--backend', 'wasm');
    expect(corrupt.code).toBe(3);
    expect(corrupt.stderr).toMatch(/corrupt\.png/);
    expect(await listFiles(path.join(tmp, 'm-corrupt'))).toEqual([]);

    const missing = blindspot('train', 'nope.png', '--out', 'm-missing', '--backend', 'wasm');
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/nope\.png/);

    await writeImage(path.join(tmp, 'small.png'), { data: new Float32Array(20 * 20).fill(9), shape: [20, 20], sampleType: 'uint8' });
    const small = blindspot('train', 'small.png', '--out', 'm-small', '--backend', 'wasm');
    expect(small.code).toBe(3);
    expect(small.stderr).toMatch(/small\.png.*smaller than the training patch/);
    expect(await listFiles(path.join(tmp, 'm-small'))).toEqual([]);

    const nan = new Float32Array(64 * 64).fill(3);
    nan[100] = NaN;
    await writeImage(path.join(tmp, 'nan.npy'), { data: nan, shape: [64, 64], sampleType: 'float32' });
    const withNan = blindspot('train', 'nan.npy', '--out', 'm-nan', '--backend', 'wasm');
    expect(withNan.code).toBe(3);
    expect(withNan.stderr).toMatch(/nan\.npy.*NaN/);

    await writeImage(path.join(tmp, 'stack.npy'), { data: new Float32Array(4 * 64 * 64), shape: [4, 64, 64], sampleType: 'float32' });
    const wrongDims = blindspot('denoise', 'model', 'stack.npy', '--out', 'd-wrong', '--backend', 'wasm');
    expect(wrongDims.code).toBe(3);
    expect(wrongDims.stderr).toMatch(/stack\.npy.*3D.*2D/);
    expect(await listFiles(path.join(tmp, 'd-wrong'))).toEqual([]);

    const before = await fs.readFile(path.join(tmp, 'noisy', 'a.png'));
    const sameDir = blindspot('denoise', 'model', 'noisy/a.png', '--out', 'noisy', '--dtype', 'input', '--backend', 'wasm');
    expect(sameDir.code).toBe(4);
    expect(sameDir.stderr).toMatch(/overwrite the input/);
    expect(await fs.readFile(path.join(tmp, 'noisy', 'a.png'))).toEqual(before);

    const notModel = blindspot('denoise', 'noisy', 'noisy/a.png', '--out', 'd-x', '--backend', 'wasm');
    expect(notModel.code).toBe(3);
    expect(notModel.stderr).toMatch(/not a blindspot model folder/);

    const badOption = blindspot('train', 'noisy', '--out', 'm', '--steps', 'many');
    expect(badOption.code).toBe(2);
    expect(badOption.stderr).toMatch(/--steps/);
  });

  it('stops on SIGINT with a checkpoint and exit code 130, then --resume finishes the run', async () => {
    const args = ['train', 'noisy', '--out', 'model-int', '--steps', '40', '--batch-size', '2', '--patch', '32x32', '--filters', '4', '--validate-every', '20', '--backend', 'wasm', '--json'];
    const child = spawn(process.execPath, [CLI, ...args], { cwd: tmp, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let signalled = false;
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (!signalled && /"type":"step","step":3,/.test(stdout)) {
        signalled = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(signalled).toBe(true);
    expect(code).toBe(130);
    expect(stdout).toMatch(/"type":"interrupted"/);
    expect(await listFiles(path.join(tmp, 'model-int', 'checkpoint'))).toContain('state.json');

    const again = blindspot(...args);
    expect(again.code).toBe(4);
    expect(again.stderr).toMatch(/--resume/);

    const resumed = blindspot(...args, '--resume');
    expect(resumed.code).toBe(0);
    const steps = resumed.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; step?: number }).filter((e) => e.type === 'step');
    expect(steps[0].step).toBeGreaterThan(3);
    expect(steps[steps.length - 1].step).toBe(40);
    expect(await listFiles(path.join(tmp, 'model-int'))).toEqual(['blindspot.json', 'model.json', 'model.onnx', 'weights.bin']);
  });
});
