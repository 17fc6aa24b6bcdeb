/**
 * The words of a bioimage.io package (models/bioimageio.ts): each method's paper to cite, and the
 * documentation.md that says what the model is, what it was trained on, with what budget and noise.
 */
import { describeNoise } from './bayes.js';
import type { MethodName, ModelManifest } from './io.js';
import { describeNetwork } from './network.js';

export interface CiteEntry {
  text: string;
  doi?: string;
  url?: string;
}

const UNET: CiteEntry = {
  text: 'Ronneberger O, Fischer P, Brox T. U-Net: Convolutional networks for biomedical image segmentation. MICCAI 2015.',
  doi: '10.1007/978-3-319-24574-4_28',
};
const N2V: CiteEntry = { text: 'Krull A, Buchholz T-O, Jug F. Noise2Void - Learning denoising from single noisy images. CVPR 2019.', doi: '10.1109/CVPR.2019.00223' };

/** The paper(s) of each method (the method's own first). */
export const METHOD_CITATIONS: Record<MethodName, CiteEntry[]> = {
  n2v: [N2V, UNET],
  n2v2: [
    {
      text: 'Hoeck E, Buchholz T-O, Brachmann A, Jug F, Freytag A. N2V2 - Fixing Noise2Void checkerboard artifacts with modified sampling strategies and a tweaked network architecture. ECCV Workshops 2022.',
      doi: '10.1007/978-3-031-25069-9_33',
    },
    N2V,
  ],
  structn2v: [
    { text: 'Broaddus C, Krull A, Weigert M, Schmidt U, Myers G. Removing structured noise with self-supervised blind-spot networks. ISBI 2020.', doi: '10.1109/ISBI45749.2020.9098336' },
    N2V,
  ],
  noise2self: [{ text: 'Batson J, Royer L. Noise2Self: Blind denoising by self-supervision. ICML 2019.', url: 'https://proceedings.mlr.press/v97/batson19a.html' }, UNET],
  laine19: [{ text: 'Laine S, Karras T, Lehtinen J, Aila T. High-quality self-supervised deep image denoising. NeurIPS 2019.', url: 'https://arxiv.org/abs/1901.10277' }],
  dbsn: [{ text: 'Wu X, Liu M, Cao Y, Ren D, Zuo W. Unpaired learning of deep image denoising. ECCV 2020.', doi: '10.1007/978-3-030-58548-8_21' }],
  noise2info: [
    {
      text: 'Wang J, Di S, Chen L, Ng CWW. Noise2Info: Noisy image to information of noise for self-supervised image denoising. ICCV 2023.',
      url: 'https://openaccess.thecvf.com/content/ICCV2023/html/Wang_Noise2Info_Noisy_Image_to_Information_of_Noise_for_Self-Supervised_Image_ICCV_2023_paper.html',
    },
    UNET,
  ],
  n2n: [{ text: 'Lehtinen J, Munkberg J, Hasselgren J, Laine S, Karras T, Aittala M, Aila T. Noise2Noise: Learning image restoration without clean data. ICML 2018.', url: 'https://proceedings.mlr.press/v80/lehtinen18a.html' }, UNET],
  care: [{ text: 'Weigert M, Schmidt U, Boothe T, et al. Content-aware image restoration: pushing the limits of fluorescence microscopy. Nature Methods 15, 1090-1097 (2018).', doi: '10.1038/s41592-018-0216-7' }, UNET],
};

const METHOD_SUMMARY: Record<MethodName, string> = {
  n2v: 'Noise2Void: self-supervised, trained on the noisy images alone with a masked (blind-spot) loss.',
  n2v2: 'N2V2: Noise2Void with a max-blur-pool U-Net without the top skip connection and median replacement (fewer checkerboard artefacts).',
  structn2v: 'structN2V: Noise2Void with a structured mask, for noise correlated along a direction.',
  noise2self: 'Noise2Self: self-supervised with grid masking (J-invariance).',
  laine19: 'Laine et al. 2019: a blind-spot network by architecture (four rotated half-plane branches in 2D, six in 3D), every pixel in the loss.',
  dbsn: 'D-BSN: centrally masked and dilated convolutions make the network blind to each pixel; trained with a noise-aware likelihood.',
  noise2info: 'Noise2Info: grid-masked self-supervision with the noise level estimated during training (L_in + 2 sigma L_ex).',
  n2n: 'Noise2Noise: trained on pairs of independent noisy shots of the same scene.',
  care: 'CARE: supervised, trained on pairs of noisy and clean images.',
};

export interface DocumentationFacts {
  manifest: ModelManifest;
  halo: number;
  sizeMultiple: number;
  minSize: number;
  sampleName: string;
  warnings: string[];
}

function noiseSection(manifest: ModelManifest): string[] {
  const lines: string[] = [];
  if (manifest.prior) {
    lines.push(
      `The network predicts a Gaussian prior for the clean value from each pixel's surroundings; the graph ends with the posterior mean for the noise model ${describeNoise(manifest.prior.noise)} (input intensity units, source: ${manifest.prior.source ?? 'given'}), so the output is what \`blindspot denoise\` writes.`,
    );
  }
  const fits = manifest.noise ?? [];
  if (fits.length > 0) {
    lines.push('', 'Noise-level fits of the training images (variance = a x + b, input units):', '', '| image | sigma at median | a | b |', '|---|---|---|---|');
    for (const f of fits) lines.push(`| ${f.name} | ${f.sigma.toPrecision(4)} | ${f.a.toPrecision(4)} | ${f.b.toPrecision(4)} |`);
  }
  if (lines.length === 0) lines.push('No noise model is part of this method; no noise-level fits were recorded.');
  return lines;
}

/** documentation.md of the package. */
export function documentationMarkdown(f: DocumentationFacts): string {
  const m = f.manifest;
  const t = m.training;
  const n = m.normalisation;
  const dims = m.network.dims;
  const axes = dims === 2 ? 'batch, y, x, channel' : 'batch, z, y, x, channel';
  const lines = [
    `# ${describeNetwork(m.network)} trained with ${m.method}`,
    '',
    METHOD_SUMMARY[m.method],
    '',
    '## Use',
    '',
    `Input and output: float32 tensors with axes (${axes}), one channel. Spatial sizes must be multiples of ${f.sizeMultiple} and at least ${f.minSize}.`,
    `Preprocessing (scale_linear) maps input intensities to the network's units, (x - ${n.offset}) / ${n.scale}; postprocessing maps the output back (x * ${n.scale} + ${n.offset}).`,
    `Every output pixel depends on input pixels up to ${f.halo} pixels away (the halo): when the image is processed in tiles, let tiles overlap by at least that much and crop it.`,
    'Weights: `weights.onnx` (ONNX, opset 17, run by deepImageJ in Fiji and by bioimageio.core) and `tensorflow_js.zip` (the TensorFlow.js layers model it was trained as, run by blindspot).',
    '',
    '## Training',
    '',
    `- Method: ${m.method}; network: ${describeNetwork(m.network)}; loss: ${m.loss}.`,
    `- Data: ${t.inputs.length} image(s): ${t.inputs.slice(0, 20).join(', ')}${t.inputs.length > 20 ? ', ...' : ''}; validation: ${t.validationInputs.length > 0 ? t.validationInputs.slice(0, 5).join(', ') : 'patches held out from the training images'}.`,
    `- Patches ${m.patchShape.join('x')}, batch ${t.batchSize}, ${t.stepsDone} of ${t.steps} steps (best validation at step ${t.bestStep}${t.bestValLoss !== null ? `, loss ${t.bestValLoss.toPrecision(4)}` : ''}), learning rate ${t.learningRate}, seed ${t.seed}.`,
    `- Budget: ${(t.wallSeconds / 60).toFixed(1)} min on TensorFlow.js ${t.backend} with ${t.threads} thread(s); blindspot ${m.createdBy.version}.`,
    `- Normalisation: ${n.mode}${n.mode === 'percentile' ? ` (percentiles ${n.pLow}, ${n.pHigh})` : ''}, offset ${n.offset}, scale ${n.scale}.`,
    '',
    '## Noise',
    '',
    ...noiseSection(m),
    '',
    '## Test tensors and cover',
    '',
    `\`test_input.npy\` is a crop of ${f.sampleName}; \`test_output.npy\` is blindspot's own TensorFlow.js prediction on exactly that tensor (no padding beyond the network's own zero padding). The cover shows the noisy crop and the denoised one side by side, with one intensity window.`,
    ...(f.warnings.length > 0 ? ['', '## Warnings', '', ...f.warnings.map((w) => `- ${w}`)] : []),
    '',
    '## Citations',
    '',
    ...METHOD_CITATIONS[m.method].map((c) => `- ${c.text}${c.doi ? ` doi:${c.doi}` : ''}${c.url ? ` ${c.url}` : ''}`),
    '',
  ];
  return lines.join('\n');
}
