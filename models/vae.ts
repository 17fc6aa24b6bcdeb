/**
 * DivNoising's fully convolutional VAE (Prakash, Lalit, Tomancak, Krull, Jug, ICLR 2021), 2D and 3D:
 *
 *   encoder: per level two 3x3(x3) convolutions (filters * 2^level, ReLU) and a 2x max pool, then a
 *            1x1 convolution to 2C channels, the latent code's mean and log variance ('latent');
 *   sample:  z = mu + exp(logvar / 2) eps while training (eps ~ N(0, 1), reparameterised), z = mu
 *            otherwise ('latent_sample', VaeSample); prediction draws its own eps (methods/divnoising.ts);
 *   decoder: per level a nearest 2x upsampling and two convolutions, then a 1x1 convolution to the
 *            clean signal s ('decoded', normalised units).
 *
 * The model's output has two channels: s, and the KL divergence of q(z | x) from N(0, I) at every
 * latent position spread evenly over the 2^(depth dims) pixels it covers (VaeKl, then upsampling),
 * so that the mean over pixels of channel 1 is the KL per pixel: the ELBO per pixel is then
 * mean(-log p(x | s) + kl) from one tensor (the trainer runs one model with one output).
 * There are no skip connections: everything the decoder knows passes the sampled code.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import { type Kwargs, NearestUpSampling, singleShape, singleTensor } from './layers.js';
import type { UNetGeometry } from './unet.js';

type LayerArgs = NonNullable<ConstructorParameters<typeof tfl.layers.Layer>[0]>;

export interface VaeConfig {
  dims: 2 | 3;
  /** Downsamplings (2x each) between the image and the latent code. */
  depth: number;
  /** Filters of the first level (doubled per level). */
  filters: number;
  /** Channels C of the latent code. */
  latentChannels: number;
}

export function defaultVaeConfig(dims: 2 | 3): VaeConfig {
  return { dims, depth: 2, filters: 32, latentChannels: dims === 2 ? 32 : 16 };
}

/** log variance clamp: keeps exp finite early in training. */
export const LOG_VARIANCE_LIMIT = 12;

/**
 * Added to the 'latent' layer's log-variance channels: a fresh encoder starts with a narrow posterior
 * (sigma ~ 0.05 instead of ~1), so the decoder first learns to read the code. Started at sigma ~ 1,
 * eps drowns the code and the decoder settles on the mean image at once (posterior collapse: measured
 * here, the loss never left the constant prediction's value in 150 steps).
 */
export const LOG_VARIANCE_OFFSET = -6;

/** [mu | logvar] (2C channels) -> z: a sample while training, mu at inference. */
export class VaeSample extends tfl.layers.Layer {
  static className = 'BlindspotVaeSample';
  private readonly seed: number;
  private calls = 0;

  constructor(args: LayerArgs & { seed?: number }) {
    super(args);
    this.seed = args.seed ?? 1;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    const c = shape[shape.length - 1];
    shape[shape.length - 1] = c == null ? null : c / 2;
    return shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const [mu, logVariance] = splitLatent(singleTensor(inputs));
      if (kwargs.training !== true) return mu;
      return tf.add(mu, tf.mul(tf.exp(tf.mul(logVariance, 0.5)), this.nextNoise(mu.shape)));
    });
  }

  /**
   * The eps of the next training-mode call, of `shape` (mu's): a new seed per call, so training is
   * reproducible with a different eps every step. A gradient engine that computes the training pass
   * itself draws it here, so that both engines sample the same sequence.
   */
  nextNoise(shape: readonly number[]): tf.Tensor {
    return tf.randomNormal([...shape], 0, 1, 'float32', this.seed + this.calls++);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), seed: this.seed };
  }
}

/** [mu | logvar] -> KL(q || N(0, I)) summed over channels, divided by `spread` (one channel). */
export class VaeKl extends tfl.layers.Layer {
  static className = 'BlindspotVaeKl';
  private readonly spread: number;

  constructor(args: LayerArgs & { spread: number }) {
    super(args);
    this.spread = args.spread;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    shape[shape.length - 1] = 1;
    return shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const [mu, logVariance] = splitLatent(singleTensor(inputs));
      const kl = tf.mul(0.5, tf.sub(tf.add(tf.square(mu), tf.exp(logVariance)), tf.add(logVariance, 1)));
      return tf.div(tf.sum(kl, -1, true), this.spread);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), spread: this.spread };
  }
}

tf.serialization.registerClass(VaeSample);
tf.serialization.registerClass(VaeKl);

/** Splits the 'latent' layer's output into mu and a clamped log variance. */
export function splitLatent(latent: tf.Tensor): [tf.Tensor, tf.Tensor] {
  const [mu, logVariance] = tf.split(latent, 2, latent.rank - 1);
  return [mu, tf.clipByValue(tf.add(logVariance, LOG_VARIANCE_OFFSET), -LOG_VARIANCE_LIMIT, LOG_VARIANCE_LIMIT)];
}

function validateVaeConfig(cfg: VaeConfig): void {
  if (cfg.dims !== 2 && cfg.dims !== 3) throw new RangeError(`VAE dims must be 2 or 3, got ${cfg.dims}`);
  for (const [key, min] of [['depth', 1], ['filters', 1], ['latentChannels', 1]] as const) {
    if (!(Number.isInteger(cfg[key]) && cfg[key] >= min)) throw new RangeError(`VAE ${key} must be an integer >= ${min}, got ${cfg[key]}`);
  }
}

function conv(cfg: VaeConfig, rng: Rng, filters: number, kernelSize: number, name: string, activation: 'relu' | 'linear'): tfl.layers.Layer {
  const args = { filters, kernelSize, padding: 'same' as const, activation, kernelInitializer: tfl.initializers.glorotUniform({ seed: rng.nextUint32() }), name };
  return cfg.dims === 2 ? tfl.layers.conv2d(args) : tfl.layers.conv3d(args);
}

/** The decoder's layers in order (fresh ones each call; the names match the full model's). */
function decoderLayers(cfg: VaeConfig, rng: Rng): tfl.layers.Layer[] {
  const layers: tfl.layers.Layer[] = [];
  for (let level = cfg.depth - 1; level >= 0; level--) {
    layers.push(new NearestUpSampling({ dims: cfg.dims, name: `decoder${level}_upsample` }));
    layers.push(conv(cfg, rng, cfg.filters * 2 ** level, 3, `decoder${level}_0`, 'relu'));
    layers.push(conv(cfg, rng, cfg.filters * 2 ** level, 3, `decoder${level}_1`, 'relu'));
  }
  layers.push(conv(cfg, rng, 1, 1, 'decoded', 'linear'));
  return layers;
}

function chain(x: tfl.SymbolicTensor, layers: tfl.layers.Layer[]): tfl.SymbolicTensor {
  for (const layer of layers) x = layer.apply(x) as tfl.SymbolicTensor;
  return x;
}

/** The VAE trained end to end: image -> [s, kl] (see the file comment). */
export function buildVae(cfg: VaeConfig, seed: number): tfl.LayersModel {
  validateVaeConfig(cfg);
  const rng = new Rng(seed);
  const input = tfl.input({ shape: [...new Array<null>(cfg.dims).fill(null), 1], name: 'input' });
  let x: tfl.SymbolicTensor = input;
  for (let level = 0; level < cfg.depth; level++) {
    x = conv(cfg, rng, cfg.filters * 2 ** level, 3, `encoder${level}_0`, 'relu').apply(x) as tfl.SymbolicTensor;
    x = conv(cfg, rng, cfg.filters * 2 ** level, 3, `encoder${level}_1`, 'relu').apply(x) as tfl.SymbolicTensor;
    const pool = { poolSize: 2, strides: 2, padding: 'valid' as const, name: `encoder${level}_pool` };
    x = (cfg.dims === 2 ? tfl.layers.maxPooling2d(pool) : tfl.layers.maxPooling3d(pool)).apply(x) as tfl.SymbolicTensor;
  }
  const latent = conv(cfg, rng, 2 * cfg.latentChannels, 1, 'latent', 'linear').apply(x) as tfl.SymbolicTensor;
  const z = new VaeSample({ name: 'latent_sample', seed: rng.nextUint32() % 1_000_000 }).apply(latent) as tfl.SymbolicTensor;
  const decoded = chain(z, decoderLayers(cfg, rng));
  let kl = new VaeKl({ name: 'latent_kl', spread: 2 ** (cfg.depth * cfg.dims) }).apply(latent) as tfl.SymbolicTensor;
  for (let level = 0; level < cfg.depth; level++) kl = new NearestUpSampling({ dims: cfg.dims, name: `latent_kl_upsample${level}` }).apply(kl) as tfl.SymbolicTensor;
  const output = tfl.layers.concatenate({ axis: -1, name: 'output' }).apply([decoded, kl]) as tfl.SymbolicTensor;
  return tfl.model({ inputs: input, outputs: output, name: `vae${cfg.dims}d_depth${cfg.depth}` });
}

/** The trained model's encoder: image -> [mu | logvar] at 1 / 2^depth the resolution. */
export function vaeEncoder(model: tfl.LayersModel): tfl.LayersModel {
  return tfl.model({ inputs: model.inputs, outputs: model.getLayer('latent').output as tfl.SymbolicTensor });
}

/** A standalone decoder (z -> s) with the trained model's decoder weights (copied by layer name). */
export function vaeDecoder(model: tfl.LayersModel, cfg: VaeConfig): tfl.LayersModel {
  const layers = decoderLayers(cfg, new Rng(0));
  const input = tfl.input({ shape: [...new Array<null>(cfg.dims).fill(null), cfg.latentChannels] });
  const decoder = tfl.model({ inputs: input, outputs: chain(input, layers) });
  for (const layer of layers) {
    const weights = model.getLayer(layer.name).getWeights();
    if (weights.length > 0) layer.setWeights(weights);
  }
  return decoder;
}

/**
 * Sizes a multiple of 2^depth; the receptive radius bounded from the layers: per level l the
 * encoder's two 3-wide convolutions and pool reach 3 * 2^l, the decoder's two 2 * 2^l, plus the
 * upsampling's offset of up to 2^l; rounded up with one more 2^depth for the pooling phase.
 */
export function vaeGeometry(cfg: VaeConfig): UNetGeometry {
  validateVaeConfig(cfg);
  const m = 2 ** cfg.depth;
  const radius = 6 * (m - 1) + m;
  return { sizeMultiple: m, receptiveRadius: radius, receptiveBefore: radius, receptiveAfter: radius };
}
