import { promises as fsp, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, OutputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { sampleTypeRange, voxelCount, type SampleType, type Shape, type Volume } from '../core/volume.js';
import { expandInputs, readImage, supportedExtensions, writeImage } from '../storage/index.js';
import { encodeTiffPages } from '../storage/tiff.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sharedData = path.join(path.resolve(repoRoot, '../shared'), 'data');
const haveShared = existsSync(sharedData);
if (!haveShared) console.warn(`test/formats: ${sharedData} is absent; skipping the tests on real data files`);

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'blindspot-formats-'));
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** Random values exactly representable in `sampleType` and in float32, including both range ends. */
function randomVolume(shape: Shape, sampleType: SampleType, seed: number): Volume {
  const rng = new Rng(seed);
  const n = voxelCount(shape);
  const data = new Float32Array(n);
  const [lo, hi] = sampleType === 'int32' ? [-16777216, 16777216] : sampleTypeRange(sampleType);
  for (let i = 0; i < n; i++) {
    data[i] = Number.isFinite(lo) ? lo + rng.int(hi - lo + 1) : Math.fround(rng.normal() * 1000);
  }
  if (Number.isFinite(lo)) {
    data[0] = lo;
    data[n - 1] = hi;
  }
  return { data, shape, sampleType };
}

async function expectInputError(promise: Promise<unknown>, file: string, pattern: RegExp): Promise<InputError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(InputError);
  const inputError = error as InputError;
  expect(inputError.message).toContain(file);
  expect(inputError.message).toMatch(pattern);
  return inputError;
}

describe('round trips: write then read gives identical values, shape and sample type', () => {
  const cases: [ext: string, types: SampleType[], threeD: boolean][] = [
    ['.png', ['uint8', 'uint16'], false],
    ['.tif', ['uint8', 'uint16', 'int16', 'int32', 'float32', 'float64'], true],
    ['.tiff', ['uint16'], true],
    ['.npy', ['uint8', 'uint16', 'int16', 'int32', 'float32', 'float64'], true],
    ['.fits', ['uint8', 'uint16', 'int16', 'int32', 'float32', 'float64'], true],
    ['.fits.gz', ['uint16', 'float32'], true],
    ['.fit', ['int16'], false],
  ];
  let seed = 1;
  for (const [ext, types, threeD] of cases) {
    for (const sampleType of types) {
      const shapes: Shape[] = threeD ? [[13, 7], [3, 9, 5]] : [[13, 7]];
      for (const shape of shapes) {
        const caseSeed = seed++;
        it(`${ext} ${sampleType} [${shape.join(', ')}]`, async () => {
          const file = path.join(dir, `rt-${caseSeed}${ext}`);
          const volume = randomVolume(shape, sampleType, caseSeed);
          await writeImage(file, volume);
          const back = await readImage(file);
          expect(back.shape).toEqual(shape);
          expect(back.sampleType).toBe(sampleType);
          expect(back.data).toEqual(volume.data);
        });
      }
    }
  }

  it('a larger uint16 image with smooth and noisy rows exercises every PNG row filter', async () => {
    const shape: Shape = [64, 300];
    const volume = randomVolume(shape, 'uint16', 99);
    for (let x = 0; x < 300; x++) volume.data[5 * 300 + x] = x * 200; // a smooth ramp row
    const file = path.join(dir, 'filters.png');
    await writeImage(file, volume);
    expect((await readImage(file)).data).toEqual(volume.data);
  });

  it('a float32 TIFF stack with several strips per page', async () => {
    const volume = randomVolume([2, 70, 1500], 'float32', 98); // 6000-byte rows -> 43-row strips
    const file = path.join(dir, 'strips.tif');
    await writeImage(file, volume);
    const back = await readImage(file);
    expect(back.shape).toEqual([2, 70, 1500]);
    let mismatches = 0;
    for (let i = 0; i < volume.data.length; i++) if (back.data[i] !== volume.data[i]) mismatches++;
    expect(mismatches).toBe(0);
  });

  it('supportedExtensions lists every readable extension', () => {
    expect([...supportedExtensions].sort()).toEqual(['.fit', '.fit.gz', '.fits', '.fits.gz', '.npy', '.png', '.tif', '.tiff']);
  });
});

describe('files we write open in an independent reader (sharp / libvips)', () => {
  it('8- and 16-bit PNG and a 3-page TIFF', async () => {
    const grey8 = randomVolume([10, 12], 'uint8', 5);
    const png8 = path.join(dir, 'sharp8.png');
    await writeImage(png8, grey8);
    const meta8 = await sharp(png8).metadata();
    expect([meta8.width, meta8.height, meta8.channels, meta8.depth]).toEqual([12, 10, 1, 'uchar']);
    const raw8 = await sharp(png8).extractChannel(0).raw().toBuffer();
    expect(Float32Array.from(raw8)).toEqual(grey8.data);

    const png16 = path.join(dir, 'sharp16.png');
    await writeImage(png16, randomVolume([10, 12], 'uint16', 6));
    const meta16 = await sharp(png16).metadata();
    expect([meta16.channels, meta16.depth, meta16.bitsPerSample]).toEqual([1, 'ushort', 16]);

    const stack = randomVolume([3, 8, 6], 'uint8', 7);
    const tif = path.join(dir, 'sharp-stack.tif');
    await writeImage(tif, stack);
    const metaTif = await sharp(tif).metadata();
    expect([metaTif.pages, metaTif.width, metaTif.height]).toEqual([3, 6, 8]);
    const page2 = await sharp(tif, { page: 2 }).extractChannel(0).raw().toBuffer();
    expect(Float32Array.from(page2)).toEqual(stack.data.subarray(2 * 48));
  });

  it('reads PNGs that sharp writes: interlaced, palette, and grey stored as RGB', async () => {
    const rng = new Rng(11);
    const grey = Buffer.alloc(20 * 17);
    for (let i = 0; i < grey.length; i++) grey[i] = 16 * rng.int(16); // few levels so a palette holds them exactly
    const input = sharp(grey, { raw: { width: 17, height: 20, channels: 1 } });
    const variants: [string, sharp.Sharp][] = [
      ['interlaced.png', input.clone().png({ progressive: true })],
      ['palette.png', input.clone().png({ palette: true, colours: 256, dither: 0 })],
      ['grey-as-rgb.png', input.clone().toColourspace('srgb').png()],
    ];
    for (const [name, pipeline] of variants) {
      const file = path.join(dir, name);
      await pipeline.toFile(file);
      const expected = await sharp(file).extractChannel(0).raw().toBuffer();
      const volume = await readImage(file);
      expect(volume.shape, name).toEqual([20, 17]);
      expect(volume.sampleType, name).toBe('uint8');
      expect(volume.data, name).toEqual(Float32Array.from(expected));
    }
  });
});

describe.skipIf(!haveShared)('shared data files', () => {
  it('Set12/01.png is 256x256 uint8 and decodes as sharp decodes it', async () => {
    const file = path.join(sharedData, 'Set12/01.png');
    const volume = await readImage(file);
    expect(volume.shape).toEqual([256, 256]);
    expect(volume.sampleType).toBe('uint8');
    const bySharp = await sharp(file).extractChannel(0).raw().toBuffer();
    expect(volume.data).toEqual(Float32Array.from(bySharp));
  });

  it('the Convallaria TIFF is 1024x1024 uint16 with the documented value range 324..6184', async () => {
    const [file] = await expandInputs([path.join(sharedData, 'Convallaria/*.tif')]);
    const volume = await readImage(file);
    expect(volume.shape).toEqual([1024, 1024]);
    expect(volume.sampleType).toBe('uint16');
    let min = Infinity;
    let max = -Infinity;
    for (const v of volume.data) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect([min, max]).toEqual([324, 6184]);
  });

  it('the HorseHead FITS plate is 893 rows x 891 columns, BITPIX 16, values 3759..22918', async () => {
    const volume = await readImage(path.join(sharedData, 'astronomy_fits/HorseHead.fits.gz'));
    expect(volume.shape).toEqual([893, 891]);
    expect(volume.sampleType).toBe('int16');
    let min = Infinity;
    let max = -Infinity;
    for (const v of volume.data) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect([min, max]).toEqual([3759, 22918]);
  });

  it('a colour photograph (Kodak) is refused as not single-channel', async () => {
    const file = path.join(sharedData, 'Kodak24/kodim01.png');
    await expectInputError(readImage(file), file, /single-channel/);
  });
});

describe('bad inputs give an InputError naming the file and the problem', () => {
  it('missing file, unsupported extension, empty file, folder', async () => {
    const missing = path.join(dir, 'nope.png');
    await expectInputError(readImage(missing), missing, /does not exist/);
    const jpg = path.join(dir, 'photo.jpg');
    await fsp.writeFile(jpg, 'x');
    await expectInputError(readImage(jpg), jpg, /unsupported file type.*\.png/);
    const empty = path.join(dir, 'empty.tif');
    await fsp.writeFile(empty, '');
    await expectInputError(readImage(empty), empty, /empty/);
    const folder = path.join(dir, 'folder.npy');
    await fsp.mkdir(folder);
    await expectInputError(readImage(folder), folder, /folder/);
  });

  it('a text file renamed .tif, and a PNG renamed .tif', async () => {
    const text = path.join(dir, 'notes.tif');
    await fsp.writeFile(text, 'these are my notes, not an image\n');
    await expectInputError(readImage(text), text, /not a valid TIFF.*"these ar"/);
    const png = path.join(dir, 'real-png.png');
    await writeImage(png, randomVolume([4, 4], 'uint8', 3));
    const renamed = path.join(dir, 'real-png.tif');
    await fsp.copyFile(png, renamed);
    await expectInputError(readImage(renamed), renamed, /content is PNG/);
  });

  it('truncated and corrupted PNG', async () => {
    const good = path.join(dir, 'good.png');
    await writeImage(good, randomVolume([40, 40], 'uint8', 4));
    const bytes = await fsp.readFile(good);
    const truncated = path.join(dir, 'truncated.png');
    await fsp.writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await expectInputError(readImage(truncated), truncated, /truncated/);
    const corrupt = path.join(dir, 'corrupt.png');
    const flipped = Buffer.from(bytes);
    flipped[60] ^= 0xff; // inside IDAT
    await fsp.writeFile(corrupt, flipped);
    await expectInputError(readImage(corrupt), corrupt, /CRC|corrupt/);
  });

  it('truncated TIFF, FITS and npy; corrupt gzip', async () => {
    for (const ext of ['.tif', '.fits', '.npy']) {
      const good = path.join(dir, `whole${ext}`);
      await writeImage(good, randomVolume([64, 64], 'uint16', 8));
      const bytes = await fsp.readFile(good);
      const cut = path.join(dir, `cut${ext}`);
      // TIFF keeps its IFDs at the end: cut those off; FITS/npy: cut into the pixel data.
      await fsp.writeFile(cut, bytes.subarray(0, ext === '.tif' ? bytes.length - 100 : bytes.length - 3000));
      await expectInputError(readImage(cut), cut, /truncated|corrupt/);
    }
    const gz = path.join(dir, 'bad.fits.gz');
    await fsp.writeFile(gz, Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), Buffer.alloc(30, 7)]));
    await expectInputError(readImage(gz), gz, /gzip/);
  });

  it('NaN and Inf: says how many and where the first is', async () => {
    const data = new Float32Array(12).fill(1);
    data[6] = NaN; // [y=1, x=2] of a 3x4 image
    data[9] = NaN;
    data[11] = Infinity;
    for (const ext of ['.npy', '.tif', '.fits']) {
      const file = path.join(dir, `nan${ext}`);
      await writeImage(file, { data, shape: [3, 4], sampleType: 'float32' });
      const error = await expectInputError(readImage(file), file, /2 NaN and 1 infinite/);
      expect(error.message).toContain('[y=1, x=2]');
    }
    const stack = new Float32Array(2 * 3 * 4);
    stack[13] = -Infinity;
    const file3d = path.join(dir, 'inf3d.npy');
    await writeImage(file3d, { data: stack, shape: [2, 3, 4], sampleType: 'float64' });
    await expectInputError(readImage(file3d), file3d, /1 infinite.*\[z=1, y=0, x=1\]/);
  });

  /** A hand-built .npy with any header, to reach cases our writer never makes. */
  async function writeRawNpy(name: string, header: string, dataBytes: number): Promise<string> {
    const dict = header.padEnd(64 - 10 - 1) + '\n';
    const bytes = Buffer.concat([Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, dict.length, 0]), Buffer.from(dict, 'latin1'), Buffer.alloc(dataBytes)]);
    const file = path.join(dir, name);
    await fsp.writeFile(file, bytes);
    return file;
  }

  it('npy: unsupported dtype, Fortran order, 4D and 1D', async () => {
    const u4 = await writeRawNpy('u4.npy', "{'descr': '<u4', 'fortran_order': False, 'shape': (2, 2), }", 16);
    await expectInputError(readImage(u4), u4, /unsupported dtype '<u4'/);
    const complex = await writeRawNpy('c8.npy', "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 2), }", 32);
    await expectInputError(readImage(complex), complex, /unsupported dtype/);
    const fortran = await writeRawNpy('f.npy', "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
    await expectInputError(readImage(fortran), fortran, /Fortran/);
    const fourD = await writeRawNpy('4d.npy', "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2, 2), }", 32);
    await expectInputError(readImage(fourD), fourD, /4 dimensions/);
    const oneD = await writeRawNpy('1d.npy', "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 16);
    await expectInputError(readImage(oneD), oneD, /1 dimensions/);
    // A big-endian array that NumPy could write is fine.
    const big = await writeRawNpy('big.npy', "{'descr': '>i2', 'fortran_order': False, 'shape': (1, 2), }", 0);
    await fsp.appendFile(big, Buffer.from([0xff, 0xfe, 0x01, 0x02]));
    expect(Array.from((await readImage(big)).data)).toEqual([-2, 258]);
  });

  it('multi-page TIFF with pages of different sizes', async () => {
    const file = path.join(dir, 'ragged.tif');
    const pages = [
      { samples: new Uint8Array(4 * 5), width: 5, height: 4 },
      { samples: new Uint8Array(3 * 5), width: 5, height: 3 },
    ];
    await fsp.writeFile(file, Buffer.concat(encodeTiffPages(file, pages, 'uint8')));
    await expectInputError(readImage(file), file, /page 1 is 5x3.*page 0 is 5x4/);
  });

  it('FITS with unsupported BITPIX and with 4 non-degenerate axes', async () => {
    const fitsWith = async (name: string, cards: string[]): Promise<string> => {
      const header = [...cards, 'END'].map((c) => c.padEnd(80)).join('').padEnd(2880);
      const file = path.join(dir, name);
      await fsp.writeFile(file, Buffer.concat([Buffer.from(header, 'latin1'), Buffer.alloc(2880 * 2)]));
      return file;
    };
    const card = (k: string, v: string): string => `${k.padEnd(8)}= ${v.padStart(20)}`;
    const bitpix64 = await fitsWith('b64.fits', [card('SIMPLE', 'T'), card('BITPIX', '64'), card('NAXIS', '2'), card('NAXIS1', '4'), card('NAXIS2', '4')]);
    await expectInputError(readImage(bitpix64), bitpix64, /BITPIX 64/);
    const fourAxes = await fitsWith('4d.fits', [
      card('SIMPLE', 'T'),
      card('BITPIX', '8'),
      card('NAXIS', '4'),
      ...['4', '4', '2', '2'].map((v, k) => card(`NAXIS${k + 1}`, v)),
    ]);
    await expectInputError(readImage(fourAxes), fourAxes, /4 axes/);
    // Degenerate trailing axes are dropped: NAXIS = 4 with lengths [4, 3, 1, 1] is a 3x4 image.
    const degenerate = await fitsWith('deg.fits', [
      card('SIMPLE', 'T'),
      card('BITPIX', '-32'),
      card('NAXIS', '4'),
      ...['4', '3', '1', '1'].map((v, k) => card(`NAXIS${k + 1}`, v)),
    ]);
    expect((await readImage(degenerate)).shape).toEqual([3, 4]);
  });

  it('RGB with differing channels is refused; RGB with identical channels gives one channel', async () => {
    const rgb = Buffer.alloc(6 * 5 * 3, 100);
    rgb[3 * 7 + 1] = 101;
    const colour = path.join(dir, 'colour.png');
    await sharp(rgb, { raw: { width: 6, height: 5, channels: 3 } }).png().toFile(colour);
    await expectInputError(readImage(colour), colour, /channels that differ \(first at \[y=1, x=1\]\).*single-channel/);
    const greyRgb = path.join(dir, 'grey-rgb.tif');
    await sharp(Buffer.alloc(6 * 5 * 3, 42), { raw: { width: 6, height: 5, channels: 3 } }).tiff({ compression: 'lzw' }).toFile(greyRgb);
    const volume = await readImage(greyRgb);
    expect(volume.shape).toEqual([5, 6]);
    expect(volume.data.every((v) => v === 42)).toBe(true);
  });
});

describe('writeImage', () => {
  it('refuses to overwrite unless asked, and leaves no temporary files', async () => {
    const sub = await fsp.mkdtemp(path.join(dir, 'overwrite-'));
    const file = path.join(sub, 'out.tif');
    await writeImage(file, randomVolume([5, 5], 'uint8', 21));
    const second = randomVolume([5, 5], 'uint8', 22);
    const error = await writeImage(file, second).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutputError);
    expect((error as OutputError).message).toContain(file);
    expect((await readImage(file)).data).not.toEqual(second.data);
    await writeImage(file, second, { overwrite: true });
    expect((await readImage(file)).data).toEqual(second.data);
    expect(await fsp.readdir(sub)).toEqual(['out.tif']);
  });

  it('rounds and clips to the integer range of the chosen sample type', async () => {
    const data = Float32Array.of(-5, 0.4, 0.5, 1.49, 254.6, 300, 1e9, -0.6);
    const file8 = path.join(dir, 'clip.png');
    await writeImage(file8, { data, shape: [2, 4], sampleType: 'float32' }, { sampleType: 'uint8' });
    const back8 = await readImage(file8);
    expect(back8.sampleType).toBe('uint8');
    expect(Array.from(back8.data)).toEqual([0, 0, 1, 1, 255, 255, 255, 0]);
    const file16 = path.join(dir, 'clip.npy');
    await writeImage(file16, { data: Float32Array.of(-1, 65535.4, 70000, 1234.5), shape: [2, 2], sampleType: 'float32' }, { sampleType: 'int16' });
    expect(Array.from((await readImage(file16)).data)).toEqual([-1, 32767, 32767, 1235]);
  });

  it('refuses float32 or 3D to PNG, NaN to an integer type, and a shape that does not fit the data', async () => {
    const volume = randomVolume([4, 4], 'float32', 31);
    const png = path.join(dir, 'float.png');
    await expect(writeImage(png, volume)).rejects.toThrow(/PNG can store only uint8 or uint16, not float32/);
    await expect(writeImage(png, randomVolume([2, 4, 4], 'uint8', 32))).rejects.toThrow(/3D/);
    const nan = Float32Array.of(1, NaN, 3, 4);
    await expect(writeImage(path.join(dir, 'nan.tif'), { data: nan, shape: [2, 2], sampleType: 'uint16' })).rejects.toBeInstanceOf(OutputError);
    await expect(writeImage(path.join(dir, 'shape.npy'), { data: nan, shape: [3, 2], sampleType: 'float32' })).rejects.toThrow(/holds 6 values/);
    expect(existsSync(png)).toBe(false);
  });

  it('writes gzip-compressed FITS for .fits.gz', async () => {
    const file = path.join(dir, 'zipped.fits.gz');
    await writeImage(file, randomVolume([6, 6], 'int16', 41));
    const unzipped = zlib.gunzipSync(await fsp.readFile(file));
    expect(unzipped.subarray(0, 30).toString('latin1')).toBe('SIMPLE  =                    T');
    expect(unzipped.length % 2880).toBe(0);
  });
});

describe('expandInputs', () => {
  it('expands folders and globs in natural order, keeps argument order, skips hidden and unsupported files', async () => {
    const frames = await fsp.mkdtemp(path.join(dir, 'frames-'));
    for (const name of ['f10.png', 'f2.png', 'f1.png', 'g.tif', '.hidden.png', 'notes.txt', 'cube.fits.gz']) {
      await fsp.writeFile(path.join(frames, name), 'x');
    }
    await fsp.mkdir(path.join(frames, 'sub.png'));
    expect(await expandInputs([frames])).toEqual(['cube.fits.gz', 'f1.png', 'f2.png', 'f10.png', 'g.tif'].map((n) => path.join(frames, n)));
    expect(await expandInputs([path.join(frames, 'g.tif'), path.join(frames, 'f?.png'), path.join(frames, 'f*')])).toEqual(
      ['g.tif', 'f1.png', 'f2.png', 'f10.png'].map((n) => path.join(frames, n)),
    );
    const missing = path.join(frames, 'absent.png');
    await expectInputError(expandInputs([missing]), missing, /does not exist/);
    const noMatch = path.join(frames, 'z*.png');
    await expectInputError(expandInputs([noMatch]), noMatch, /matches no supported image/);
    const empty = await fsp.mkdtemp(path.join(dir, 'empty-'));
    await expectInputError(expandInputs([empty]), empty, /no supported images/);
    const wildDir = path.join(frames, '*', 'a.png');
    await expectInputError(expandInputs([wildDir]), wildDir, /last path segment/);
  });
});
