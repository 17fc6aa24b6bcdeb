/** File-name extensions and the format each one means. */

export type ImageFormat = 'png' | 'tiff' | 'fits' | 'npy';

/** Longest first, so `.fits.gz` wins over a bare `.gz`. */
export const supportedExtensions = ['.fits.gz', '.fit.gz', '.png', '.tif', '.tiff', '.fits', '.fit', '.npy'] as const;

const formatOfExtension: Record<(typeof supportedExtensions)[number], ImageFormat> = {
  '.fits.gz': 'fits',
  '.fit.gz': 'fits',
  '.png': 'png',
  '.tif': 'tiff',
  '.tiff': 'tiff',
  '.fits': 'fits',
  '.fit': 'fits',
  '.npy': 'npy',
};

/** The supported extension `file` ends with (case-insensitive), or null. */
export function supportedExtensionOf(file: string): (typeof supportedExtensions)[number] | null {
  const lower = file.toLowerCase();
  return supportedExtensions.find((ext) => lower.endsWith(ext)) ?? null;
}

export function formatOf(file: string): ImageFormat | null {
  const ext = supportedExtensionOf(file);
  return ext ? formatOfExtension[ext] : null;
}

export function isSupportedImage(file: string): boolean {
  return supportedExtensionOf(file) !== null;
}
