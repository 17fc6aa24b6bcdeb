#!/usr/bin/python3
"""The reference PyTorch N2V (../shared/reference/n2v_torch.py, the peer blindspot's N2V is compared
with) step for step, plus what bench:parity needs around it: the training loss of every step, BSD68
PSNR at chosen steps, and switches that each turn one part of it into what blindspot does, so a gap
can be traced one factor at a time. With no switch it is the reference: the same data, seeds, random
draws, network, optimiser, masking and evaluation (written out here, not imported, because the
reference runs its training at import time).
usage: n2v_torch_parity.py --steps 200 --frac 0.015 --threads 2 --work /tmp/n2vref-work --out curve.json
       [--eval-at 100,200] [--limit 68] [--init glorot] [--widths csbdeep] [--bn-eps 1e-3]
       [--adam-eps 1e-7] [--train-fraction 0.9] [--norm global]"""
import argparse, glob, json, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '2')
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
shared = os.path.join(here, '..', '..', 'shared')
ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=1200); ap.add_argument('--frac', type=float, default=0.015)
ap.add_argument('--threads', type=int, default=2); ap.add_argument('--work', default='/tmp/n2vref-work')
ap.add_argument('--shared', default=shared, help='the shared folder with data/ and reference/')
ap.add_argument('--out', required=True, help='JSON file for the loss curve and PSNRs')
ap.add_argument('--eval-at', default='', help='comma-separated steps to score BSD68 at (the last step always)')
ap.add_argument('--limit', type=int, default=68, help='BSD68 images scored (sorted order)')
ap.add_argument('--save-denoised', default='', help='folder for the last evaluation\'s float32 TIFFs')
# Switches towards blindspot (defaults: the reference).
ap.add_argument('--init', choices=['torch', 'glorot'], default='torch', help='glorot: Keras glorot-uniform kernels, zero biases')
ap.add_argument('--widths', choices=['torch', 'csbdeep'], default='torch',
                help='csbdeep: the last conv of the bottom and of each decoder level halves its width (blindspot/n2v U-Net)')
ap.add_argument('--bn-eps', type=float, default=1e-5); ap.add_argument('--bn-momentum', type=float, default=0.1)
ap.add_argument('--adam-eps', type=float, default=1e-8)
ap.add_argument('--train-fraction', type=float, default=1.0, help='0.9: train on the first 90%% of Train400 (blindspot\'s validation split)')
ap.add_argument('--dump', default='', help='folder: write the initial weights and the first --steps batches and losses (bench/parityStep.ts)')
ap.add_argument('--norm', choices=['reference', 'global'], default='reference', help='global: std over all pixels together')
a = ap.parse_args()
sys.path.insert(0, os.path.join(a.shared, 'reference'))
import imgtools

torch.set_num_threads(a.threads); torch.manual_seed(0); rng = np.random.default_rng(0)
data = os.path.join(a.shared, 'data')
for name, seed in (('Train400', 7), ('BSD68', 11)):
    d = os.path.join(a.work, name)
    if not os.path.isdir(d): imgtools.noisy_set(os.path.join(data, name), d, 25, seed)
train = [imgtools.load(p).astype(np.float32) for p in sorted(glob.glob(a.work + '/Train400/*.tif'))]
train = train[:int(round(len(train) * a.train_fraction))]
mu = float(np.mean([t.mean() for t in train])); sd = float(np.sqrt(np.mean([t.var() for t in train])))
if a.norm == 'global': sd = float(np.sqrt(np.mean([((t - mu) ** 2).mean() for t in train])))
train = [(t - mu) / sd for t in train]

def conv_bn(ci, co): return [nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co, eps=a.bn_eps, momentum=a.bn_momentum), nn.ReLU()]
def block(ci, co, last=None): return nn.Sequential(*conv_bn(ci, co), *conv_bn(co, last or co))
class UNet(nn.Module):
    def __init__(s, f=32):
        super().__init__(); s.e1, s.e2 = block(1, f), block(f, 2*f)
        if a.widths == 'torch':
            s.b = block(2*f, 4*f); s.d2, s.d1 = block(6*f, 2*f), block(3*f, f)
        else:  # CSBDeep: bottom 4f -> 2f, decoder 2f -> f, f -> f
            s.b = block(2*f, 4*f, 2*f); s.d2, s.d1 = block(4*f, 2*f, f), block(2*f, f)
        s.out = nn.Conv2d(f, 1, 1)
    def forward(s, x):
        e1 = s.e1(x); e2 = s.e2(F.max_pool2d(e1, 2)); b = s.b(F.max_pool2d(e2, 2))
        d2 = s.d2(torch.cat([F.interpolate(b, scale_factor=2), e2], 1))
        d1 = s.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return s.out(d1)

def batch(n=16, p=64):
    box = int(round(1 / np.sqrt(a.frac)))  # one masked pixel per box x box cell
    X = np.empty((n, 1, p, p), np.float32); M = np.zeros_like(X); Y = np.empty_like(X)
    for i in range(n):
        t = train[rng.integers(len(train))]; y0, x0 = rng.integers(0, t.shape[0]-p+1), rng.integers(0, t.shape[1]-p+1)
        q = np.rot90(t[y0:y0+p, x0:x0+p], rng.integers(4)); q = q[:, ::-1] if rng.random() < .5 else q
        Y[i, 0] = q; x = q.copy()
        for by in range(0, p, box):
            for bx in range(0, p, box):
                yy = min(p-1, by + rng.integers(box)); xx = min(p-1, bx + rng.integers(box))
                while True:
                    dy, dx = rng.integers(-2, 3, 2)
                    if dy or dx: break
                x[yy, xx] = q[np.clip(yy+dy, 0, p-1), np.clip(xx+dx, 0, p-1)]; M[i, 0, yy, xx] = 1
        X[i, 0] = x
    return map(torch.from_numpy, (X, Y, M))

def evaluate(net, save=''):
    """Mean BSD68 PSNR as the reference scores it: whole image, reflect-padded to a multiple of 4, BN in eval mode."""
    net.eval(); vals = []
    from PIL import Image
    if save: os.makedirs(save, exist_ok=True)
    with torch.no_grad():
        for p in sorted(glob.glob(a.work + '/BSD68/*.tif'))[:a.limit]:
            y = (imgtools.load(p).astype(np.float32) - mu) / sd; h, w = y.shape; H, W = -(-h//4)*4, -(-w//4)*4
            yp = np.pad(y, ((0, H-h), (0, W-w)), mode='reflect')
            d = net(torch.from_numpy(yp)[None, None])[0, 0, :h, :w].numpy() * sd + mu
            if save: Image.fromarray(d.astype(np.float32), mode='F').save(os.path.join(save, os.path.basename(p)))
            stem = os.path.splitext(os.path.basename(p))[0]
            vals.append(imgtools.psnr(imgtools.load(os.path.join(data, 'BSD68', stem + '.png')), d.astype(np.float32)))
    net.train(); return float(np.mean(vals)), [round(float(v), 3) for v in vals]

net = UNet()
if a.init == 'glorot':
    for m in net.modules():
        if isinstance(m, nn.Conv2d): nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)
opt = torch.optim.Adam(net.parameters(), 4e-4, eps=a.adam_eps); t0 = time.time()
if a.dump:  # raw float32, C order; [N, 1, H, W] batches are laid out as NHWC with one channel
    os.makedirs(a.dump, exist_ok=True); shapes = {}
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point: v.numpy().astype(np.float32).tofile(os.path.join(a.dump, k + '.bin')); shapes[k] = list(v.shape)
eval_at = sorted({int(s) for s in a.eval_at.split(',') if s} | {a.steps})
losses, psnrs, eval_s = [], [], 0.0
for s in range(a.steps):
    X, Y, M = batch(); loss = (((net(X) - Y) ** 2) * M).sum() / M.sum()
    if a.dump:
        for n_, t_ in (('X', X), ('Y', Y), ('M', M)): t_.numpy().tofile(os.path.join(a.dump, f'{n_}{s}.bin'))
    opt.zero_grad(); loss.backward()
    if a.dump and s == 0:  # the first gradients, before any update
        os.makedirs(os.path.join(a.dump, 'grad0'), exist_ok=True)
        for k, v in net.named_parameters(): v.grad.numpy().astype(np.float32).tofile(os.path.join(a.dump, 'grad0', k + '.bin'))
    opt.step(); losses.append(round(loss.item(), 6))
    if a.dump and s < 3:  # the weights after the first updates
        os.makedirs(os.path.join(a.dump, f'after{s}'), exist_ok=True)
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point: v.numpy().astype(np.float32).tofile(os.path.join(a.dump, f'after{s}', k + '.bin'))
    if s % 200 == 0: print(f'step {s} loss {loss.item():.4f} {time.time()-t0:.0f}s', flush=True)
    if s + 1 in eval_at:
        e0 = time.time(); m, n = evaluate(net, a.save_denoised if s + 1 == a.steps else ''); eval_s += time.time() - e0
        psnrs.append({'step': s + 1, 'psnr': round(m, 3), 'images': len(n), 'perImage': n}); print(f'step {s+1} BSD68 PSNR {m:.3f} ({len(n)} images)', flush=True)
switches = {k: getattr(a, k) for k in ('init', 'widths', 'bn_eps', 'bn_momentum', 'adam_eps', 'train_fraction', 'norm')}
result = {'implementation': 'pytorch', 'torch': torch.__version__, 'steps': a.steps, 'frac': a.frac, 'threads': a.threads,
          'switches': switches, 'normalisation': {'offset': mu, 'scale': sd}, 'trainImages': len(train),
          'parameters': sum(p.numel() for p in net.parameters()), 'psnr': psnrs[-1]['psnr'], 'psnrAt': psnrs,
          'trainSeconds': round(time.time() - t0 - eval_s, 1), 'losses': losses}
with open(a.out, 'w') as f: json.dump(result, f)
if a.dump:
    with open(os.path.join(a.dump, 'dump.json'), 'w') as f: json.dump({'weights': shapes, 'steps': a.steps, 'losses': losses, 'switches': switches}, f)
print(json.dumps({k: v for k, v in result.items() if k != 'losses'}))
