/**
 * Synthetic microscopy-like data with known ground truth: blobs (cells, vesicles) and filaments
 * (microtubules) on a dim background, and detector noise (Poisson shot noise + Gaussian read noise).
 */
import { Rng } from './rng.js';
import type { Shape3D, Volume } from './volume.js';

/** A clean volume, values in [0, 1], shape [Z, Y, X]. */
export function syntheticCells(shape: Shape3D, rng: Rng, opts: { blobs?: number; filaments?: number } = {}): Volume {
  const [nz, ny, nx] = shape;
  const data = new Float32Array(nz * ny * nx).fill(0.05);
  const splat = (cz: number, cy: number, cx: number, sigma: number, amplitude: number): void => {
    const r = Math.ceil(3 * sigma);
    for (let z = Math.max(0, Math.floor(cz - r)); z <= Math.min(nz - 1, Math.ceil(cz + r)); z++) {
      for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(ny - 1, Math.ceil(cy + r)); y++) {
        for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(nx - 1, Math.ceil(cx + r)); x++) {
          const d2 = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2;
          const i = (z * ny + y) * nx + x;
          data[i] = Math.max(data[i], 0.05 + amplitude * Math.exp(-d2 / (2 * sigma * sigma)));
        }
      }
    }
  };
  const blobs = opts.blobs ?? Math.round((nz * ny * nx) / 6000);
  for (let b = 0; b < blobs; b++) {
    splat(rng.uniform() * nz, rng.uniform() * ny, rng.uniform() * nx, 1.5 + rng.uniform() * 3, 0.4 + 0.6 * rng.uniform());
  }
  // Filaments: smooth random walks, drawn as chains of thin Gaussians.
  const filaments = opts.filaments ?? Math.max(2, Math.round((ny * nx) / 2500));
  for (let f = 0; f < filaments; f++) {
    let z = rng.uniform() * nz;
    let y = rng.uniform() * ny;
    let x = rng.uniform() * nx;
    let theta = rng.uniform() * 2 * Math.PI;
    let dz = (rng.uniform() - 0.5) * 0.3;
    const amplitude = 0.3 + 0.4 * rng.uniform();
    const length = (ny + nx) * (0.5 + rng.uniform());
    for (let s = 0; s < length; s++) {
      splat(z, y, x, 0.9, amplitude);
      theta += (rng.uniform() - 0.5) * 0.25;
      dz += (rng.uniform() - 0.5) * 0.05;
      dz = Math.max(-0.3, Math.min(0.3, dz));
      x += Math.cos(theta);
      y += Math.sin(theta);
      z += dz;
      if (z < 0 || z >= nz) dz = -dz;
    }
  }
  return { data, shape, sampleType: 'float32' };
}

/**
 * Detector noise: counts ~ Poisson(photons * clean) then + N(0, readNoise^2), in photon units.
 * Returns the noisy volume in the same units as the scaled truth (clean * photons).
 */
export function addPoissonGaussianNoise(clean: Volume, photons: number, readNoise: number, rng: Rng): { noisy: Volume; truth: Volume } {
  const noisy = new Float32Array(clean.data.length);
  const truth = new Float32Array(clean.data.length);
  for (let i = 0; i < clean.data.length; i++) {
    const lambda = clean.data[i] * photons;
    truth[i] = lambda;
    noisy[i] = poisson(lambda, rng) + readNoise * rng.normal();
  }
  return { noisy: { data: noisy, shape: clean.shape, sampleType: 'float32' }, truth: { data: truth, shape: clean.shape, sampleType: 'float32' } };
}

/** Adds N(0, sigma^2) as float, not clipped (the N2V / BSD68 protocol). */
export function addGaussianNoise(clean: Float32Array, sigma: number, rng: Rng): Float32Array {
  const out = new Float32Array(clean.length);
  for (let i = 0; i < clean.length; i++) out[i] = clean[i] + sigma * rng.normal();
  return out;
}

function poisson(lambda: number, rng: Rng): number {
  if (lambda <= 0) return 0;
  if (lambda > 30) {
    // Normal approximation with continuity: accurate to well below the read noise at these rates.
    return Math.max(0, Math.round(lambda + Math.sqrt(lambda) * rng.normal()));
  }
  const l = Math.exp(-lambda);
  let k = 0;
  let p = 1;
  do {
    k++;
    p *= rng.uniform();
  } while (p > l);
  return k - 1;
}
