/**
 * Watch mode's rate estimates: recent arrivals against recent processing times, so a watcher can
 * warn when items land faster than the model denoises them (pipeline/watch.ts's queue-warning).
 */

/** Arrivals older than this do not count toward the arrival rate. */
const ARRIVAL_WINDOW_MS = 300_000;

export class WatchRates {
  /** Arrival times (ms since the epoch) of the last 20 items found complete. */
  private readonly arrivals: number[] = [];
  /** Processing seconds of the last 10 items done. */
  private readonly durations: number[] = [];

  arrived(nowMs: number): void {
    this.arrivals.push(nowMs);
    if (this.arrivals.length > 20) this.arrivals.shift();
  }

  processed(seconds: number): void {
    this.durations.push(seconds);
    if (this.durations.length > 10) this.durations.shift();
  }

  /** Items the model finishes per second, from the recent ones (null before the first). */
  itemsPerSecond(): number | null {
    return this.durations.length ? this.durations.length / this.durations.reduce((a, b) => a + b, 0) : null;
  }

  /** Items arriving per second over the last 5 minutes (null with fewer than 3 arrivals there). */
  arrivalsPerSecond(nowMs: number): number | null {
    const recent = this.arrivals.filter((t) => nowMs - t < ARRIVAL_WINDOW_MS);
    if (recent.length < 3) return null;
    const span = (recent[recent.length - 1] - recent[0]) / 1000;
    return span > 0 ? (recent.length - 1) / span : null;
  }
}
