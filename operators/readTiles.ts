import { Observable, type OperatorFunction } from 'rxjs';
import type { TilePixels } from './predictTiles.js';
import type { TileSpec } from './tileGrid.js';

export interface ReadTilesOptions {
  /** Pixels of `spec.read` (C order, float32), e.g. readRegionReflected through a ChunkCache, then normalised. */
  read: (spec: TileSpec) => Promise<Float32Array>;
  /** Reads in flight at once (overlaps slow storage with compute); default 4. */
  concurrency?: number;
}

/**
 * Tile coordinates -> tiles with their padded pixels. At most `concurrency` reads run at once; tiles
 * are emitted in the order their specs arrived (a fast read waits for slower ones before it), so the
 * model sees the same sequence, hence the same batches, on every run. Specs that arrive while every
 * read slot is busy wait in a queue: bound it upstream (the streaming pipeline hands out specs only
 * against credits).
 */
export function readTiles(opts: ReadTilesOptions): OperatorFunction<TileSpec, TilePixels> {
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`readTiles: concurrency must be a positive integer, got ${concurrency}`);
  return (source) =>
    new Observable<TilePixels>((subscriber) => {
      /** Specs in arrival order; each gets its result slot when its read finishes. */
      const order: Array<{ spec: TileSpec; result?: Float32Array; started: boolean }> = [];
      let active = 0;
      let sourceDone = false;
      let failed = false;

      const pump = (): void => {
        if (failed) return;
        // Emit finished tiles from the head, in order.
        while (order.length > 0 && order[0].result !== undefined) {
          const head = order.shift()!;
          subscriber.next({ spec: head.spec, data: head.result! });
        }
        for (const slot of order) {
          if (active >= concurrency) break;
          if (slot.started) continue;
          slot.started = true;
          active++;
          opts.read(slot.spec).then(
            (data) => {
              active--;
              slot.result = data;
              pump();
            },
            (error: unknown) => {
              failed = true;
              subscriber.error(error);
            },
          );
        }
        if (sourceDone && order.length === 0) subscriber.complete();
      };

      const subscription = source.subscribe({
        next: (spec) => {
          order.push({ spec, started: false });
          pump();
        },
        error: (error) => subscriber.error(error),
        complete: () => {
          sourceDone = true;
          pump();
        },
      });
      return () => {
        failed = true;
        subscription.unsubscribe();
      };
    });
}
