/**
 * Copies a trained model folder from S3 (or another folder) to a local folder before a container
 * runs `blindspot`: the CLI reads models from local folders only, and the images fetch theirs at
 * start (infra/docker/entrypoint.sh) so one image serves every model.
 *
 *   node dist/infra/fetchModel.js <s3://bucket/models/name | folder> <local-folder> [--s3-endpoint URL] [--json]
 *
 * The copy lands in a temp folder beside the destination and is renamed into place once complete,
 * so a fetch killed half-way never leaves a folder that looks like a model. A destination that an
 * earlier fetch of the same source completed is kept as it is (a restarted container does not
 * download again); any other existing destination is refused. Exit codes follow the CLI's:
 * 0 ok, 1 unexpected failure, 2 usage, 3 bad input (no model there), 4 output refused,
 * 130 interrupted (nothing left behind; run again).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BlindspotError, ExitCode, exitWithOutcome, InputError, OutputError, UsageError } from '../core/errors.js';
import { MANIFEST_JSON, MODEL_JSON, WEIGHTS_BIN } from '../models/io.js';
import type { ByteStore } from '../storage/byteStore.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { isS3Url, S3Store, type S3Settings } from '../storage/s3.js';
import { createReporter } from '../cli/progress.js';

/** Written into the fetched folder; names the source so a rerun can tell its own finished copy. */
export const FETCH_RECORD = '.blindspot-fetch.json';

/** Files a model folder must hold for `blindspot denoise` (and its run fingerprint) to use it. */
export const REQUIRED_MODEL_FILES = [MODEL_JSON, WEIGHTS_BIN, MANIFEST_JSON] as const;

/** Left by an interrupted training run; a finished model does not need it. */
const SKIPPED_PREFIX = '/checkpoint/';

/** Files copied at once: model folders hold a few files, but S3 latency adds up per file. */
const CONCURRENT_COPIES = 4;

export interface FetchRecord {
  source: string;
  files: number;
  bytes: number;
  /** ISO 8601. */
  fetchedAt: string;
}

export interface FetchResult extends FetchRecord {
  destination: string;
  /** True when an earlier fetch of the same source was found complete and kept. */
  reused: boolean;
  seconds: number;
}

export interface FetchOptions {
  /** S3 settings for an s3:// source (endpoint, retries); credentials come from the SDK's chain. */
  s3?: S3Settings;
  signal?: AbortSignal;
}

function openSource(source: string, settings: S3Settings | undefined): ByteStore {
  return isS3Url(source) ? new S3Store(source, settings) : new FileSystemStore(source);
}

async function readRecord(folder: string): Promise<FetchRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(folder, FETCH_RECORD), 'utf8')) as FetchRecord;
  } catch {
    return undefined;
  }
}

/** Whether `folder` holds nothing (or does not exist). */
async function isEmptyOrMissing(folder: string): Promise<boolean> {
  try {
    return (await fs.readdir(folder)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw err;
  }
}

/**
 * Copies the model folder at `source` (s3://bucket/prefix or a local folder) to `destination`.
 * Throws InputError when the source holds no model, OutputError when the destination holds
 * something else, and the signal's reason (an AbortError) when aborted; nothing partial remains.
 */
export async function fetchModelFolder(source: string, destination: string, opts: FetchOptions = {}): Promise<FetchResult> {
  const started = performance.now();
  const target = path.resolve(destination);
  const existing = await readRecord(target);
  if (existing) {
    const complete = await Promise.all(REQUIRED_MODEL_FILES.map((name) => fs.stat(path.join(target, name)).then(() => true, () => false)));
    if (existing.source === source && complete.every(Boolean)) {
      return { ...existing, destination: target, reused: true, seconds: (performance.now() - started) / 1000 };
    }
  }
  if (!(await isEmptyOrMissing(target))) {
    const holds = !existing ? 'exists and is not empty' : existing.source === source ? `holds an incomplete copy of ${source}` : `holds a model fetched from ${existing.source}, not ${source}`;
    throw new OutputError(destination, `${holds}: remove it or choose another folder`);
  }

  const store = openSource(source, opts.s3);
  const staging = path.join(path.dirname(target), `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const keys: string[] = [];
    for await (const key of store.list('/')) {
      if (!key.startsWith(SKIPPED_PREFIX)) keys.push(key);
      opts.signal?.throwIfAborted();
    }
    const names = new Set(keys.map((k) => k.replace(/^\/+/, '')));
    const missing = REQUIRED_MODEL_FILES.filter((name) => !names.has(name));
    if (keys.length === 0) throw new InputError(source, 'holds no files: no model folder there (train one with blindspot train, then copy the folder there)');
    if (missing.length > 0) throw new InputError(source, `is not a blindspot model folder: ${missing.join(', ')} missing`);

    const out = new FileSystemStore(staging);
    let bytes = 0;
    let next = 0;
    const copyWorker = async (): Promise<void> => {
      while (next < keys.length) {
        const key = keys[next++];
        opts.signal?.throwIfAborted();
        const value = await store.get(key);
        // Listed a moment ago: gone now means someone is replacing the model under us.
        if (value === undefined) throw new InputError(source, `${key.slice(1)} vanished while the folder was being copied; is the model being rewritten?`);
        await out.set(key, value);
        bytes += value.length;
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENT_COPIES, keys.length) }, copyWorker));
    opts.signal?.throwIfAborted();

    const record: FetchRecord = { source, files: keys.length, bytes, fetchedAt: new Date().toISOString() };
    await fs.writeFile(path.join(staging, FETCH_RECORD), JSON.stringify(record, null, 2) + '\n');
    await fs.mkdir(path.dirname(target), { recursive: true });
    // rename(2) replaces an empty folder in one step; a mount point cannot be replaced (EBUSY),
    // which is why the manifests mount the scratch volume above the model folder.
    try {
      await fs.rename(staging, target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EBUSY' || code === 'EXDEV') throw new OutputError(destination, `cannot be replaced (${code}): point the model folder at a path inside the mounted volume, not at the mount itself`, { cause: err });
      throw err;
    }
    return { ...record, destination: target, reused: false, seconds: (performance.now() - started) / 1000 };
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
    await store.close?.();
  }
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, strict: true, options: { 's3-endpoint': { type: 'string' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } } });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write('Usage: node dist/infra/fetchModel.js <s3://bucket/prefix | folder> <local-folder> [--s3-endpoint URL] [--json]\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 2) throw new UsageError('fetchModel needs <source> and <local-folder>');
  const [source, destination] = positionals;
  const reporter = createReporter({ json: values.json === true || !process.stderr.isTTY });
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    reporter.log(`${sig}: stopping the model fetch`);
    controller.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const result = await fetchModelFolder(source, destination, { s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined, signal: controller.signal });
    reporter.event('model-fetched', { ...result });
    if (!reporter.json) {
      reporter.log(result.reused ? `model from ${source} already in ${result.destination}` : `model ${source} -> ${result.destination}: ${result.files} file(s), ${result.bytes} bytes in ${result.seconds.toFixed(1)} s`);
    }
    return ExitCode.ok;
  } catch (err) {
    if (controller.signal.aborted) {
      reporter.log('model fetch interrupted; nothing was left behind, run again');
      return ExitCode.interrupted;
    }
    throw err;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  exitWithOutcome(main(process.argv.slice(2)), 'fetchModel');
}
