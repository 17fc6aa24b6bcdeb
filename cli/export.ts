/**
 * `blindspot export <model-dir>`: the model's network as ONNX. Without --out it adds `model.onnx`
 * (and its manifest record) to a folder trained before ONNX existed; `--format onnx --out f.onnx`
 * writes the graph to a file; `--format bioimageio --out name.zip` a bioimage.io model package.
 */
import path from 'node:path';
import { ExitCode, OutputError, UsageError } from '../core/errors.js';
import type { Volume } from '../core/volume.js';
import { bioimageioPackage, type BioimageioAuthor } from '../models/bioimageio.js';
import { loadModelFolder, MODEL_ONNX, readManifest, writeFilesAtomically, type ModelManifest } from '../models/io.js';
import { onnxForModelFolder, writeOnnxToModelFolder } from '../models/onnx/export.js';
import { readImage } from '../storage/index.js';
import { exists } from '../storage/common.js';
import { assertOutputOutsideInputs } from '../storage/location.js';
import { choice, commonOptions, parse, setUp } from './options.js';

export const EXPORT_HELP = `Usage: blindspot export <model-dir> [--format onnx|bioimageio --out <file>] [options]

Exports a trained model's network to ONNX (opset 17, float32, batch norm folded into the
convolutions, dynamic batch and spatial sizes), the format Fiji/deepImageJ, bioimageio.core
(napari, ilastik) and ONNX Runtime run. Models trained with --prior end with the posterior mean,
so the graph gives what 'blindspot denoise' gives. The graph takes and gives NHWC / NDHWC float32
tiles with one channel in normalised units: (raw - offset) / scale, offset and scale as in
blindspot.json (a bioimage.io package does this for you with pre- and postprocessing).

Without --out: writes model.onnx into the model folder and records it (inputs, outputs, opset,
sha256) in blindspot.json, for folders trained before 'train' wrote it. With --out the folder is
only read.

Options:
  --format onnx|bioimageio  what --out holds (default onnx)
  --out <file>              onnx: the .onnx file; bioimageio: the package .zip
  --author "Name[;affiliation[;orcid]]"   bioimageio: an author of the model (repeat; at least one)
  --license SPDX            bioimageio: the model's licence (default CC-BY-4.0)
  --name TEXT               bioimageio: the model's name (default "blindspot <method> <dims>D denoiser")
  --sample <image>          bioimageio: the image the test tensors and the cover are cut from
                            (default: the first training input still on disk, else a synthetic image)
  --overwrite               replace an existing --out file
  --backend B --threads N --json   TensorFlow.js backend for the package's test prediction, as for train

Examples:
  blindspot export models/conv
  blindspot export models/conv --format onnx --out conv.onnx
  blindspot export models/conv --format bioimageio --out conv-denoiser.zip --author "Ada Lovelace;EMBL;0000-0002-1825-0097" --sample data/noisy/a.tif`;

/** ORCID iD checksum (ISO 7064 11,2), as bioimage.io's validator checks it. */
function orcidChecksumValid(orcid: string): boolean {
  const digits = orcid.replace(/-/g, '');
  let total = 0;
  for (const d of digits.slice(0, 15)) total = (total + Number(d)) * 2;
  const result = (12 - (total % 11)) % 11;
  return digits[15] === (result === 10 ? 'X' : String(result));
}

function parseAuthor(text: string): BioimageioAuthor {
  const [name, affiliation, orcid] = text.split(';').map((s) => s.trim());
  if (!name) throw new UsageError(`--author needs a name: "Name[;affiliation[;orcid]]", got '${text}'`);
  if (orcid && !(/^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$/.test(orcid) && orcidChecksumValid(orcid))) throw new UsageError(`--author: '${orcid}' is not a valid ORCID iD (0000-0000-0000-000X, with its check digit)`);
  return { name, ...(affiliation ? { affiliation } : {}), ...(orcid ? { orcid } : {}) };
}

/** The first training input still readable as an image of the model's dimensionality, or null. */
async function firstTrainingImage(manifest: ModelManifest): Promise<(Volume & { name: string }) | null> {
  for (const input of manifest.training.inputs.slice(0, 5)) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input) || !(await exists(input))) continue;
    try {
      const volume = await readImage(input);
      if (volume.shape.length === manifest.network.dims) return { ...volume, name: input };
    } catch {
      // Not an image we can read (a Zarr store, a moved file): try the next one.
    }
  }
  return null;
}

async function writeOut(file: string, bytes: Uint8Array, overwrite: boolean): Promise<void> {
  const resolved = path.resolve(file);
  if (!overwrite && (await exists(resolved))) throw new OutputError(file, 'exists already; pass --overwrite to replace it');
  await writeFilesAtomically(path.dirname(resolved), { [path.basename(resolved)]: bytes });
}

export async function runExport(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      format: { type: 'string', default: 'onnx' },
      out: { type: 'string' },
      author: { type: 'string', multiple: true },
      license: { type: 'string' },
      name: { type: 'string' },
      sample: { type: 'string' },
      overwrite: { type: 'boolean', default: false },
    },
    true,
  );
  if (values.help) {
    process.stdout.write(EXPORT_HELP + '\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 1) throw new UsageError(`export takes one model folder, got ${positionals.length} (blindspot export --help)`);
  const modelDir = positionals[0];
  const format = choice('format', values.format, ['onnx', 'bioimageio'] as const) ?? 'onnx';
  const out = values.out;
  if (format === 'bioimageio' && out === undefined) throw new UsageError('--format bioimageio needs --out <name>.zip');
  if (format === 'bioimageio' && !/\.zip$/i.test(out!)) throw new UsageError(`--out of a bioimage.io package must end in .zip, got '${out}'`);
  const bioimageioOnly = (['author', 'license', 'name', 'sample'] as const).filter((k) => values[k] !== undefined);
  if (format !== 'bioimageio' && bioimageioOnly.length > 0) throw new UsageError(`--${bioimageioOnly[0]} applies to --format bioimageio only`);
  const authors = (values.author ?? []).map(parseAuthor);
  if (format === 'bioimageio' && authors.length === 0) throw new UsageError('--format bioimageio needs at least one --author "Name[;affiliation[;orcid]]"');
  const manifest = await readManifest(modelDir);
  // The model folder and the sample are only read: --out is compared with them by real location
  // (links followed), before anything is computed. Without --out, model.onnx is written there on purpose.
  if (out !== undefined) {
    await assertOutputOutsideInputs(out, [modelDir, ...(values.sample !== undefined ? [values.sample] : [])], { what: '--out', refuseContaining: false });
  }
  const { reporter } = await setUp(values);

  if (format === 'onnx' && out === undefined) {
    const written = await writeOnnxToModelFolder(modelDir);
    for (const w of written.info.warnings) reporter.log(`warning: ${w}`);
    reporter.event('exported', { format, file: path.join(modelDir, MODEL_ONNX), ...written.info });
    reporter.log(`wrote ${path.join(modelDir, MODEL_ONNX)} (sha256 ${written.info.sha256.slice(0, 12)}...) and its record in blindspot.json`);
    return ExitCode.ok;
  }
  if (format === 'onnx') {
    const onnx = await onnxForModelFolder(modelDir);
    for (const w of onnx.info.warnings) reporter.log(`warning: ${w}`);
    await writeOut(out!, onnx.bytes, values.overwrite === true);
    reporter.event('exported', { format, file: out, source: onnx.source, ...onnx.info });
    reporter.log(`wrote ${out} (${onnx.source === 'file' ? `the folder's ${MODEL_ONNX}` : 'exported from the tfjs weights'}, ${(onnx.bytes.length / 2 ** 20).toFixed(2)} MiB)`);
    return ExitCode.ok;
  }

  let sample: (Volume & { name: string }) | undefined;
  if (values.sample !== undefined) {
    sample = { ...(await readImage(values.sample)), name: values.sample };
  } else {
    sample = (await firstTrainingImage(manifest)) ?? undefined;
  }
  const { model } = await loadModelFolder(modelDir);
  try {
    const pkg = await bioimageioPackage(model, manifest, { authors, license: values.license, name: values.name, sample });
    for (const w of pkg.warnings) reporter.log(`warning: ${w}`);
    await writeOut(out!, pkg.zip, values.overwrite === true);
    reporter.event('exported', { format, file: out, files: Object.keys(pkg.files), warnings: pkg.warnings });
    reporter.log(`wrote ${out}: bioimage.io ${String(pkg.rdf['format_version'])} package (${Object.keys(pkg.files).join(', ')})`);
  } finally {
    model.dispose();
  }
  return ExitCode.ok;
}

