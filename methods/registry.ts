/**
 * Every training method, by name: `blindspot train --method`, the model folder's `method` and the
 * denoiser all look methods up here and nowhere else. Adding a method: one file in methods/
 * implementing Method (methods/method.ts), and one line below. The order is the --help order.
 */
import { UsageError } from '../core/errors.js';
import { care } from './care.js';
import { dbsn } from './dbsn.js';
import { divnoising } from './divnoising.js';
import { laine19 } from './laine19.js';
import type { Method, MethodOption } from './method.js';
import { n2n } from './n2n.js';
import { n2v } from './n2v.js';
import { n2v2 } from './n2v2.js';
import { neighbor2neighbor } from './neighbor2neighbor.js';
import { noise2info } from './noise2info.js';
import { noise2self } from './noise2self.js';
import { pn2v } from './pn2v.js';
import { structn2v } from './structn2v.js';

export const methods = new Map<string, Method>();
methods.set(n2v.name, n2v);
methods.set(n2v2.name, n2v2);
methods.set(structn2v.name, structn2v);
methods.set(noise2self.name, noise2self);
methods.set(laine19.name, laine19);
methods.set(dbsn.name, dbsn);
methods.set(noise2info.name, noise2info);
methods.set(neighbor2neighbor.name, neighbor2neighbor);
methods.set(n2n.name, n2n);
methods.set(care.name, care);
methods.set(pn2v.name, pn2v);
methods.set(divnoising.name, divnoising);

/** The method `train` uses when none is given. */
export const defaultMethodName = n2v.name;

/** Registers a method of the caller's (a plugin, a test); its name must be new. */
export function registerMethod(method: Method): void {
  if (methods.has(method.name)) throw new Error(`a method named '${method.name}' is already registered`);
  methods.set(method.name, method);
}

export function methodNames(): string[] {
  return [...methods.keys()];
}

/** The method of that name; UsageError listing the known ones otherwise. */
export function getMethod(name: string): Method {
  const method = methods.get(name);
  if (!method) throw new UsageError(`--method must be one of ${methodNames().join(', ')}, got '${String(name)}'`);
  return method;
}

/** The names of the methods that take a method-specific option, in registry order (for messages). */
export function methodsAccepting(option: MethodOption): string[] {
  return [...methods.values()].filter((m) => m.accepts.includes(option)).map((m) => m.name);
}
