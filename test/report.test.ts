/**
 * The HTML run report: built from a tiny real train + denoise (in memory and streamed in two shards),
 * then opened in headless Chromium (Debian's `chromium`, driven by puppeteer-core; skipped with a
 * message where it is not installed). Numbers in the page are checked against the JSON records.
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { readManifest, type ModelManifest } from '../models/io.js';
import { denoiseFiles } from '../pipeline/denoise.js';
import { evaluateFolders } from '../pipeline/evaluate.js';
import { historyKey, type RunHistory } from '../pipeline/runHistory.js';
import { denoiseUrl, modelFolderHash, parseByteSize } from '../pipeline/streamDenoise.js';
import { trainModel } from '../pipeline/train.js';
import { gatherInMemory, gatherReport, trainingSection, writeReport, writeReportHtml, type ReportData } from '../report/index.js';
import { renderReportHtml } from '../report/html.js';
import { chooseTiles, volumeRegions } from '../report/tiles.js';
import { writeImage } from '../storage/index.js';
import { createOmeZarr } from '../storage/ome.js';

const CHROMIUM = process.env.BLINDSPOT_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`report browser tests skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set BLINDSPOT_CHROMIUM)`);

const SIZE = 64;
let tmp: string;
let modelDir: string;
let manifest: ModelManifest;
let fileReport: { file: string; data: ReportData };
let streamReport: { file: string; data: ReportData };
let histories: RunHistory[];

function image(seed: number): { clean: Float32Array; noisy: Float32Array } {
  const rng = new Rng(seed);
  const clean = syntheticCells([1, SIZE, SIZE], rng, { blobs: 60, filaments: 4 }).data.map((v) => v * 100);
  return { clean, noisy: addGaussianNoise(clean, 15, rng) };
}

const plane = (data: Float32Array): Volume => ({ data, shape: [SIZE, SIZE], sampleType: 'float32' });

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-report-'));
  const { clean, noisy } = image(5);
  for (const dir of ['noisy', 'clean']) await fs.mkdir(path.join(tmp, dir));
  await writeImage(path.join(tmp, 'noisy', 'cells.tif'), plane(noisy), { sampleType: 'float32' });
  await writeImage(path.join(tmp, 'clean', 'cells.tif'), plane(clean), { sampleType: 'float32' });
  modelDir = path.join(tmp, 'model');
  manifest = await trainModel({
    inputs: [path.join(tmp, 'noisy', 'cells.tif')],
    out: modelDir,
    steps: 12,
    batchSize: 4,
    patchShape: [32, 32],
    network: { depth: 2, filters: 4, kernelSize: 3, batchNorm: false },
    learningRate: 2e-3,
    validateEvery: 4,
    seed: 3,
  });
  await denoiseFiles({ modelDir, inputs: [path.join(tmp, 'noisy', 'cells.tif')], outDir: path.join(tmp, 'denoised') });
  fileReport = await writeReport(path.join(tmp, 'denoised'), path.join(tmp, 'files.html'), { modelDir, reference: [path.join(tmp, 'clean')] });

  // Streamed, in two shards, then reported from the output alone.
  const input = path.join(tmp, 'in.zarr');
  const writer = await createOmeZarr(input, {
    shape: [SIZE, SIZE],
    chunks: [32, 32],
    dtype: 'float32',
    axes: [{ name: 'y', type: 'space', unit: 'micrometer' }, { name: 'x', type: 'space', unit: 'micrometer' }],
    placement: { scale: [1, 1], translation: [0, 0] },
  });
  for (let y = 0; y < 2; y++) {
    for (let x = 0; x < 2; x++) {
      const chunk = new Float32Array(32 * 32);
      for (let r = 0; r < 32; r++) chunk.set(noisy.subarray((y * 32 + r) * SIZE + x * 32, (y * 32 + r) * SIZE + x * 32 + 32), r * 32);
      await writer.writeChunk([y, x], chunk);
    }
  }
  const out = path.join(tmp, 'out.zarr');
  for (const index of [0, 1]) {
    await denoiseUrl({ input, out, modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16], shard: { index, count: 2 }, history: { backend: 'wasm' }, command: ['blindspot', 'denoise'] });
  }
  histories = await Promise.all([0, 1].map(async (index) => JSON.parse(await fs.readFile(path.join(out, historyKey({ index, count: 2 })), 'utf8')) as RunHistory));
  streamReport = await writeReport(out, path.join(tmp, 'stream.html'));
}, 120_000);

afterAll(async () => {
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

describe('report data', () => {
  it('copies the records: history, noise fits, PSNR as blindspot eval computes it, the model hash', async () => {
    const { data } = fileReport;
    expect(data.training?.history).toEqual(manifest.history);
    expect(data.provenance.model?.sha256).toBe(await modelFolderHash(modelDir));
    const sidecar = JSON.parse(await fs.readFile(path.join(tmp, 'denoised', 'cells.tif.noise.json'), 'utf8')) as { a: number; b: number; nlf: { bins: unknown[] } };
    const input = data.noise.find((n) => n.source === 'input')!;
    expect([input.a, input.b]).toEqual([sidecar.a, sidecar.b]);
    expect(input.bins).toEqual(sidecar.nlf.bins);
    const evaluated = await evaluateFolders({ clean: [path.join(tmp, 'clean')], denoised: [path.join(tmp, 'denoised')] });
    expect(data.quality[0].psnrDenoised).toBe(evaluated.images[0].psnr);
    expect(data.quality[0].ssimDenoised).toBe(evaluated.images[0].ssim);
    // Three distinct tiles, each a full-resolution crop (PNG side = tile side).
    const tiles = data.tiles[0].tiles;
    expect(tiles.map((t) => t.label)).toEqual(['brightest', 'most textured', 'background']);
    const meta = await sharp(Buffer.from(tiles[0].denoised[0].split(',')[1], 'base64')).metadata();
    expect([meta.height, meta.width]).toEqual(tiles[0].shape);
    const stat = await fs.stat(fileReport.file);
    expect(stat.size).toBeLessThan(3 * 2 ** 20);
  });

  it('a sharded streamed run: every shard recorded its chunks, and the report holds exactly those records', () => {
    // 64x64 in 16x16 chunks: 16 blocks, 8 per shard.
    expect(histories.map((h) => h.segments[0].chunks.length)).toEqual([8, 8]);
    expect(histories.every((h) => h.segments[0].peakRssBytes > 0 && h.segments[0].chunks.every((c) => c.fetches !== null && c.fetches >= 0))).toBe(true);
    expect(streamReport.data.stream?.histories).toEqual(histories);
    expect(streamReport.data.stream?.shardCount).toBe(2);
    expect(streamReport.data.training?.stepsDone).toBe(manifest.training.stepsDone);
    expect(streamReport.data.tiles[0].tiles[0].noisy.length).toBe(1);
  });

  it('marks learning-rate changes; picks tiles by a seed; refuses a non-report file and a non-html path', async () => {
    const history = [0.1, 0.1, 0.05, 0.05, 0.025].map((learningRate, i) => ({ step: i + 1, loss: 1, learningRate, seconds: i }));
    const section = trainingSection({ ...manifest, history });
    expect(section.learningRateChanges).toEqual([
      { step: 3, seconds: 2, from: 0.1, to: 0.05 },
      { step: 5, seconds: 4, from: 0.05, to: 0.025 },
    ]);
    // A cosine run changes the rate every step: one annealing, no markers.
    const annealing = [1e-3, 9e-4, 5e-4, 1e-4, 1e-5].map((learningRate, i) => ({ step: i + 1, loss: 1, learningRate, seconds: i }));
    const cosine = trainingSection({ ...manifest, history: annealing, training: { ...manifest.training, learningRateSchedule: 'cosine' } });
    expect(cosine.learningRateChanges).toEqual([]);
    expect(cosine.annealed).toEqual({ from: 1e-3, to: 1e-5 });
    // A method's own validation loss is named next to the best validation.
    expect(section.validationLoss).toBeUndefined();
    const jInvariant = trainingSection({ ...manifest, history, training: { ...manifest.training, validationLoss: 'j-invariant' } });
    expect(jInvariant.validationLoss).toBe('j-invariant');
    expect(renderReportHtml({ ...fileReport.data, training: jInvariant })).toContain('best validation loss (j-invariant)');
    expect(renderReportHtml(fileReport.data)).toContain('best validation loss</th>');
    const volume = plane(image(9).clean);
    const a = await chooseTiles(volumeRegions(volume), 4);
    expect(await chooseTiles(volumeRegions(volume), 4)).toEqual(a);
    // The brightest tile's mean is at least the background tile's.
    const mean = async (origin: number[]): Promise<number> => {
      const v = await volumeRegions(volume).read(origin, [32, 32]);
      return v.reduce((s, x) => s + x, 0) / v.length;
    };
    expect(await mean(a[0].origin)).toBeGreaterThan(await mean(a[2].origin));
    const precious = path.join(tmp, 'notes.html');
    await fs.writeFile(precious, '<html>my notes</html>');
    await expect(writeReportHtml(fileReport.data, precious)).rejects.toThrow(OutputError);
    expect(await fs.readFile(precious, 'utf8')).toBe('<html>my notes</html>');
    await expect(writeReportHtml(fileReport.data, path.join(tmp, 'r.pdf'))).rejects.toThrow(UsageError);
    // A report replaces a report.
    await writeReportHtml(fileReport.data, fileReport.file);
    await expect(gatherReport(path.join(tmp, 'nothing'))).rejects.toThrow(/does not exist/);
  });
});

describe.skipIf(!haveChromium)('report in headless Chromium', () => {
  type Browser = import('puppeteer-core').Browser;
  type Page = import('puppeteer-core').Page;
  let browser: Browser;

  beforeAll(async () => {
    const puppeteer = (await import('puppeteer-core')).default;
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
  });

  /** Opens a report; returns the page with the console errors and the requests other than the file itself. */
  async function open(file: string): Promise<{ page: Page; errors: string[]; requests: string[] }> {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const errors: string[] = [];
    const requests: string[] = [];
    const url = pathToFileURL(file).href;
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warn') errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('request', (r) => {
      if (r.url() !== url && !r.url().startsWith('data:')) requests.push(r.url());
    });
    await page.goto(url, { waitUntil: 'load' });
    return { page, errors, requests };
  }

  it('train + denoise report: no console error, no request, every section, slider works, first screen not blank, one loss point per step', async () => {
    const { page, errors, requests } = await open(fileReport.file);
    expect(errors).toEqual([]);
    expect(requests).toEqual([]);
    for (const id of ['tiles', 'quality', 'training', 'noise', 'stream', 'provenance']) {
      expect(await page.$eval(`section#${id}`, (s) => s.textContent?.length ?? 0), id).toBeGreaterThan(20);
    }
    // Plots drawn by uPlot from the embedded records: one point per logged step.
    const loss = (await page.evaluate(`(() => {
      const plot = window.blindspotReport.plots['plot-loss-step'];
      return { steps: plot.data[0], loss: plot.data[1], canvases: document.querySelectorAll('#plot-loss-step canvas').length };
    })()`)) as { steps: number[]; loss: number[]; canvases: number };
    expect(loss.steps.length).toBe(manifest.history.length);
    expect(loss.steps).toEqual(manifest.history.map((h) => h.step));
    expect(loss.loss).toEqual(manifest.history.map((h) => h.loss));
    expect(loss.canvases).toBe(1);
    expect(await page.$$eval('#plot-noise canvas', (c) => c.length)).toBe(1);
    // The numbers shown carry the recorded values.
    expect(Number(await page.$eval('#best-val .num', (e) => e.getAttribute('data-value')))).toBe(manifest.training.bestValLoss);
    expect(await page.$eval('#model-sha', (e) => e.textContent)).toBe(await modelFolderHash(modelDir));
    const psnrShown = await page.$$eval('#quality .num', (es) => es.map((e) => Number(e.getAttribute('data-value'))));
    expect(psnrShown).toContain(fileReport.data.quality[0].psnrDenoised);

    // The split slider changes the shown image.
    const compare = (await page.$('.tile .compare'))!;
    const setSplit = (v: number): Promise<unknown> =>
      page.evaluate(`(() => { const el = document.querySelector('.tile input.split'); el.value = '${v}'; el.dispatchEvent(new Event('input')); })()`);
    await setSplit(0);
    const allDenoised = Buffer.from(await compare.screenshot());
    await setSplit(100);
    const allNoisy = Buffer.from(await compare.screenshot());
    expect(Buffer.compare(allDenoised, allNoisy)).not.toBe(0);
    const [d, n] = await Promise.all([allDenoised, allNoisy].map((b) => sharp(b).stats()));
    // Denoising lowers the local variation: the noisy view's channel stdev is not the denoised one's.
    expect(d.channels[0].stdev).not.toBeCloseTo(n.channels[0].stdev, 1);

    // The first screen is not blank.
    const screen = await sharp(Buffer.from(await page.screenshot())).greyscale().raw().toBuffer({ resolveWithObject: true });
    const stats = await sharp(screen.data, { raw: { width: screen.info.width, height: screen.info.height, channels: 1 } }).stats();
    expect(stats.channels[0].stdev).toBeGreaterThan(20);
    const dark = screen.data.filter((v) => v < 128).length / screen.data.length;
    expect(dark).toBeGreaterThan(0.05);
    expect(dark).toBeLessThan(0.95);
    await page.close();
  }, 60_000);

  it('streamed sharded report: shard progress and per-chunk plots from the output alone', async () => {
    const { page, errors, requests } = await open(streamReport.file);
    expect(errors).toEqual([]);
    expect(requests).toEqual([]);
    const rows = (await page.evaluate(
      `Array.from(document.querySelectorAll('#stream-shards tr')).slice(1).map((tr) => Array.from(tr.querySelectorAll('.num')).map((e) => Number(e.getAttribute('data-value'))))`,
    )) as number[][];
    expect(rows.length).toBe(2);
    for (const [i, h] of histories.entries()) {
      const seg = h.segments[0];
      expect(rows[i].slice(0, 4)).toEqual([seg.chunksSkipped + seg.chunksWritten, h.chunksTotal, seg.seconds, seg.fetchesPerChunk]);
    }
    const plotted = (await page.evaluate(`(() => {
      const plots = window.blindspotReport.plots;
      return { throughput: plots['plot-throughput'].data, fetches: plots['plot-fetches'].data };
    })()`)) as { throughput: Array<Array<number | null>>; fetches: Array<Array<number | null>> };
    // Joined on the shards' x values: every recorded chunk is a point of its shard's series.
    for (const [i, h] of histories.entries()) {
      expect(plotted.throughput[i + 1].filter((v) => v !== null)).toEqual(h.segments[0].chunks.map((c) => c.megavoxelsPerSecond));
    }
    await page.close();
  }, 60_000);

  it('3D: the z slider changes the shown slice (and the uncertainty map with it)', async () => {
    const rng = new Rng(2);
    const shape = [6, 40, 40] as const;
    const clean = syntheticCells(shape, rng, { blobs: 30, filaments: 3 }).data.map((v) => v * 100);
    const volume = (data: Float32Array): Volume => ({ data, shape, sampleType: 'float32' });
    const data = await gatherInMemory({ kind: 'demo', title: '3D', modelDir, images: [{ name: 'cells 3D', noisy: volume(addGaussianNoise(clean, 15, rng)), denoised: volume(clean), clean: volume(clean), uncertainty: volume(clean.map((v) => Math.sqrt(v + 1))) }] });
    const file = path.join(tmp, '3d.html');
    await writeReportHtml(data, file);
    const { page, errors } = await open(file);
    expect(errors).toEqual([]);
    const src = (): Promise<string | null> => page.$eval('.tile img.after', (img) => img.getAttribute('src'));
    const std = (): Promise<string | null> => page.$eval('.tile img.uncertainty', (img) => img.getAttribute('src'));
    const before = await src();
    expect(await std()).toBe(data.tiles[0].tiles[0].uncertainty![Math.floor(data.tiles[0].tiles[0].z.length / 2)]);
    await page.evaluate(`(() => { const el = document.querySelector('.tile input.z'); el.value = '0'; el.dispatchEvent(new Event('input')); })()`);
    expect(await src()).not.toBe(before);
    expect(await src()).toBe(data.tiles[0].tiles[0].denoised[0]);
    expect(await std()).toBe(data.tiles[0].tiles[0].uncertainty![0]);
    await page.close();
  }, 60_000);
});
