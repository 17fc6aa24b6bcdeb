/**
 * The library's import graph: no cycles (type-only imports count: they tie modules together just
 * the same), and nothing outside cli/ imports cli/ (the CLI parses options and calls the library,
 * never the other way). Reads the TypeScript sources; every relative import and re-export,
 * static or dynamic, is an edge.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.join(import.meta.dirname, '..');
/** The library's folders (cli/ is its user; test/ and bench/ are outside it). */
const libraryDirs = ['core', 'backend', 'models', 'methods', 'noise', 'storage', 'operators', 'pipeline', 'workers', 'infra', 'engines', 'report'];

function sourceFiles(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  return entries.flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return sourceFiles(full);
    return /\.(ts|mts)$/.test(name) && !name.endsWith('.d.ts') ? [full] : [];
  });
}

/** Relative module specifiers of a file: import / export ... from '...', import('...'). */
export function importsOf(text: string): string[] {
  const specs: string[] = [];
  const patterns = [/\b(?:import|export)\s[^'";]*?\bfrom\s*['"](\.[^'"]+)['"]/g, /\bimport\s*['"](\.[^'"]+)['"]/g, /\bimport\s*\(\s*['"](\.[^'"]+)['"]\s*\)/g];
  // Comments may quote imports (examples): drop them first.
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  for (const re of patterns) for (const m of code.matchAll(re)) specs.push(m[1]);
  return specs;
}

function resolve(from: string, spec: string): string | null {
  const base = path.resolve(path.dirname(from), spec);
  for (const candidate of [base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), `${base}.ts`, path.join(base, 'index.ts')]) {
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not this one
    }
  }
  return null;
}

function graph(): Map<string, string[]> {
  const files = libraryDirs.flatMap((d) => sourceFiles(path.join(root, d)));
  const edges = new Map<string, string[]>();
  for (const file of files) {
    const targets = importsOf(readFileSync(file, 'utf8'))
      .map((spec) => resolve(file, spec))
      .filter((t): t is string => t !== null);
    edges.set(file, [...new Set(targets)]);
  }
  return edges;
}

/** Strongly connected components with more than one file (or a file importing itself): Tarjan. */
function cycles(edges: Map<string, string[]>): string[][] {
  let index = 0;
  const order = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    order.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!edges.has(w)) continue;
      if (!order.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, order.get(w)!));
      }
    }
    if (low.get(v) === order.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (edges.get(v) ?? []).includes(v)) found.push(component.map((f) => path.relative(root, f)).sort());
    }
  };
  for (const v of edges.keys()) if (!order.has(v)) visit(v);
  return found;
}

describe('the import graph of the library', () => {
  const edges = graph();

  it('reads the sources (sanity: the graph is not empty, and known edges are found)', () => {
    expect(edges.size).toBeGreaterThan(100);
    expect(edges.get(path.join(root, 'pipeline', 'train.ts'))).toContain(path.join(root, 'methods', 'registry.ts'));
  });

  it('has no import cycle', () => {
    expect(cycles(edges)).toEqual([]);
  });

  it('never imports cli/ (infra/ holds programs of their own, run in the container images, which may use its reporter)', () => {
    const cli = path.join(root, 'cli') + path.sep;
    const programs = path.join(root, 'infra') + path.sep;
    const offending = [...edges].filter(([file]) => !file.startsWith(programs)).flatMap(([file, targets]) => targets.filter((t) => t.startsWith(cli)).map((t) => `${path.relative(root, file)} -> ${path.relative(root, t)}`));
    expect(offending).toEqual([]);
  });

  it('finds a cycle and a cli import when there is one (the checker itself)', () => {
    const a = path.join(root, 'x', 'a.ts');
    const b = path.join(root, 'x', 'b.ts');
    expect(cycles(new Map([[a, [b]], [b, [a]]]))).toEqual([['x/a.ts', 'x/b.ts']]);
    expect(importsOf("import type { A } from './a.js';\nexport { b } from '../b.js';\nconst c = await import('./c.js');\n// import { d } from './d.js'")).toEqual(['./a.js', '../b.js', './c.js']);
  });
});
