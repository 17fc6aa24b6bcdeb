/** `blindspot watch`: denoise each new acquisition in a folder or under an S3 prefix as it lands (pipeline/watch.ts). */
import { ExitCode, UsageError } from '../core/errors.js';
import type { OutputType } from '../pipeline/denoise.js';
import { assertOutputIsNotInput, parseByteSize } from '../pipeline/streamDenoise.js';
import { startWatch, type WatchEvent } from '../pipeline/watch.js';
import { formatSeconds, createReporter, type Reporter } from './progress.js';
import { DEFAULT_GRACE_SECONDS, ENGINE_HELP, choice, commonOptions, engineOptions, engineRequest, intOption, numberOption, parse, setUp, shapeOption } from './options.js';

export const WATCH_HELP = `Usage: blindspot watch <folder | s3://bucket/prefix> --model <model-dir> --out <folder | s3://bucket/prefix> [options]

Denoises each new acquisition as it lands, once:
  image files (PNG, TIFF, FITS, .npy) anywhere below the watched root -> same relative path under --out
    (float32 output of a PNG goes to .tif, as in 'blindspot denoise');
  <name>.zarr arrays -> <out>/<name>.zarr (streamed, bounded memory, resumable);
  time points of a growing OME-Zarr with a t axis -> <out>/<name>.t<t>.zarr.
Names starting with '.' are ignored (writers' temp files).

An item is taken when complete: unchanged (size and mtime; S3 ETag; a Zarr: its files) for --settle-ms,
or, with --marker SUFFIX, once <item>SUFFIX exists (a.tif.done, run.zarr.done; for a time-lapse
<name>.zarr.t<t>SUFFIX completes time point t, <name>.zarr SUFFIX all). Without a marker, time point t
is complete once the t extent is past t (the writer started t+1), the last one once the Zarr has settled;
writers that preallocate the t axis must write markers. S3 objects are whole when listed.
A file that does not decode is tried again after another settle period; still undecodable and
unchanged, it is recorded as failed (the error names it) and watching goes on.

Finished items are recorded in <out>/.blindspot-watch/ (state.json, written atomically, plus a journal of
the changes since, folded in regularly); a restart skips them, adopts an output stored just before a
kill, resumes a half-written Zarr, and does the rest. Outputs that exist but were not written by this
watch are refused.
Outputs are written under a temp name and renamed (one PUT on S3): a killed watcher leaves no torn file.
One watcher per --out.

Options:
  --model <dir>             trained model folder (required; loaded once)
  --out <dest>              output folder or s3:// prefix (required; not the input nor inside it)
  --settle-ms N             unchanged this long = complete (default 2000)
  --marker SUFFIX           completeness marker suffix, e.g. .done (default: settle time decides)
  --poll-ms N               between listings (default 500)
  --max-queue N             items taken and not yet finished, at most (default 16); more ready items wait
                            in place (found again on the next poll) and a queue-warning is logged once
                            per episode when arrivals outpace the model
  --once                    process what is there (waiting for it to settle), then exit (cron, tests)
  --dry-run                 list each item and whether it would be processed now; write nothing
  --grace-seconds S         after SIGTERM/SIGINT the item in flight may finish for S-1.5 s, then it is
                            abandoned (left for the next run); the process exits within S s with code
                            130 and the state stored (default ${DEFAULT_GRACE_SECONDS}; Kubernetes waits 30 by default).
                            A Zarr item stops after the chunk under way; one image's forward pass cannot
                            be cut short (TensorFlow.js does not yield inside it), so with images that
                            take longer than S each, the bound is that time: keep S above it
  --overwrite               replace outputs this watch did not write (default: such an item fails)
  --dtype float32|input     output sample type (default float32)
  --tta --tile YxX|ZxYxX    as for denoise
  --max-memory SIZE         memory bound of Zarr items (default 2GiB)
  --channel N               channel of multi-channel OME-Zarr items
  --s3-endpoint URL         S3-compatible endpoint (else BLINDSPOT_S3_ENDPOINT / AWS_ENDPOINT_URL_S3); request
                            bounds and retries as for denoise (5 s connect, 30 s silence, 8 attempts)
${ENGINE_HELP}
  --backend B --threads N   as for train
  --json                    JSON lines (default when stderr is not a terminal): watch-start, shutdown, item-seen,
                            item-start, item-done {seconds, latencySeconds (arrival to stored output),
                            megapixelsPerSecond, queueLength, queueEtaSeconds}, item-retry, item-failed,
                            item-adopted, item-changed, queue-warning, queue-ok, poll-error, watch-stopped

Exit codes: 0 done (--once, --dry-run), 2 usage, 3 an item failed (--once) or a bad input, 4 output refused,
130 stopped by a signal (resumable: run again).

Examples:
  blindspot watch /data/incoming --model models/conv --out /data/denoised
  blindspot watch s3://lab/raw --model models/conv --out s3://lab/denoised --marker .done
  blindspot watch /data/incoming --model models/conv --out /data/denoised --once --json   # from cron`;

function describe(e: WatchEvent): string | null {
  switch (e.type) {
    case 'engine':
      return e.detail;
    case 'watch-start':
      return `watching ${e.input} -> ${e.out} (${e.done} done before, settle ${e.settleMs} ms${e.marker ? `, marker ${e.marker}` : ''}, queue ${e.maxQueue})`;
    case 'item-done':
      return `wrote ${e.output} (${e.seconds.toFixed(2)} s, ${formatSeconds(e.latencySeconds)} after arrival, queue ${e.queueLength})`;
    case 'item-adopted':
      return `kept ${e.output} (written before a restart)`;
    case 'item-retry':
      return `not complete yet, will retry: ${e.error}`;
    case 'item-failed':
      return `error: ${e.error}`;
    case 'item-abandoned':
      return `abandoned ${e.key} (left for the next run)`;
    case 'item-changed':
      return `warning: ${e.key} changed after it was denoised into ${e.output}; not redone`;
    case 'queue-warning':
      return e.reason === 'queue-full'
        ? `warning: arrivals outpace the model: the queue is full (${e.queueLength}/${e.maxQueue}), ${e.waiting} ready item(s) wait`
        : `warning: arrivals outpace the model: ${e.arrivalsPerSecond?.toFixed(3)} item/s arrive, ${e.itemsPerSecond?.toFixed(3)} item/s processed`;
    case 'poll-error':
      return `warning: listing failed (${e.consecutive} in a row), trying again: ${e.error}`;
    case 'dry-run-item':
      return `${e.status.padEnd(18)} ${e.key} -> ${e.output}`;
    case 'watch-stopped':
      return `${e.interrupted ? 'stopped' : 'done'}: ${e.processed} processed, ${e.adopted} kept, ${e.failed} failed`;
    default:
      return null;
  }
}

export async function runWatch(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      model: { type: 'string' },
      out: { type: 'string' },
      'settle-ms': { type: 'string' },
      marker: { type: 'string' },
      'poll-ms': { type: 'string' },
      'max-queue': { type: 'string' },
      once: { type: 'boolean', default: false },
      'dry-run': { type: 'boolean', default: false },
      'grace-seconds': { type: 'string' },
      overwrite: { type: 'boolean', default: false },
      dtype: { type: 'string' },
      tta: { type: 'boolean', default: false },
      tile: { type: 'string' },
      'max-memory': { type: 'string' },
      channel: { type: 'string' },
      's3-endpoint': { type: 'string' },
      ...engineOptions,
    },
    true,
  );
  if (values.help) {
    process.stdout.write(WATCH_HELP + '\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 1) throw new UsageError('watch needs exactly one folder or s3:// prefix to watch (blindspot watch --help)');
  if (!values.model) throw new UsageError('watch needs --model <model-dir>');
  if (!values.out) throw new UsageError('watch needs --out <folder or s3:// prefix>');
  const maxQueue = intOption('max-queue', values['max-queue']);
  if (maxQueue === 0) throw new UsageError('--max-queue must be at least 1');
  const graceSeconds = numberOption('grace-seconds', values['grace-seconds']) ?? DEFAULT_GRACE_SECONDS;
  if (graceSeconds <= 0) throw new UsageError('--grace-seconds must be positive');
  const outputType = choice('dtype', values.dtype, ['float32', 'input'] as const) as OutputType | undefined;
  const settleMs = intOption('settle-ms', values['settle-ms']);
  const pollMs = intOption('poll-ms', values['poll-ms']);
  if (pollMs === 0) throw new UsageError('--poll-ms must be at least 1');
  const maxMemoryBytes = values['max-memory'] ? parseByteSize(values['max-memory']) : undefined;
  // Before the backend starts: a usage error should cost nothing.
  await assertOutputIsNotInput(positionals[0], values.out);

  const reporter: Reporter = values['dry-run'] ? createReporter({ json: values.json === true || !process.stderr.isTTY }) : (await setUp(values)).reporter;
  const stop = new AbortController();
  const abandon = new AbortController();
  const timers: NodeJS.Timeout[] = [];
  const handle = startWatch({
    input: positionals[0],
    out: values.out,
    modelDir: values.model,
    settleMs,
    pollMs,
    marker: values.marker,
    maxQueue,
    once: values.once,
    dryRun: values['dry-run'],
    overwrite: values.overwrite,
    outputType,
    tta: values.tta,
    tileShape: shapeOption('tile', values.tile),
    maxMemoryBytes,
    engine: engineRequest(values),
    channel: intOption('channel', values.channel),
    s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined,
    signal: stop.signal,
    abandon: abandon.signal,
    onEvent: (e) => {
      if (reporter.json) {
        reporter.event(e.type, { ...e });
        return;
      }
      const line = describe(e);
      if (line) reporter.log(line);
    },
  });
  // Exits with the state stored so far (every change is written when it happens; this waits for the last write).
  const exitNow = (): void => {
    const cap = new Promise<void>((resolve) => setTimeout(resolve, 1000).unref());
    void Promise.race([handle.flush().catch(() => undefined), cap]).then(() => process.exit(ExitCode.interrupted));
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stop.signal.aborted) {
      reporter.log(`${sig} again: exiting now`);
      exitNow();
      return;
    }
    reporter.log(`${sig}: taking nothing new; the item in flight may finish within ${graceSeconds} s (again to quit now)`);
    reporter.event('shutdown', { signal: sig, graceSeconds });
    stop.abort();
    const graceMs = graceSeconds * 1000;
    const abandonAt = Math.max(graceMs / 2, graceMs - 1500);
    timers.push(setTimeout(() => abandon.abort(), abandonAt).unref());
    // A single tile cannot be interrupted: if the item has not stopped shortly before the bound, exit anyway.
    timers.push(setTimeout(exitNow, Math.max(abandonAt + 200, graceMs - 400)).unref());
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const result = await handle.result;
    reporter.finish();
    if (values['dry-run'] && !reporter.json) reporter.log(`${result.ready?.length ?? 0} item(s) would be processed now`);
    if (result.interrupted) return ExitCode.interrupted;
    return result.failed > 0 ? ExitCode.input : ExitCode.ok;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const t of timers) clearTimeout(t);
  }
}
