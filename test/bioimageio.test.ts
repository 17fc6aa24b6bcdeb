/**
 * `blindspot export` and the bioimage.io package (models/bioimageio.ts): the rdf.yaml validates
 * against the 0.5.7 JSON schema (../shared/specs/bioimageio; skipped with a message when absent),
 * every file it names is in the zip with its sha256, and ONNX Runtime on the package's test input,
 * with the rdf's own pre- and postprocessing, reproduces its test output within 1e-4 of the range.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Ajv } from 'ajv';
import { unzipSync, strFromU8 } from 'fflate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { PACKAGE_ROOT, SHARED_DIR } from '../core/version.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { bioimageioPackage } from '../models/bioimageio.js';
import { modelFromFiles, MODEL_ONNX, readManifest, saveModelFolder } from '../models/io.js';
import { buildNetwork, networkGeometry, type NetworkConfig } from '../models/network.js';
import { sha256Hex } from '../models/onnx/export.js';
import { writeImage } from '../storage/index.js';
import { errorOverRange, randomiseWeights, runOnnx, testManifest } from './fixtures/onnxModels.js';

const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
const SCHEMA = path.join(SHARED_DIR, 'specs', 'bioimageio', 'model-0.5.7.schema.json');
const schemaAvailable = existsSync(SCHEMA);
if (!schemaAvailable) console.warn(`bioimage.io schema validation skipped: ${SCHEMA} is absent (../shared is not beside this checkout)`);

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'blindspot-bioimageio-'));
});
afterAll(async () => fs.rm(tmp, { recursive: true, force: true }));

function blindspot(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: tmp, encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A float32 little-endian .npy of any rank. */
function readNpy(bytes: Uint8Array): { data: Float32Array; shape: number[] } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getUint16(8, true);
  const header = strFromU8(bytes.subarray(10, 10 + headerLength));
  expect(header).toMatch(/'descr': '<f4'/);
  const shape = /'shape': \(([^)]*)\)/.exec(header)![1].split(',').filter((s) => s.trim() !== '').map(Number);
  const start = 10 + headerLength;
  return { data: new Float32Array(bytes.slice(start).buffer), shape };
}

type Rdf = {
  inputs: { axes: { type: string; id?: string; size?: unknown }[]; test_tensor: { source: string; sha256: string }; preprocessing: { id: string; kwargs: { gain?: number; offset?: number } }[] }[];
  outputs: { axes: { type: string; halo?: number }[]; test_tensor: { source: string; sha256: string }; postprocessing: { id: string; kwargs: { gain?: number; offset?: number } }[] }[];
  weights: Record<string, { source: string; sha256: string; opset_version?: number }>;
  covers: string[];
  documentation: string;
  cite: { text: string }[];
  authors: { name: string }[];
};

function applyScaleLinear(data: Float32Array, steps: { id: string; kwargs: { gain?: number; offset?: number } }[]): Float32Array {
  let out = data;
  for (const step of steps) {
    if (step.id !== 'scale_linear') continue;
    const { gain = 1, offset = 0 } = step.kwargs;
    out = out.map((v) => v * gain + offset);
  }
  return out;
}

/** Everything a consumer relies on in a package: schema, files and checksums, and the test tensors under ORT. */
async function checkPackage(zip: Uint8Array, network: NetworkConfig): Promise<{ rdf: Rdf; files: Record<string, Uint8Array> }> {
  const files = unzipSync(zip);
  const rdfObject = parseYaml(strFromU8(files['rdf.yaml'])) as Record<string, unknown>;
  if (schemaAvailable) {
    const ajv = new Ajv({ strict: false, allErrors: true });
    ajv.addFormat('uri', /^https?:\/\/\S+$/);
    ajv.addFormat('date-time', { validate: (s: string) => !Number.isNaN(Date.parse(s)) });
    ajv.addFormat('email', /^\S+@\S+$/);
    ajv.addFormat('path', true);
    ajv.addFormat('file-path', true);
    const validate = ajv.compile(JSON.parse(readFileSync(SCHEMA, 'utf8')) as object);
    const valid = validate(rdfObject);
    expect(validate.errors ?? [], JSON.stringify(validate.errors, null, 1)).toEqual([]);
    expect(valid).toBe(true);
    // The validator can fail: the same description with an older format version or no weights does.
    expect(validate({ ...rdfObject, format_version: '0.5.4' })).toBe(false);
    expect(validate({ ...rdfObject, weights: undefined })).toBe(false);
  }
  const rdf = rdfObject as unknown as Rdf;
  const named = [rdf.inputs[0].test_tensor, rdf.outputs[0].test_tensor, ...Object.values(rdf.weights)];
  for (const f of named) expect(sha256Hex(files[f.source]), f.source).toBe(f.sha256);
  for (const name of [...rdf.covers, rdf.documentation]) expect(files[name], name).toBeDefined();
  expect(rdf.cite.length).toBeGreaterThan(0);
  const halo = rdf.outputs[0].axes.filter((a) => a.type === 'space').map((a) => a.halo);
  expect(halo).toEqual(new Array(network.dims).fill(networkGeometry(network).receptiveRadius));

  // What bioimageio.core does with the package: preprocess, run the ONNX weights, postprocess.
  const input = readNpy(files[rdf.inputs[0].test_tensor.source]);
  const expected = readNpy(files[rdf.outputs[0].test_tensor.source]);
  expect(input.shape).toEqual(expected.shape);
  expect(input.shape.length).toBe(network.dims + 2);
  const onnx = await runOnnx(files[rdf.weights.onnx.source], applyScaleLinear(input.data, rdf.inputs[0].preprocessing), input.shape);
  const output = applyScaleLinear(onnx.output.data, rdf.outputs[0].postprocessing);
  expect(errorOverRange(output, expected.data)).toBeLessThan(1e-4);
  // And it denoises: the output is not the input.
  expect(errorOverRange(input.data, expected.data)).toBeGreaterThan(1e-3);

  // The tensorflow_js weights are the same network.
  const tfjs = unzipSync(files[rdf.weights.tensorflow_js.source]);
  const reloaded = await modelFromFiles(strFromU8(tfjs['model.json']), tfjs['weights.bin'], 'tensorflow_js.zip');
  expect(reloaded.outputs[0].shape[network.dims + 1]).toBe(network.outputChannels ?? 1);
  reloaded.dispose();
  return { rdf, files };
}

describe('bioimage.io package', () => {
  it('CLI: export adds model.onnx to an old folder, then packages it with a sample image; bad options are usage errors', async () => {
    const dir = path.join(tmp, 'unet');
    const network: NetworkConfig = { dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v2', blurPool: 'centred' };
    const model = buildNetwork(network, 3);
    randomiseWeights(model, 4);
    await saveModelFolder(dir, model, testManifest(network, { method: 'n2v2', normalisation: { mode: 'meanstd', offset: 60, scale: 25 } }));
    model.dispose();
    const clean = syntheticCells([1, 80, 72], new Rng(1));
    await writeImage(path.join(tmp, 'sample.tif'), { data: addGaussianNoise(clean.data.map((v) => 20 + 150 * v), 15, new Rng(2)), shape: [80, 72], sampleType: 'float32' });

    expect(blindspot('export', '--help').stdout).toMatch(/Examples:/);
    const noAuthor = blindspot('export', 'unet', '--format', 'bioimageio', '--out', 'p.zip');
    expect(noAuthor.code).toBe(2);
    expect(noAuthor.stderr).toMatch(/--author/);

    const added = blindspot('export', 'unet', '--backend', 'cpu');
    expect(added.stderr).not.toMatch(/unexpected error/);
    expect(added.code).toBe(0);
    const manifest = await readManifest(dir);
    expect(sha256Hex(new Uint8Array(await fs.readFile(path.join(dir, MODEL_ONNX))))).toBe(manifest.onnx!.sha256);

    const packaged = blindspot('export', 'unet', '--format', 'bioimageio', '--out', 'unet.zip', '--author', 'Ada Lovelace;Analytical Engines;0000-0002-1825-0097', '--sample', 'sample.tif', '--backend', 'cpu');
    expect(packaged.stderr).not.toMatch(/unexpected error/);
    expect(packaged.code).toBe(0);
    const { rdf, files } = await checkPackage(new Uint8Array(await fs.readFile(path.join(tmp, 'unet.zip'))), network);
    expect(rdf.authors).toEqual([{ name: 'Ada Lovelace', affiliation: 'Analytical Engines', orcid: '0000-0002-1825-0097' }]);
    expect(rdf.cite[0].text).toMatch(/N2V2/);
    expect(strFromU8(files['documentation.md'])).toMatch(/sample\.tif/);

    const again = blindspot('export', 'unet', '--format', 'bioimageio', '--out', 'unet.zip', '--author', 'A B', '--backend', 'cpu');
    expect(again.code).toBe(4);
    expect(again.stderr).toMatch(/--overwrite/);
  });

  it('a 3D D-BSN with a Poisson-Gaussian prior: the package gives the posterior mean', async () => {
    const network: NetworkConfig = { kind: 'dbsn', dims: 3, filters: 3, blocks: 1, outputChannels: 2 };
    const model = buildNetwork(network, 5);
    randomiseWeights(model, 6);
    const manifest = testManifest(network, { method: 'dbsn', prior: { kind: 'poisson-gaussian', a: 0.7, b: 9 }, normalisation: { mode: 'meanstd', offset: 50, scale: 20 } });
    const pkg = await bioimageioPackage(model, manifest, { authors: [{ name: 'Test Author' }] });
    model.dispose();
    expect(pkg.warnings.join('\n')).toMatch(/synthetic/);
    const { rdf } = await checkPackage(pkg.zip, network);
    expect(rdf.cite[0].text).toMatch(/Unpaired learning/);
  });
});
