/**
 * `blindspot export`: the model folder and the sample are inputs, read only. An --out that is or
 * lies inside the model folder by its real location (links followed) is refused before anything is
 * computed; a missing or broken model folder is a bad input naming it; malformed options are usage
 * errors naming the option. The model folder stays byte-identical in every case.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { cli, expectOutcome, hashAll, plantSecret } from './harness.js';
import { makeFixtures, type Fixtures } from './fixtures.js';

let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-export-${process.pid}`);
const at = (...parts: string[]): string => path.join(root, ...parts);

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
  await fs.symlink(f.model, at('model-link'));
  await fs.cp(f.model, at('no-manifest'), { recursive: true });
  await fs.rm(at('no-manifest', 'blindspot.json'));
  await fs.cp(f.model, at('bad-manifest'), { recursive: true });
  await fs.writeFile(at('bad-manifest', 'blindspot.json'), '{"method": "n2v", "network": ');
  await fs.writeFile(at('existing.onnx'), 'keep me');
});

afterAll(async () => {
  restoreEnv();
  await fs.rm(root, { recursive: true, force: true });
});

describe('export: outputs that are or lie inside the model folder', () => {
  const refused: Array<{ name: string; args: () => string[]; mentions: () => string[] }> = [
    { name: '--out the model weights, --overwrite', args: () => ['export', f.model, '--format', 'onnx', '--out', path.join(f.model, 'weights.bin'), '--overwrite'], mentions: () => [path.join(f.model, 'weights.bin')] },
    { name: '--out inside the model folder through a symbolic link', args: () => ['export', f.model, '--format', 'onnx', '--out', at('model-link', 'copy.onnx')], mentions: () => [at('model-link', 'copy.onnx')] },
    { name: '--out in a subfolder of the model folder', args: () => ['export', f.model, '--format', 'onnx', '--out', path.join(f.model, 'sub', 'm.onnx')], mentions: () => [path.join(f.model, 'sub', 'm.onnx')] },
    { name: '--out an existing file without --overwrite', args: () => ['export', f.model, '--format', 'onnx', '--out', at('existing.onnx')], mentions: () => [at('existing.onnx')] },
  ];
  for (const c of refused) {
    test(`${c.name}: exit 4, the model folder unchanged`, async () => {
      const inputs = await hashAll([f.model, at('existing.onnx')]);
      const r = await cli(c.args());
      await expectOutcome(r, { code: 4, mentions: c.mentions(), inputs, maxMs: 20_000 });
    });
  }
});

describe('export: bad model folders and options', () => {
  const cases: Array<{ name: string; code: number; args: () => string[]; mentions: () => string[] }> = [
    { name: 'a model folder that does not exist', code: 3, args: () => ['export', at('nowhere'), '--format', 'onnx', '--out', at('x.onnx')], mentions: () => [at('nowhere')] },
    { name: 'a folder without blindspot.json', code: 3, args: () => ['export', at('no-manifest'), '--format', 'onnx', '--out', at('y.onnx')], mentions: () => [at('no-manifest')] },
    { name: 'a corrupt blindspot.json', code: 3, args: () => ['export', at('bad-manifest'), '--format', 'onnx', '--out', at('z.onnx')], mentions: () => [at('bad-manifest')] },
    { name: 'an unknown --format', code: 2, args: () => ['export', f.model, '--format', 'pdf', '--out', at('m.pdf')], mentions: () => ['--format'] },
    { name: 'bioimageio without --author', code: 2, args: () => ['export', f.model, '--format', 'bioimageio', '--out', at('p.zip')], mentions: () => ['--author'] },
    { name: 'bioimageio with an ORCID whose check digit is wrong', code: 2, args: () => ['export', f.model, '--format', 'bioimageio', '--out', at('p.zip'), '--author', 'A B;Lab;0000-0002-1825-0098'], mentions: () => ['ORCID'] },
    { name: 'bioimageio --out not a .zip', code: 2, args: () => ['export', f.model, '--format', 'bioimageio', '--out', at('p.tar'), '--author', 'A B'], mentions: () => ['.zip'] },
    { name: '--name on an onnx export', code: 2, args: () => ['export', f.model, '--format', 'onnx', '--out', at('n.onnx'), '--name', 'x'], mentions: () => ['--name'] },
  ];
  for (const c of cases) {
    test(`${c.name}: exit ${c.code}, nothing written`, async () => {
      const inputs = await hashAll([f.model]);
      const r = await cli(c.args());
      await expectOutcome(r, { code: c.code, mentions: c.mentions(), inputs, maxMs: 20_000 });
    });
  }
});
