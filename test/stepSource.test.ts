import { describe, it, expect } from 'vitest';
import { Subject, concatMap, lastValueFrom, tap, toArray } from 'rxjs';
import { stepsOnDemand } from '../pipeline/stepSource.js';

describe('stepsOnDemand (training backpressure)', () => {
  it('keeps the producer at most `ahead` steps in front of a slow consumer and emits every step once, in order', async () => {
    for (const ahead of [1, 2, 3]) {
      const completed = new Subject<void>();
      let produced = 0;
      let consumed = 0;
      let maxInFlight = 0;
      const steps = await lastValueFrom(
        stepsOnDemand(5, 40, ahead, completed).pipe(
          tap(() => {
            produced++;
            maxInFlight = Math.max(maxInFlight, produced - consumed);
          }),
          concatMap(async (step) => {
            await new Promise((resolve) => setTimeout(resolve, 1));
            consumed++;
            completed.next();
            return step;
          }),
          toArray(),
        ),
      );
      expect(steps).toEqual(Array.from({ length: 35 }, (_, i) => i + 5));
      expect(maxInFlight).toBe(ahead);
    }
  });

  it('completes at once for an empty range (a resumed run that had already finished)', async () => {
    const steps = await lastValueFrom(stepsOnDemand(10, 10, 2, new Subject<void>()).pipe(toArray()));
    expect(steps).toEqual([]);
  });

  it('ends when the consumer completes its signal (an interrupt), without emitting the rest', async () => {
    const completed = new Subject<void>();
    const steps = await lastValueFrom(
      stepsOnDemand(0, 100, 2, completed).pipe(
        concatMap(async (step) => {
          if (step === 3) completed.complete();
          else completed.next();
          return step;
        }),
        toArray(),
      ),
    );
    expect(steps).toEqual([0, 1, 2, 3, 4]);
  });
});
