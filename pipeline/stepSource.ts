import { Observable } from 'rxjs';

/**
 * Step indices first..end-1, paced by the consumer: `ahead` are emitted at once, then one more each
 * time `completed` fires, and none after `completed` completes. RxJS pushes; this is what keeps the patch producer at most `ahead` batches
 * in front of the model instead of filling an unbounded concatMap buffer.
 */
export function stepsOnDemand(first: number, end: number, ahead: number, completed: Observable<unknown>): Observable<number> {
  return new Observable<number>((subscriber) => {
    let next = first;
    const emitOne = (): void => {
      if (subscriber.closed) return;
      if (next < end) subscriber.next(next++);
      if (next >= end) subscriber.complete();
    };
    // The consumer completing `completed` means it stops early (an interrupt): end the stream too.
    const sub = completed.subscribe({ next: emitOne, complete: () => subscriber.complete() });
    for (let i = 0; i < Math.max(1, ahead) && !subscriber.closed; i++) emitOne();
    if (first >= end) subscriber.complete();
    return () => sub.unsubscribe();
  });
}
