/**
 * Lists the npm packages the compiled entry files need at run time, one per line, for
 * bench/gpu.sh --prepare, which packs just those for a machine with no network (a GPU machine
 * gets the working tree and a few carried folders, not the whole node_modules):
 * the bare imports (static and dynamic, with literal specifiers) of every relative module reached
 * from the entries, plus each package's own dependencies and installed optionalDependencies.
 *
 *   node dist/bench/gpuKit.js dist/bench/gpuCheck.js dist/bench/speed.js +webgpu
 * (`+name`: a package loaded through a computed specifier, which the scan cannot see.)
 *
 * Written here because no package in the tree does this (a bundler would also rewrite the code,
 * and tfjs-backend-wasm / webgpu load .wasm and .node files from their own folders).
 */
import { existsSync, readFileSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import path from 'node:path';

const IMPORT = /(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|import\s+['"]([^'"]+)['"]/g;

function packageName(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function packagesOf(entries: string[]): Set<string> {
  const seenFiles = new Set<string>();
  const packages = new Set<string>();
  const queue = entries.map((e) => path.resolve(e));
  while (queue.length > 0) {
    const file = queue.pop()!;
    if (seenFiles.has(file) || !existsSync(file)) continue;
    seenFiles.add(file);
    const text = readFileSync(file, 'utf8');
    for (const match of text.matchAll(IMPORT)) {
      const specifier = match[1] ?? match[2] ?? match[3];
      if (specifier.startsWith('.')) queue.push(path.resolve(path.dirname(file), specifier));
      else if (!specifier.startsWith('node:') && !builtinModules.includes(specifier)) packages.add(packageName(specifier));
    }
  }
  return packages;
}

/** Adds every package's dependencies (and the optional ones that are installed), resolved from the repository. */
function withDependencies(roots: Set<string>, from: string): string[] {
  const requireHere = createRequire(path.join(from, 'package.json'));
  const found = new Map<string, string>();
  const queue = [...roots].map((name) => ({ name, base: requireHere }));
  while (queue.length > 0) {
    const { name, base } = queue.pop()!;
    // Looked up along the node_modules folders, not with require.resolve: a package whose `exports`
    // omit ./package.json (onnxruntime-common) cannot be resolved that way.
    const manifestPath = (base.resolve.paths(name) ?? []).map((dir) => path.join(dir, name, 'package.json')).find((p) => existsSync(p));
    if (manifestPath === undefined) continue; // not installed (an optional dependency on another platform)
    const dir = path.dirname(manifestPath);
    if (found.has(dir)) continue;
    found.set(dir, name);
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    const requireThere = createRequire(manifestPath);
    for (const dep of Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies })) queue.push({ name: dep, base: requireThere });
  }
  return [...found.keys()].map((dir) => path.relative(from, dir)).sort();
}

const root = process.cwd();
const args = process.argv.slice(2);
const entries = args.filter((a) => !a.startsWith('+'));
if (entries.length === 0) {
  process.stderr.write('usage: node dist/bench/gpuKit.js <entry.js>... [+package]...\n');
  process.exit(2);
}
const packages = packagesOf(entries);
for (const extra of args.filter((a) => a.startsWith('+'))) packages.add(extra.slice(1));
for (const dir of withDependencies(packages, root)) process.stdout.write(`${dir}\n`);
