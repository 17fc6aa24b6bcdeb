/**
 * `blindspot report` as a library: gather a run's records (report/gather.ts), render one
 * self-contained HTML page (report/html.ts) and write it. Used by cli/report.ts and by the
 * `--report` option of train, denoise and demo.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { OutputError, UsageError } from '../core/errors.js';
import { writeFileAtomic } from '../storage/common.js';
import { gatherReport, type GatherOptions } from './gather.js';
import { renderReportHtml, REPORT_GENERATOR } from './html.js';
import type { ReportData } from './types.js';

export type { ReportData } from './types.js';
export { gatherFileOutputs, gatherInMemory, gatherModel, gatherReport, gatherStreamOutput, qualityRow, type GatherOptions } from './gather.js';
export { renderTiles, volumeRegions, chunkedRegions } from './tiles.js';
export { provenanceOf, trainingNoise, trainingSection } from './records.js';

/**
 * Writes the page to `out` (an .html file). An existing file is replaced only when it is itself a
 * blindspot report; anything else there is refused, never overwritten.
 */
export async function writeReportHtml(data: ReportData, out: string): Promise<{ file: string; bytes: number }> {
  await assertReportWritable(out);
  await fs.mkdir(path.dirname(path.resolve(out)), { recursive: true });
  const html = Buffer.from(renderReportHtml(data), 'utf8');
  await writeFileAtomic(out, html, true);
  return { file: path.resolve(out), bytes: html.length };
}

/** Refuses a report path that is not .html or holds something other than a blindspot report (checked before a run starts, too). */
export async function assertReportWritable(out: string): Promise<void> {
  if (!/\.html?$/i.test(out)) throw new UsageError(`the report is an HTML file: its path must end in .html, got '${out}'`);
  const existing = await fs.readFile(out, 'utf8').catch(() => null);
  if (existing !== null && !existing.slice(0, 2000).includes(`content="${REPORT_GENERATOR}"`)) {
    throw new OutputError(out, 'exists and is not a blindspot report; refusing to overwrite it');
  }
}

/** Gathers the report of `target` (model folder, denoised folder, .zarr or s3:// output) and writes it. */
export async function writeReport(target: string, out: string, opts: GatherOptions = {}): Promise<{ file: string; bytes: number; data: ReportData }> {
  const data = await gatherReport(target, opts);
  return { ...(await writeReportHtml(data, out)), data };
}
