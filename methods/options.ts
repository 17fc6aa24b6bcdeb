/**
 * The one place that checks the train options belonging to some methods only, from what each
 * method declares (Method.accepts, masking, targets, ownLoss) and its own validateOptions: an
 * option a method does not take is refused naming the methods that do.
 */
import { UsageError } from '../core/errors.js';
import type { Method, MethodOptions } from './method.js';
import { methodsAccepting } from './registry.js';

/** "a", "a and b", "a, b and c". */
function listed(names: readonly string[]): string {
  return names.length <= 1 ? names.join('') : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

/**
 * Checks the method-specific options before anything is read. `targets.given`: some target was
 * given (files or streamed); `targets.optional`: in-memory volumes, which carry their own targets.
 */
export function validateMethodOptions(method: Method, opts: MethodOptions, targets: { given: boolean; optional: boolean }): void {
  const name = method.name;
  if (targets.given && !method.accepts.includes('targets')) throw new UsageError(`--targets applies to --method ${listed(methodsAccepting('targets'))} only (this is ${name})`);
  if (method.targets !== undefined && !targets.given && !targets.optional) {
    throw new UsageError(`--method ${name} needs --targets: the ${method.targets} paired with the inputs`);
  }
  if (opts.structMask !== undefined && !method.accepts.includes('structMask')) {
    throw new UsageError(`--struct-mask applies to --method ${listed(methodsAccepting('structMask'))} only (this is ${name})`);
  }
  method.validateOptions?.(opts);
  if (opts.grid !== undefined) {
    if (!method.accepts.includes('grid')) throw new UsageError(`--grid applies to --method ${listed(methodsAccepting('grid'))} only (this is ${name})`);
    if (!Number.isInteger(opts.grid) || opts.grid < 2) throw new UsageError(`--grid must be an integer >= 2, got ${opts.grid}`);
  }
  if (opts.prior !== undefined && !method.accepts.includes('prior')) throw new UsageError(`--prior does not apply to --method ${name}`);
  if (!method.accepts.includes('masking') && (opts.maskFraction !== undefined || opts.strategy !== undefined || opts.maskRadius !== undefined)) {
    const what = method.masking === 'grid' ? `it masks one grid phase per step (--grid)` : 'it masks nothing';
    throw new UsageError(`--mask-fraction, --mask-radius and --strategy do not apply to --method ${name}: ${what}`);
  }
  if (opts.loss !== undefined && !method.accepts.includes('loss')) {
    throw new UsageError(`--loss does not apply to --method ${name}${method.ownLoss?.refusesLossOption ? `: ${method.ownLoss.refusesLossOption}` : ''}`);
  }
}
