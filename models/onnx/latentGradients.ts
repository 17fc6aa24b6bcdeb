/**
 * DivNoising's VAE latent layers (models/vae.ts VaeSample, VaeKl) in the training graph, forward
 * and backward, channels-first. Both read the 'latent' tensor [mu | raw log variance] (2C channels);
 * the log variance is lv = clip(raw + offset, -limit, limit), whose gradient passes only where the
 * clip did not bite (tfjs' clipByValue gradient, bounds included).
 *
 * - Sample: z = mu + exp(lv / 2) eps, eps a graph input (drawn by the layer, VaeSample.nextNoise, so
 *   both engines sample the same sequence): dmu = dz, dlv = dz eps exp(lv / 2) / 2.
 * - KL: kl = sum_c (mu^2 + exp(lv) - lv - 1) / 2 / spread: dmu = dkl mu / spread,
 *   dlv = dkl (exp(lv) - 1) / 2 / spread.
 */
import { LOG_VARIANCE_LIMIT, LOG_VARIANCE_OFFSET } from '../vae.js';
import { attr, type GraphBuilder } from './graph.js';

/**
 * A sampling layer's eps, channels-last: [batch, (z / divisor,) y / divisor, x / divisor, channels]
 * for an input batch [batch, (z,) y, x, 1]; `layer` names the layer that draws it (VaeSample.nextNoise).
 */
export interface NoiseInput {
  name: string;
  layer: string;
  channels: number;
  divisor: number;
}

/** How a layer scales the spatial size (the noise inputs' shapes follow it). */
export const SPATIAL_DIVISOR: Record<string, number> = { MaxPooling2D: 2, MaxPooling3D: 2, BlindspotMaxBlurPool: 2, BlindspotCentredMaxBlurPool: 2, BlindspotNearestUpSampling: 0.5 };

/** The latent's halves, channels-first, and where the log variance's clip passes the gradient. */
export interface LatentHalves {
  mu: string;
  logVariance: string;
  unclipped: string;
  channels: number;
}

export function splitLatentChannels(g: GraphBuilder, latent: string, latentChannels: number, name: string): LatentHalves {
  const channels = latentChannels / 2;
  const mu = g.slice(latent, 1, 0, channels, `${name}_mu`);
  const shifted = g.op('Add', [g.slice(latent, 1, channels, 2 * channels, `${name}_raw_logvar`), g.scalar(`${name}/logvar_offset`, LOG_VARIANCE_OFFSET)], `${name}_logvar_shifted`);
  const low = g.scalar(`${name}/logvar_min`, -LOG_VARIANCE_LIMIT);
  const high = g.scalar(`${name}/logvar_max`, LOG_VARIANCE_LIMIT);
  const logVariance = g.op('Clip', [shifted, low, high], `${name}_logvar`);
  const unclipped = g.op('And', [g.op('GreaterOrEqual', [shifted, low], `${name}_above_min`), g.op('LessOrEqual', [shifted, high], `${name}_below_max`)], `${name}_unclipped`);
  return { mu, logVariance, unclipped, channels };
}

/** The latent's gradient from its halves' (the log variance's zeroed where the clip bit). */
function latentGradient(g: GraphBuilder, h: LatentHalves, dmu: string, dlv: string, name: string): string {
  const passed = g.op('Where', [h.unclipped, dlv, g.scalar(`${name}/zero`, 0)], `${name}_dlogvar_clipped`);
  return g.op('Concat', [dmu, passed], `${name}_dlatent`, { axis: attr.int(1) });
}

/** z = mu + exp(lv / 2) eps; `backward(dz)` gives the latent's gradient. */
export function latentSample(g: GraphBuilder, h: LatentHalves, eps: string, name: string): { z: string; backward: (dz: string) => string } {
  const std = g.op('Exp', [g.op('Mul', [h.logVariance, g.scalar(`${name}/half`, 0.5)], `${name}_half_logvar`)], `${name}_std`);
  const spread = g.op('Mul', [std, eps], `${name}_spread`);
  const z = g.op('Add', [h.mu, spread], name);
  return {
    z,
    backward: (dz) => latentGradient(g, h, dz, g.op('Mul', [g.op('Mul', [dz, spread], `${name}_dz_spread`), g.scalar(`${name}/half_d`, 0.5)], `${name}_dlogvar`), name),
  };
}

/** The KL per latent position over `spread` pixels (one channel); `backward(dkl)` gives the latent's gradient. */
export function latentKl(g: GraphBuilder, h: LatentHalves, spread: number, name: string): { kl: string; backward: (dkl: string) => string } {
  const variance = g.op('Exp', [h.logVariance], `${name}_variance`);
  const one = g.scalar(`${name}/one`, 1);
  const terms = g.op('Sub', [g.op('Add', [g.op('Mul', [h.mu, h.mu], `${name}_mu_square`), variance], `${name}_mu2_var`), g.op('Add', [h.logVariance, one], `${name}_logvar_1`)], `${name}_terms`);
  const perPosition = g.op('Mul', [g.op('ReduceSum', [terms, g.int64s([1])], `${name}_channel_sum`, { keepdims: attr.int(1) }), g.scalar(`${name}/half`, 0.5)], `${name}_kl_sum`);
  const kl = g.op('Div', [perPosition, g.scalar(`${name}/spread`, spread)], name);
  return {
    kl,
    backward: (dkl) => {
      const scaled = g.op('Div', [dkl, g.scalar(`${name}/spread_d`, spread)], `${name}_dkl_scaled`);
      const dmu = g.op('Mul', [scaled, h.mu], `${name}_dmu`);
      const dlv = g.op('Mul', [g.op('Mul', [scaled, g.op('Sub', [variance, one], `${name}_var_1`)], `${name}_dvar`), g.scalar(`${name}/half_d`, 0.5)], `${name}_dlogvar`);
      return latentGradient(g, h, dmu, dlv, name);
    },
  };
}
