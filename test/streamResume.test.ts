/**
 * A streaming denoise killed with SIGKILL at several points, then resumed, leaves output files
 * byte-identical to an uninterrupted run and no temp files. The runs are child processes running
 * test/fixtures/stream-child.ts (compiled into a private folder).
 */
import { spawn } from 'node:child_process';
import { promises as fs, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ChildArgs } from './fixtures/stream-child.js';
import { prepareStreamChild } from './fixtures/compileFixture.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let script = '';
let tmp = '';
let cleanUp = (): void => undefined;

beforeAll(() => {
  ({ script, tmp, cleanUp } = prepareStreamChild(repoRoot, 'resume'));
});
afterAll(() => cleanUp());

const base: Omit<ChildArgs, 'out'> = {
  shape: [6, 70, 90],
  inputChunks: [4, 32, 32],
  outputChunks: [2, 16, 16],
  network: { dims: 3, depth: 1, filters: 2, kernelSize: 3, batchNorm: true, variant: 'n2v' },
  seed: 5,
  maxMemory: 1024 * 2 ** 20,
  backend: 'wasm',
};

/** Whether a journal segment of the run in `out` is stored (temp files of a write in progress are hidden). */
function journalStored(out: string): boolean {
  try {
    return readdirSync(path.join(out, '.blindspot-denoise', 'journal')).some((f) => !f.startsWith('.'));
  } catch {
    return false;
  }
}

/**
 * Runs the child; with `killAfterChunks`, sends SIGKILL as soon as that many chunk lines were printed
 * (and, with `afterJournal`, a journal segment is stored: the journal is flushed every 32 chunks or
 * second, asynchronously, so on a fast machine a kill can otherwise beat every flush).
 */
function runChild(
  args: ChildArgs,
  killAfterChunks?: number,
  afterJournal = false,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; chunks: number; lines: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, JSON.stringify(args)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let chunks = 0;
    let buffered = '';
    let stderr = '';
    const lines: string[] = [];
    child.stdout.on('data', (data: Buffer) => {
      buffered += data.toString();
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        lines.push(line);
        if (line.includes('"type":"chunk"') && ++chunks === killAfterChunks) {
          if (!afterJournal) child.kill('SIGKILL');
          else {
            const poll = setInterval(() => {
              if (!journalStored(args.out) && child.exitCode === null) return;
              clearInterval(poll);
              child.kill('SIGKILL');
            }, 5);
          }
        }
      }
    });
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0 && signal === null) reject(new Error(`child failed (${code}): ${stderr}`));
      else resolve({ code, signal, chunks, lines });
    });
  });
}

async function listFiles(dir: string): Promise<string[]> {
  return (await fs.readdir(dir, { recursive: true })).map(String).sort();
}

async function expectSameFiles(a: string, b: string): Promise<void> {
  const files = await listFiles(a);
  expect(await listFiles(b)).toEqual(files);
  for (const f of files) {
    const fa = path.join(a, f);
    if (!(await fs.stat(fa)).isFile()) continue;
    expect(Buffer.compare(await fs.readFile(fa), await fs.readFile(path.join(b, f))), f).toBe(0);
  }
}

test('SIGKILL at several points, then resume: byte-identical output, no temp files', async () => {
  const whole = path.join(tmp, 'whole');
  const full = await runChild({ ...base, out: whole });
  expect(full.code).toBe(0);
  const total = JSON.parse(full.lines.at(-1)!).chunksTotal as number;
  expect(total).toBe(3 * 5 * 6);
  const wholeFiles = await listFiles(whole);
  expect(wholeFiles.some((f) => f.includes('.tmp-'))).toBe(false);

  for (const [i, killAfter] of [1, Math.floor(total / 3), total - 2].entries()) {
    const out = path.join(tmp, `killed-${i}`);
    const killed = await runChild({ ...base, out }, killAfter);
    expect(killed.signal).toBe('SIGKILL');
    // Kill the resumed run too once, mid-way, before letting it finish.
    const second = await runChild({ ...base, out, resume: true }, Math.max(1, Math.floor((total - killAfter) / 2)), true);
    const finished = await runChild({ ...base, out, resume: true });
    expect(finished.code).toBe(0);
    const result = JSON.parse(finished.lines.at(-1)!) as { chunksSkipped: number; chunksWritten: number };
    // Work was really skipped (at least what the runs journaled before they died is kept, minus the unflushed tail).
    expect(result.chunksSkipped).toBeGreaterThan(0);
    expect(result.chunksSkipped + result.chunksWritten).toBe(total);
    console.log(`killed after ${killAfter} and ${second.chunks} chunks: resumed run skipped ${result.chunksSkipped}, wrote ${result.chunksWritten}`);
    await expectSameFiles(whole, out);
  }
}, 120_000);
