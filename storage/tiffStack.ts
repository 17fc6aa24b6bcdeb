/**
 * A TIFF (classic or BigTIFF, stripped or tiled, one page or many) as a chunked array read by
 * random access: geotiff reads only the byte ranges of the strips or tiles a chunk needs, so a stack
 * larger than memory streams. Which page is which slice comes from the metadata (storage/tiff.ts
 * tiffPlaneLayout): an ImageJ hyperstack description or OME-XML gives channels, slices and time
 * points, the page order and the voxel size; one channel and one time point are chosen (`channel`,
 * `time`, required where there are several). Without such metadata, full-resolution pages are Z
 * (reduced-resolution subfiles are skipped) at unit scale. Z of one slice is YX. A chunk is one
 * page high in Z and covers whole tiles or strips in YX.
 */
import { fromFile, type GeoTIFF, type GeoTIFFImage } from 'geotiff';
import { InputError } from '../core/errors.js';
import type { ArrayInfo, Axis, ChunkedArrayReader } from './chunked.js';
import { formatNames, sampleTypeOf } from './tiff.js';
import { tiffPlaneLayout, tiffStackPages, type TiffPlaneChoice } from './tiffLayout.js';

/** Rows (and columns) per chunk: whole tiles, or whole strips grouped to at least 64 rows. */
function blockShape(page: GeoTIFFImage): [number, number] {
  const height = page.getHeight();
  const width = page.getWidth();
  if (page.isTiled) return [Math.min(page.getTileHeight(), height), Math.min(page.getTileWidth(), width)];
  const rowsPerStrip = Math.min(Number(page.fileDirectory.RowsPerStrip ?? height), height);
  const rows = Math.min(height, rowsPerStrip * Math.max(1, Math.ceil(64 / rowsPerStrip)));
  return [rows, width];
}

export async function openTiffStack(file: string, choice: TiffPlaneChoice = {}): Promise<ChunkedArrayReader> {
  let tiff: GeoTIFF;
  const all: GeoTIFFImage[] = [];
  try {
    tiff = await fromFile(file);
    const count = await tiff.getImageCount();
    for (let i = 0; i < count; i++) all.push(await tiff.getImage(i));
  } catch (err) {
    throw new InputError(file, `is not a readable TIFF (corrupt or truncated): ${(err as Error).message}`, { cause: err });
  }
  try {
    return stackReader(file, tiff, all, choice);
  } catch (err) {
    await tiff.close();
    throw err;
  }
}

/** The reader of the chosen pages of `all` (every page in the file's IFD chain). */
function stackReader(file: string, tiff: GeoTIFF, all: GeoTIFFImage[], choice: TiffPlaneChoice): ChunkedArrayReader {
  const layout = tiffPlaneLayout(file, all);
  const pageIndex = tiffStackPages(file, layout, choice);
  const pages = pageIndex.map((i) => all[i]);
  const first = pages[0];
  const width = first.getWidth();
  const height = first.getHeight();
  if (!(Number.isSafeInteger(width) && width >= 1 && Number.isSafeInteger(height) && height >= 1)) {
    throw new InputError(file, `its first page is ${width}x${height} pixels: zero or invalid width or height`);
  }
  const bits = Number(first.getBitsPerSample(0));
  const format = Number(first.getSampleFormat(0) ?? 1);
  const dtype = sampleTypeOf(bits, format);
  if (!dtype) {
    throw new InputError(file, `unsupported TIFF sample type: ${bits}-bit ${formatNames[format] ?? `format ${format}`}; supported are 8/16-bit unsigned, 8/16/32-bit signed, 16/32/64-bit float`);
  }
  if (first.getSamplesPerPixel() !== 1) {
    throw new InputError(file, `has ${first.getSamplesPerPixel()} samples per pixel (RGB or multi-channel); streaming reads one channel: convert it to a single-channel stack or an OME-Zarr with a channel axis`);
  }
  pages.forEach((page, z) => {
    if (page.getWidth() !== width || page.getHeight() !== height || page.getSamplesPerPixel() !== 1) {
      throw new InputError(file, `page ${pageIndex[z]} is ${page.getWidth()}x${page.getHeight()} but page ${pageIndex[0]} is ${width}x${height}; all pages of a stack must match`);
    }
    if (Number(page.getBitsPerSample(0)) !== bits || Number(page.getSampleFormat(0) ?? 1) !== format) {
      throw new InputError(file, `page ${pageIndex[z]} has a different sample type from page ${pageIndex[0]}; all pages of a stack must match`);
    }
  });
  const [blockRows, blockCols] = blockShape(first);
  const is3D = pages.length > 1;
  const spatial = is3D ? [0, 1, 2] : [1, 2]; // of layout's [z, y, x]
  const axes: Axis[] = spatial.map((k) => ({ name: 'zyx'[k], type: 'space', ...(layout.units[k] ? { unit: layout.units[k] } : {}) }));
  const info: ArrayInfo = {
    url: file,
    shape: is3D ? [pages.length, height, width] : [height, width],
    chunks: is3D ? [1, blockRows, blockCols] : [blockRows, blockCols],
    dtype,
    axes,
    placement: { scale: spatial.map((k) => layout.scale[k]), translation: spatial.map((k) => layout.translation[k]) },
    ...(layout.sizes.c > 1 || layout.sizes.t > 1
      ? { attributes: { tiffMetadata: layout.source, planes: { ...layout.sizes }, selection: { channel: choice.channel ?? null, time: choice.time ?? null } } }
      : {}),
  };

  return {
    info,
    async readChunk(index) {
      const [z, cy, cx] = is3D ? index : [0, ...index];
      if (z < 0 || z >= pages.length || cy < 0 || cx < 0 || cy * blockRows >= height || cx * blockCols >= width) {
        throw new InputError(file, `chunk [${index.join(', ')}] is outside the ${info.shape.join('x')} stack`);
      }
      const y0 = cy * blockRows;
      const x0 = cx * blockCols;
      const y1 = Math.min(height, y0 + blockRows);
      const x1 = Math.min(width, x0 + blockCols);
      let raster: ArrayLike<number>;
      try {
        raster = (await pages[z].readRasters({ window: [x0, y0, x1, y1], interleave: true })) as unknown as ArrayLike<number>;
      } catch (err) {
        throw new InputError(file, `page ${pageIndex[z]} rows ${y0}-${y1} cannot be decoded (corrupt or truncated): ${(err as Error).message}`, { cause: err });
      }
      const w = x1 - x0;
      const out = new Float32Array(blockRows * blockCols); // edge chunks padded with 0
      for (let y = 0; y < y1 - y0; y++) for (let x = 0; x < w; x++) out[y * blockCols + x] = raster[y * w + x];
      return out;
    },
    async close() {
      await tiff.close();
    },
  };
}
