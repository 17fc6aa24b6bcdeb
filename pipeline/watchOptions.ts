/** What watch takes and reports: its options, events, result and handle (pipeline/watch.ts re-exports them). */
import { type OutputType } from './denoise.js';
import { type S3Settings } from '../storage/s3.js';
import { type WatchItemKind } from './watchState.js';

export type WatchEvent =
  | { type: 'watch-start'; input: string; out: string; settleMs: number; pollMs: number; maxQueue: number; marker: string | null; done: number; failed: number }
  | { type: 'item-seen'; key: string; kind: WatchItemKind }
  | { type: 'item-start'; key: string; kind: WatchItemKind; output: string; waitedSeconds: number; queueLength: number }
  | {
      type: 'item-done';
      key: string;
      kind: WatchItemKind;
      output: string;
      /** Processing: read, denoise, write. */
      seconds: number;
      /** Arrival to stored output (settling and queueing included). */
      latencySeconds: number;
      megapixelsPerSecond: number;
      queueLength: number;
      /** Queue length / measured processing rate. */
      queueEtaSeconds: number | null;
    }
  | { type: 'item-adopted'; key: string; kind: WatchItemKind; output: string }
  | { type: 'item-retry'; key: string; kind: WatchItemKind; error: string }
  | { type: 'item-failed'; key: string; kind: WatchItemKind; error: string }
  | { type: 'item-abandoned'; key: string; kind: WatchItemKind }
  | { type: 'item-changed'; key: string; kind: WatchItemKind; output: string }
  | { type: 'queue-warning'; reason: 'queue-full' | 'rate'; queueLength: number; maxQueue: number; waiting: number; arrivalsPerSecond: number | null; itemsPerSecond: number | null }
  | { type: 'queue-ok'; queueLength: number }
  | { type: 'dry-run-item'; key: string; kind: WatchItemKind; status: 'ready' | 'settling' | 'waiting-for-marker' | 'done' | 'failed'; output: string }
  | { type: 'stream'; key: string; event: Record<string, unknown> }
  | { type: 'poll-error'; error: string; consecutive: number }
  | { type: 'watch-stopped'; processed: number; adopted: number; failed: number; interrupted: boolean };

export interface WatchOptions {
  /** Folder or s3://bucket/prefix to watch. */
  input: string;
  /** Folder or s3://bucket/prefix for outputs and the state; never the input or inside it. */
  out: string;
  /** Local model folder (loaded once). */
  modelDir: string;
  /** How long a signature must stay unchanged (default 2000 ms). */
  settleMs?: number;
  /** Between polls (default 500 ms). */
  pollMs?: number;
  /** Completeness marker suffix (e.g. '.done'); without it, settling decides. */
  marker?: string;
  /** Items admitted and not finished, at most (default 16). */
  maxQueue?: number;
  /** Process what is (or becomes, by settling) complete, then return. */
  once?: boolean;
  /** List what would be processed; write nothing, load no network. */
  dryRun?: boolean;
  /** Replace outputs this watch did not write. */
  overwrite?: boolean;
  outputType?: OutputType;
  tta?: boolean;
  tileShape?: number[];
  /** Memory bound of Zarr items (denoiseUrl; default 2 GiB). */
  maxMemoryBytes?: number;
  /** Channel of multi-channel OME-Zarr items. */
  channel?: number;
  s3?: S3Settings;
  /** Stop: take nothing new, let the item in flight finish. */
  signal?: AbortSignal;
  /** Abandon the item in flight (at its next tile or chunk); it stays 'started' and is redone or resumed later. */
  abandon?: AbortSignal;
  onEvent?: (event: WatchEvent) => void;
}

export interface WatchResult {
  processed: number;
  adopted: number;
  failed: number;
  /** Stopped by `signal` (items may be left for the next run). */
  interrupted: boolean;
  /** Dry run: the items that would be processed now. */
  ready?: string[];
}

export interface WatchHandle {
  result: Promise<WatchResult>;
  /** Resolves when the state written so far is stored (for a process about to exit). */
  flush(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Items (sources: watchSources.ts; sinks: watchSinks.ts; state: watchState.ts)
