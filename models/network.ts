/**
 * The networks a model can hold, as one tagged union, and the single place that builds them and
 * says what input sizes and context they need. The manifest stores a NetworkConfig; manifests
 * written before the union existed have no `kind` and are U-Nets.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig, type UNetGeometry } from './unet.js';
import { buildLaine19, defaultLaine19Config, laine19Geometry, type Laine19Config } from './laine19.js';
import { buildDbsn, dbsnGeometry, defaultDbsnConfig, type DbsnConfig } from './dbsn.js';
import { buildVae, defaultVaeConfig, vaeGeometry, type VaeConfig } from './vae.js';

export type UNetNetwork = UNetConfig & { kind?: 'unet' };
export type Laine19Network = Laine19Config & { kind: 'laine19' };
export type DbsnNetwork = DbsnConfig & { kind: 'dbsn' };
/** outputChannels and variant are U-Net fields, absent here (declared so code reading them off any network typechecks). */
export type VaeNetwork = VaeConfig & { kind: 'vae'; outputChannels?: undefined; variant?: undefined };
export type NetworkConfig = UNetNetwork | Laine19Network | DbsnNetwork | VaeNetwork;
export type NetworkKind = 'unet' | 'laine19' | 'dbsn' | 'vae';

/** What tiling needs from a network: sizes must be multiples of sizeMultiple; the field reaches receptiveRadius per side. */
export type NetworkGeometry = UNetGeometry;

export function networkKind(cfg: NetworkConfig): NetworkKind {
  return cfg.kind ?? 'unet';
}

function strip<T extends { kind?: string }>(cfg: T): Omit<T, 'kind'> {
  const { kind: _kind, ...rest } = cfg;
  return rest;
}

export function buildNetwork(cfg: NetworkConfig, seed: number): tfl.LayersModel {
  switch (cfg.kind) {
    case 'laine19':
      return buildLaine19(strip(cfg), seed);
    case 'dbsn':
      return buildDbsn(strip(cfg), seed);
    case 'vae':
      return buildVae(strip(cfg), seed);
    case undefined:
    case 'unet':
      return buildUNet(strip(cfg), seed);
    default:
      throw new RangeError(`unknown network kind '${String((cfg as { kind: unknown }).kind)}'`);
  }
}

export function networkGeometry(cfg: NetworkConfig): NetworkGeometry {
  switch (cfg.kind) {
    case 'laine19':
      return laine19Geometry(strip(cfg));
    case 'dbsn':
      return dbsnGeometry(strip(cfg));
    case 'vae':
      return vaeGeometry(strip(cfg));
    case undefined:
    case 'unet':
      return unetGeometry(strip(cfg));
    default:
      throw new RangeError(`unknown network kind '${String((cfg as { kind: unknown }).kind)}'`);
  }
}

/**
 * Default network of each kind. `size` 'paper': the published configuration (laine19 depth 5 / 48
 * filters, D-BSN 64 filters / 9 blocks in 2D); 'small': what trains at a useful pace on a CPU
 * backend (measured on wasm, batch 4 of 64x64: laine19 paper 8-14 s per step vs 2.0 s at depth 3 /
 * 16 filters; D-BSN default 10.5 s vs 2.4 s at 32 filters / 5 blocks; a U-Net 0.6-0.7 s).
 */
export function defaultNetwork(kind: NetworkKind, dims: 2 | 3, size: 'paper' | 'small'): NetworkConfig {
  switch (kind) {
    case 'laine19':
      // Small 3D: depth 1 (receptive radius 15, exact tiles from 38^3 voxels), because six branches
      // make every voxel cost ~15 KiB: depth 2 (radius 35) needs exact tiles of 84^3 voxels, ~10 GiB,
      // and depth 3 (radius 75) 184^3; prediction refuses both on a CPU backend.
      return { kind, ...(size === 'paper' ? defaultLaine19Config(dims) : { dims, depth: dims === 2 ? 3 : 1, filters: 16 }) };
    case 'dbsn':
      return { kind, ...(size === 'paper' ? defaultDbsnConfig(dims) : { dims, filters: 32, blocks: dims === 2 ? 5 : 4 }) };
    case 'vae':
      return { kind, ...defaultVaeConfig(dims) };
    case 'unet':
      return { kind, ...defaultUNetConfig(dims) };
  }
}

/** One line for logs: "2D laine19 (depth 3, 16 filters)". */
export function describeNetwork(cfg: NetworkConfig): string {
  switch (cfg.kind) {
    case 'laine19':
      return `${cfg.dims}D laine19 blind-spot network (depth ${cfg.depth}, ${cfg.filters} filters)`;
    case 'dbsn':
      return `${cfg.dims}D D-BSN (${cfg.filters} filters, ${cfg.blocks} blocks)`;
    case 'vae':
      return `${cfg.dims}D VAE (depth ${cfg.depth}, ${cfg.filters} filters, ${cfg.latentChannels} latent channels)`;
    default:
      return `${cfg.dims}D ${cfg.variant === 'n2v2' ? 'N2V2 ' : ''}U-Net (depth ${cfg.depth}, ${cfg.filters} filters)`;
  }
}
