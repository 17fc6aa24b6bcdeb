/**
 * Where a streaming output may be written: never over, inside or around its input (local paths by
 * real location, links followed; S3 URLs by bucket and normalised prefix: storage/location.ts).
 */
import { assertOutputOutsideInputs } from '../storage/location.js';

/**
 * Refuses (OutputError, exit 4, before anything is written) an output that is the input, lies inside
 * it or contains it, by real location (links followed; S3 by bucket and normalised prefix).
 */
export async function assertOutputIsNotInput(input: string, output: string): Promise<void> {
  await assertOutputOutsideInputs(output, [input], { what: '--out' });
}
