/**
 * Outputs keep their input's metadata: every FITS header card (WCS, instrument, dates; BITPIX, BZERO
 * and BSCALE rewritten for the output type, a HISTORY card saying what blindspot did), tested on the
 * real Horsehead DSS plate in ../shared/data; TIFF resolution tags and ImageJ / OME-XML descriptions
 * (the OME Pixels Type rewritten). Round trips through the CLI, in this process.
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fromArrayBuffer } from 'geotiff';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PACKAGE_ROOT } from '../../core/version.js';
import { readImage, writeImage } from '../../storage/index.js';
import { outputDescription } from '../../storage/tiff.js';
import { cli, expectOutcome, hashAll, plantSecret } from './harness.js';
import { fitsWithCard, makeFixtures, type Fixtures } from './fixtures.js';

const PLATE = path.join(PACKAGE_ROOT, '..', 'shared', 'data', 'astronomy_fits', 'HorseHead.fits.gz');
let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-metadata-${process.pid}`);

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
});
afterAll(async () => {
  restoreEnv();
  await fs.rm(root, { recursive: true, force: true });
});

/** The primary header's cards (80 characters each, END excluded). */
function fitsCards(bytes: Uint8Array): string[] {
  const text = Buffer.from(bytes).toString('latin1');
  const cards: string[] = [];
  for (let pos = 0; pos + 80 <= text.length; pos += 80) {
    const card = text.slice(pos, pos + 80);
    if (card.startsWith('END ')) return cards;
    cards.push(card);
  }
  throw new Error('no END');
}

const STRUCTURAL = /^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|BZERO|BSCALE|BLANK|DATAMIN|DATAMAX|CHECKSUM|DATASUM)$/;
const keyword = (card: string): string => card.slice(0, 8).trimEnd();

if (!existsSync(PLATE)) console.log(`metadata: the FITS plate case is skipped: ${PLATE} is absent (the shared data folder)`);

describe('FITS outputs keep every header card', () => {
  test.skipIf(!existsSync(PLATE))('the Horsehead DSS plate: every card kept in order (WCS too), BITPIX rewritten, a HISTORY card added', async () => {
    const input = path.join(root, 'HorseHead.fits');
    // The plate's whole primary header with its first 128 x 128 samples (NAXIS1/2 rewritten): every
    // card is the plate's, and the test stays fast.
    const plate = new Uint8Array(zlib.gunzipSync(await fs.readFile(PLATE)));
    const headerBytes = Math.ceil((fitsCards(plate).length + 1) * 80 / 2880) * 2880;
    const cropped = new Uint8Array(headerBytes + Math.ceil((128 * 128 * 2) / 2880) * 2880);
    cropped.set(fitsWithCard(fitsWithCard(plate.subarray(0, headerBytes), 'NAXIS1', '128'), 'NAXIS2', '128'));
    cropped.set(plate.subarray(headerBytes, headerBytes + 128 * 128 * 2), headerBytes);
    await fs.writeFile(input, cropped);
    const inputCards = fitsCards(await fs.readFile(input));
    expect(inputCards.length).toBeGreaterThan(100);
    const kept = inputCards.filter((c) => !STRUCTURAL.test(keyword(c)));
    expect(kept.map(keyword)).toEqual(expect.arrayContaining(['INSTRUME', 'DATE-OBS', 'EXPOSURE', 'EQUINOX', 'WCSAXES', 'CTYPE1', 'CRPIX1', 'RADESYS']));
    const inputs = await hashAll([input]);
    for (const [dtype, bitpix] of [['float32', '-32'], ['input', '16']] as const) {
      const out = path.join(root, `fits-${dtype}`);
      const r = await cli(['denoise', f.model, input, '--out', out, '--dtype', dtype, '--backend', 'cpu'], {});
      await expectOutcome(r, { code: 0, inputs, maxMs: 120_000 });
      const outputCards = fitsCards(await fs.readFile(path.join(out, 'HorseHead.fits')));
      const value = (k: string): string | undefined => outputCards.find((c) => keyword(c) === k)?.slice(10, 30).trim();
      expect(value('BITPIX')).toBe(bitpix);
      // Every non-structural card, byte for byte and in order, then what blindspot did.
      const outputKept = outputCards.filter((c) => !STRUCTURAL.test(keyword(c)) && !/^HISTORY blindspot/.test(c));
      expect(outputKept).toEqual(kept);
      expect(outputCards.some((c) => /^HISTORY blindspot .*denoise: n2v model model, input HorseHead\.fits/.test(c))).toBe(true);
      // The pixels read back with the input's shape; float output has no BZERO/BSCALE.
      const back = await readImage(path.join(out, 'HorseHead.fits'));
      expect(back.shape).toEqual([128, 128]);
      if (dtype === 'float32') expect(value('BZERO')).toBeUndefined();
    }
  }, 240_000);
});

describe('TIFF outputs keep resolution and description', () => {
  const imagej = 'ImageJ=1.54f\nimages=3\nslices=3\nunit=micron\nspacing=0.5\nloop=false\n';
  test('ImageJ stack: XResolution, YResolution, ResolutionUnit and the description survive a denoise', async () => {
    const input = path.join(root, 'tiff-in', 'stack.tif');
    await fs.mkdir(path.dirname(input), { recursive: true });
    const data = Float32Array.from({ length: 3 * 32 * 32 }, (_, i) => 90 + (i % 37));
    await writeImage(input, { data, shape: [3, 32, 32], sampleType: 'uint16', metadata: { tiff: { xResolution: [4, 1], yResolution: [8, 2], resolutionUnit: 3, description: imagej } } });
    const inputs = await hashAll([input]);
    const out = path.join(root, 'tiff-out');
    const r = await cli(['denoise', f.model3d, input, '--out', out, '--backend', 'cpu']);
    await expectOutcome(r, { code: 0, inputs, maxMs: 60_000 });
    const bytes = await fs.readFile(path.join(out, 'stack.tif'));
    const tiff = await fromArrayBuffer(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    const page = await tiff.getImage(0);
    const dir = page.fileDirectory as Record<string, unknown>;
    expect(Array.from(dir.XResolution as number[])).toEqual([4, 1]);
    expect(Array.from(dir.YResolution as number[])).toEqual([8, 2]);
    expect(dir.ResolutionUnit).toBe(3);
    expect(String(dir.ImageDescription).replace(/\0+$/, '')).toBe(imagej);
    expect(Array.from(dir.SampleFormat as number[])).toEqual([3]); // float32 output
    expect((await readImage(path.join(out, 'stack.tif'))).metadata?.tiff?.xResolution).toEqual([4, 1]);
  });
  test('an OME-TIFF description gets the output Pixels Type and byte order, the rest kept', () => {
    const ome = '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" BigEndian="true" SizeX="32" SizeY="32" SizeZ="3" SizeC="1" SizeT="1" PhysicalSizeX="0.25"><TiffData/></Pixels></Image></OME>';
    const out = outputDescription(ome, 'float32');
    expect(out).toContain('Type="float"');
    expect(out).toContain('BigEndian="false"');
    expect(out).toContain('PhysicalSizeX="0.25"');
    expect(outputDescription(ome, 'uint16')).toContain('Type="uint16"');
    expect(outputDescription(imagej, 'float32')).toBe(imagej);
  });
  test('a plain float TIFF without metadata gets none invented', async () => {
    const out = path.join(root, 'plain-out');
    const r = await cli(['denoise', f.model, f.tif, '--out', out, '--backend', 'cpu']);
    await expectOutcome(r, { code: 0 });
    const bytes = await fs.readFile(path.join(out, 'img.tif'));
    const page = await (await fromArrayBuffer(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer)).getImage(0);
    expect((page.fileDirectory as Record<string, unknown>).XResolution).toBeUndefined();
  });
});
