/**
 * TIFF plane layout: which page holds which channel, slice and time point, and the voxel size, from an
 * ImageJ hyperstack description or OME-XML in the first page's ImageDescription. Without either,
 * every full-resolution page is one z and the voxel is 1 x 1 x 1 with no unit. Read by tiffStack.ts
 * (streamed stacks); pages are decoded by tiff.ts.
 */
import path from 'node:path';
import { InputError } from '../core/errors.js';

export interface TiffPlaneSizes {
  readonly c: number;
  readonly z: number;
  readonly t: number;
}

export interface TiffPlaneLayout {
  /** What described the pages: nothing, an ImageJ description, or OME-XML. */
  readonly source: 'plain' | 'imagej' | 'ome';
  readonly sizes: TiffPlaneSizes;
  /** Index in the file's IFD chain of plane (c, z, t); -1 where the metadata maps no page to it. */
  pageOf(c: number, z: number, t: number): number;
  /** Voxel size [z, y, x] in `units` (1 where the file gives none). */
  readonly scale: readonly [number, number, number];
  /** Position of voxel [0, 0, 0] (ImageJ's origin), in `units`. */
  readonly translation: readonly [number, number, number];
  /** NGFF unit names [z, y, x]; undefined where the size is in voxels or in a unit NGFF does not name. */
  readonly units: readonly [string | undefined, string | undefined, string | undefined];
}

export interface TiffPlaneChoice {
  channel?: number;
  time?: number;
}

/** The subset of a geotiff page the layout needs. */
interface TiffPage {
  readonly fileDirectory: Record<string, unknown>;
  getWidth(): number;
  getHeight(): number;
  getSamplesPerPixel(): number;
}

/** Length units as ImageJ, OME and people write them -> NGFF (UDUNITS-2) names. */
const lengthUnits: Record<string, string> = {
  micron: 'micrometer',
  microns: 'micrometer',
  um: 'micrometer',
  '\u00b5m': 'micrometer',
  '\u03bcm': 'micrometer',
  micrometer: 'micrometer',
  micrometre: 'micrometer',
  nm: 'nanometer',
  nanometer: 'nanometer',
  nanometre: 'nanometer',
  mm: 'millimeter',
  millimeter: 'millimeter',
  millimetre: 'millimeter',
  cm: 'centimeter',
  centimeter: 'centimeter',
  centimetre: 'centimeter',
  m: 'meter',
  meter: 'meter',
  metre: 'meter',
  km: 'kilometer',
  pm: 'picometer',
  '\u00c5': 'angstrom',
  '\u212b': 'angstrom',
  angstrom: 'angstrom',
  in: 'inch',
  inch: 'inch',
};

/** NGFF name of a length unit; undefined for pixels and for units NGFF has no name for. */
export function ngffLengthUnit(unit: string | undefined): string | undefined {
  if (unit === undefined) return undefined;
  return lengthUnits[unit.trim()] ?? lengthUnits[unit.trim().toLowerCase()];
}

/** Pages that are full-resolution images (reduced-resolution copies, NewSubfileType bit 0, are not planes). */
function fullResolutionPages(pages: readonly TiffPage[]): number[] {
  const full = pages.flatMap((p, i) => (Number(p.fileDirectory.NewSubfileType ?? 0) & 1 ? [] : [i]));
  return full.length > 0 ? full : pages.map((_, i) => i);
}

function descriptionOf(page: TiffPage): string {
  const value = page.fileDirectory.ImageDescription;
  return typeof value === 'string' ? value.replace(/\0+$/, '') : '';
}

/** A RATIONAL tag (geotiff: [numerator, denominator]) or a plain number; undefined when absent. */
function rationalTag(page: TiffPage, name: string): number | undefined {
  const value = page.fileDirectory[name] as ArrayLike<number> | number | undefined;
  if (value === undefined) return undefined;
  if (typeof value === 'number') return value;
  return value.length >= 2 ? value[0] / value[1] : value[0];
}

/** Voxel side from a resolution tag (pixels per unit). */
function sideFromResolution(file: string, page: TiffPage, name: 'XResolution' | 'YResolution'): number | undefined {
  const perUnit = rationalTag(page, name);
  if (perUnit === undefined) return undefined;
  if (!Number.isFinite(perUnit) || perUnit <= 0) throw new InputError(file, `has ${name} ${perUnit} pixels per unit; it must be a positive number`);
  return 1 / perUnit;
}

/** Plane order: C fastest, then Z, then T (ImageJ's hyperstack order). */
function czt(sizes: TiffPlaneSizes): (c: number, z: number, t: number) => number {
  return (c, z, t) => (t * sizes.z + z) * sizes.c + c;
}

export function tiffPlaneLayout(file: string, pages: readonly TiffPage[]): TiffPlaneLayout {
  const description = pages.length ? descriptionOf(pages[0]) : '';
  if (description.startsWith('ImageJ=')) return imageJLayout(file, pages, description);
  if (/^\s*</.test(description) && /<(?:[\w.-]+:)?OME[\s>]/.test(description)) return omeLayout(file, pages, description);
  const full = fullResolutionPages(pages);
  return {
    source: 'plain',
    sizes: { c: 1, z: full.length, t: 1 },
    pageOf: (c, z, t) => (c === 0 && t === 0 && z < full.length ? full[z] : -1),
    scale: [1, 1, 1],
    translation: [0, 0, 0],
    units: [undefined, undefined, undefined],
  };
}

function imageJLayout(file: string, pages: readonly TiffPage[], description: string): TiffPlaneLayout {
  const fields = new Map<string, string>();
  for (const line of description.split(/\r?\n/)) {
    const eq = line.indexOf('=');
    if (eq > 0) fields.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim().replace(/\\u([0-9a-fA-F]{4})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))));
  }
  const count = (key: string): number | undefined => {
    const text = fields.get(key);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new InputError(file, `has an ImageJ description with ${key}=${text}, not a positive whole number`);
    return n;
  };
  const number = (key: string): number | undefined => {
    const text = fields.get(key);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isFinite(n)) throw new InputError(file, `has an ImageJ description with ${key}=${text}, not a number`);
    return n;
  };
  const full = fullResolutionPages(pages);
  const images = count('images') ?? full.length;
  const c = count('channels') ?? 1;
  const t = count('frames') ?? 1;
  const z = count('slices') ?? images / (c * t);
  if (!Number.isInteger(z) || c * z * t !== images) {
    throw new InputError(
      file,
      `has an ImageJ description of ${c} channels x ${fields.get('slices') ?? '?'} slices x ${t} frames that does not multiply to its images=${images}`,
    );
  }
  if (full.length !== images) {
    const hint =
      full.length === 1
        ? ': ImageJ saves stacks over 4 GiB this way (one page directory, the planes stored back to back), which blindspot does not read; save it as OME-TIFF (Bio-Formats) or convert it to OME-Zarr'
        : '';
    throw new InputError(file, `has an ImageJ description of images=${images} (${c} channels x ${z} slices x ${t} frames) but ${full.length} page(s)${hint}`);
  }
  // ImageJ's own units; without one, the resolution unit tag (2 inch, 3 centimetre), else uncalibrated.
  const resolutionUnit = Number(pages[0].fileDirectory.ResolutionUnit ?? 1);
  const unitText = fields.get('unit') ?? (resolutionUnit === 3 ? 'cm' : resolutionUnit === 2 ? 'inch' : undefined);
  const calibrated = unitText !== undefined && !/^(pixels?|)$/i.test(unitText);
  const sizes = { c, z, t };
  const order = czt(sizes);
  if (!calibrated) {
    return { source: 'imagej', sizes, pageOf: planeLookup(sizes, (cc, zz, tt) => full[order(cc, zz, tt)]), scale: [1, 1, 1], translation: [0, 0, 0], units: [undefined, undefined, undefined] };
  }
  const sx = sideFromResolution(file, pages[0], 'XResolution') ?? 1;
  const sy = sideFromResolution(file, pages[0], 'YResolution') ?? sx;
  const sz = number('spacing') ?? 1;
  if (sz <= 0) throw new InputError(file, `has an ImageJ description with spacing=${sz}; the slice spacing must be positive`);
  const unit = ngffLengthUnit(unitText);
  const scale: [number, number, number] = [sz, sy, sx];
  // ImageJ's origin is the pixel index of the physical origin.
  const origin = [number('zorigin') ?? 0, number('yorigin') ?? 0, number('xorigin') ?? 0];
  const translation = scale.map((s, axis) => (origin[axis] === 0 ? 0 : -origin[axis] * s)) as [number, number, number];
  const units: [string | undefined, string | undefined, string | undefined] = [
    fields.has('zunit') ? ngffLengthUnit(fields.get('zunit')) : unit,
    fields.has('yunit') ? ngffLengthUnit(fields.get('yunit')) : unit,
    unit,
  ];
  return { source: 'imagej', sizes, pageOf: planeLookup(sizes, (cc, zz, tt) => full[order(cc, zz, tt)]), scale, translation, units };
}

function planeLookup(sizes: TiffPlaneSizes, page: (c: number, z: number, t: number) => number): TiffPlaneLayout['pageOf'] {
  return (c, z, t) => (c >= 0 && c < sizes.c && z >= 0 && z < sizes.z && t >= 0 && t < sizes.t ? page(c, z, t) : -1);
}

// A few attributes of a few elements: a regular-expression reader is enough for OME-XML's flat
// Image/Pixels/TiffData structure, and needs no XML dependency.

interface XmlElement {
  attributes: Map<string, string>;
  body: string;
}

function decodeXmlText(text: string): string {
  return text.replace(/&(lt|gt|quot|apos|amp|#\d+|#x[0-9a-fA-F]+);/g, (_, name: string) => {
    if (name === 'lt') return '<';
    if (name === 'gt') return '>';
    if (name === 'quot') return '"';
    if (name === 'apos') return "'";
    if (name === 'amp') return '&';
    return String.fromCodePoint(name[1] === 'x' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10));
  });
}

/** Elements named `name` (any namespace prefix), with their attributes (local names) and inner text. */
function xmlElements(xml: string, name: string): XmlElement[] {
  const pattern = new RegExp(`<(?:[\\w.-]+:)?${name}(?=[\\s/>])([^>]*?)(?:/>|>([\\s\\S]*?)</(?:[\\w.-]+:)?${name}\\s*>)`, 'g');
  return Array.from(xml.matchAll(pattern), (m) => {
    const attributes = new Map<string, string>();
    for (const a of m[1].matchAll(/([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) attributes.set(a[1].replace(/^[\w.-]+:/, ''), decodeXmlText(a[2] ?? a[3]));
    return { attributes, body: m[2] ?? '' };
  });
}

const dimensionOrders = ['XYZCT', 'XYZTC', 'XYCTZ', 'XYCZT', 'XYTCZ', 'XYTZC'];

function omeLayout(file: string, pages: readonly TiffPage[], xml: string): TiffPlaneLayout {
  const base = path.basename(file);
  if (xmlElements(xml, 'BinaryOnly').length) {
    const companion = xmlElements(xml, 'BinaryOnly')[0].attributes.get('MetadataFile');
    throw new InputError(file, `is part of a multi-file OME-TIFF whose metadata lives in ${companion ?? 'a companion file'}; blindspot reads single-file OME-TIFFs: convert it to one OME-TIFF or to OME-Zarr (e.g. bfconvert, bioformats2raw)`);
  }
  const images = xmlElements(xml, 'Image');
  if (images.length !== 1) {
    throw new InputError(file, `holds ${images.length} images (series) in its OME-XML; blindspot reads OME-TIFFs of one image: export the series you want on its own`);
  }
  const pixels = xmlElements(images[0].body, 'Pixels')[0];
  if (!pixels) throw new InputError(file, 'has OME-XML without a Pixels element');
  const attr = pixels.attributes;
  const size = (key: string, fallback?: number): number => {
    const text = attr.get(key);
    const n = text === undefined ? fallback : Number(text);
    if (n === undefined || !Number.isInteger(n) || n < 1) throw new InputError(file, `has OME-XML Pixels ${key}=${text ?? '(missing)'}, not a positive whole number`);
    return n;
  };
  const order = attr.get('DimensionOrder') ?? '';
  if (!dimensionOrders.includes(order)) throw new InputError(file, `has OME-XML DimensionOrder=${order || '(missing)'}; expected one of ${dimensionOrders.join(', ')}`);
  const [width, height] = [size('SizeX'), size('SizeY')];
  const first = pages[0];
  if (width !== first.getWidth() || height !== first.getHeight()) {
    throw new InputError(file, `has OME-XML SizeX=${width} SizeY=${height} but its first page is ${first.getWidth()}x${first.getHeight()}`);
  }
  // An RGB plane is one page holding several channels (Channel SamplesPerPixel).
  const samplesPerPixel = first.getSamplesPerPixel();
  const sizeC = size('SizeC', 1);
  if (sizeC % samplesPerPixel !== 0) throw new InputError(file, `has OME-XML SizeC=${sizeC}, not a multiple of its ${samplesPerPixel} samples per pixel`);
  const sizes = { c: sizeC / samplesPerPixel, z: size('SizeZ', 1), t: size('SizeT', 1) };
  const extent: Record<string, number> = { Z: sizes.z, C: sizes.c, T: sizes.t };
  const letters = order.slice(2).split('');
  const planeIndex = (index: Record<string, number>): number => index[letters[0]] + extent[letters[0]] * (index[letters[1]] + extent[letters[1]] * index[letters[2]]);
  const planeCount = sizes.c * sizes.z * sizes.t;
  const pageOfPlane = new Int32Array(planeCount).fill(-1);
  const tiffData = xmlElements(pixels.body, 'TiffData');
  if (!tiffData.length) {
    if (pages.length < planeCount) {
      throw new InputError(file, `has OME-XML of ${sizes.c} channels x ${sizes.z} slices x ${sizes.t} time points (${planeCount} planes) but ${pages.length} page(s)`);
    }
    for (let p = 0; p < planeCount; p++) pageOfPlane[p] = p;
  }
  const fileUuid = xmlElements(xml, 'OME')[0]?.attributes.get('UUID');
  const integer = (e: XmlElement, key: string, fallback: number): number => {
    const text = e.attributes.get(key);
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(n) || n < 0) throw new InputError(file, `has OME-XML TiffData ${key}=${text}, not a whole number`);
    return n;
  };
  for (const entry of tiffData) {
    const uuid = xmlElements(entry.body, 'UUID')[0];
    if (uuid) {
      const otherName = uuid.attributes.get('FileName');
      const otherUuid = uuid.body.trim();
      if ((otherName !== undefined && otherName !== base) || (otherName === undefined && fileUuid !== undefined && otherUuid && otherUuid !== fileUuid)) {
        throw new InputError(file, `is part of a multi-file OME-TIFF (planes in ${otherName ?? otherUuid}); blindspot reads single-file OME-TIFFs: convert it to one OME-TIFF or to OME-Zarr (e.g. bfconvert, bioformats2raw)`);
      }
    }
    const ifd = integer(entry, 'IFD', 0);
    const start = planeIndex({ Z: integer(entry, 'FirstZ', 0), C: integer(entry, 'FirstC', 0), T: integer(entry, 'FirstT', 0) });
    // Defaults from the OME schema: one page when IFD is given, else every page of the file.
    const n = integer(entry, 'PlaneCount', entry.attributes.has('IFD') ? 1 : pages.length);
    for (let k = 0; k < n && start + k < planeCount; k++) {
      if (ifd + k >= pages.length) throw new InputError(file, `has OME-XML TiffData pointing at page ${ifd + k}, but the file has ${pages.length} page(s)`);
      pageOfPlane[start + k] = ifd + k;
    }
  }
  const physical = (axis: 'X' | 'Y' | 'Z'): { side: number; unit: string | undefined } => {
    const text = attr.get(`PhysicalSize${axis}`);
    if (text === undefined) return { side: 1, unit: undefined };
    const side = Number(text);
    if (!Number.isFinite(side) || side <= 0) throw new InputError(file, `has OME-XML PhysicalSize${axis}=${text}; it must be a positive number`);
    return { side, unit: ngffLengthUnit(attr.get(`PhysicalSize${axis}Unit`) ?? '\u00b5m') };
  };
  const [pz, py, px] = [physical('Z'), physical('Y'), physical('X')];
  return {
    source: 'ome',
    sizes,
    pageOf: planeLookup(sizes, (c, z, t) => pageOfPlane[planeIndex({ Z: z, C: c, T: t })]),
    scale: [pz.side, py.side, px.side],
    translation: [0, 0, 0],
    units: [pz.unit, py.unit, px.unit],
  };
}

/** What kind of multi-page file the layout describes, for messages. */
export function layoutName(layout: TiffPlaneLayout): string {
  return layout.source === 'imagej' ? 'an ImageJ hyperstack' : layout.source === 'ome' ? 'an OME-TIFF' : 'a TIFF stack';
}

/** 'C channels x Z slices x T time points', for messages. */
export function sizesText({ c, z, t }: TiffPlaneSizes): string {
  return `${c} channel${c === 1 ? '' : 's'} x ${z} slice${z === 1 ? '' : 's'} x ${t} time point${t === 1 ? '' : 's'}`;
}

/**
 * The pages (IFD indices) of slices z = 0..Z-1 at the chosen channel and time point. A channel or
 * time axis of more than one entry must be chosen; 0 is accepted where there is none, as for OME-Zarr.
 */
export function tiffStackPages(file: string, layout: TiffPlaneLayout, choice: TiffPlaneChoice = {}): number[] {
  const { sizes } = layout;
  const missing: string[] = [];
  if (sizes.c > 1 && choice.channel === undefined) missing.push(`a channel with --channel (0 to ${sizes.c - 1})`);
  if (sizes.t > 1 && choice.time === undefined) missing.push(`a time point with --time (0 to ${sizes.t - 1})`);
  if (missing.length) throw new InputError(file, `is ${layoutName(layout)} of ${sizesText(sizes)}; choose ${missing.join(' and ')}`);
  for (const [name, value, n, axis] of [['channel', choice.channel, sizes.c, 'c'], ['time point', choice.time, sizes.t, 't']] as const) {
    if (value === undefined || value === 0) continue;
    if (n === 1) throw new InputError(file, `has no ${name === 'channel' ? 'channel' : 'time'} axis (${layoutName(layout)} of ${sizesText(sizes)}), so ${name} ${value} does not exist`);
    if (!Number.isInteger(value) || value < 0 || value >= n) throw new InputError(file, `has no ${name} ${value} (axis ${axis} has ${n})`);
  }
  const c = choice.channel ?? 0;
  const t = choice.time ?? 0;
  return Array.from({ length: sizes.z }, (_, z) => {
    const page = layout.pageOf(c, z, t);
    if (page < 0) throw new InputError(file, `has ${layoutName(layout)} metadata that maps no page to channel ${c}, slice ${z}, time point ${t}`);
    return page;
  });
}
