/**
 * Where a streaming output may be written: never over, inside or around its input (local paths
 * and S3 URLs).
 */
import path from 'node:path';
import { UsageError } from '../core/errors.js';

function s3Parts(url: string): { bucket: string; key: string } | null {
  const match = /^s3:\/\/([^/]+)\/?(.*)$/i.exec(url);
  if (!match) return null;
  return { bucket: match[1], key: match[2].replace(/\/+$/, '') };
}

/** Whether `inner` is `outer` or lies inside it, comparing '/'-separated path segments. */
function within(inner: string, outer: string): boolean {
  if (outer === '') return true;
  return inner === outer || inner.startsWith(outer.endsWith('/') ? outer : `${outer}/`);
}

/**
 * Refuses (UsageError, before anything is written) an output that is the input, lies inside it or
 * contains it: same path, or the same S3 bucket with one prefix inside the other.
 */
export function assertOutputIsNotInput(input: string, output: string): void {
  const a = s3Parts(input);
  const b = s3Parts(output);
  let clash = false;
  if (a && b) {
    clash = a.bucket === b.bucket && (within(a.key, b.key) || within(b.key, a.key));
  } else if (!a && !b) {
    const ra = path.resolve(input);
    const rb = path.resolve(output);
    clash = ra === rb || rb.startsWith(ra + path.sep) || ra.startsWith(rb + path.sep);
  }
  if (clash) throw new UsageError(`the output ${output} would overwrite the input ${input}; choose an output outside the input`);
}
