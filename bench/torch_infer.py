#!/usr/bin/python3
"""PyTorch CPU inference speed of the reference U-Net (../shared/reference/n2v_torch.py: depth 2,
32 filters, batch norm; eval mode, no_grad), 2D 512x512 and its 3D analogue (Conv3d) on 32x128x128,
for bench/speed.ts to set beside ONNX Runtime and tfjs in the same run. Debian python3-torch.
bench/engineSpeed.ts runs it with glibc malloc told to reuse memory (MALLOC_MMAP_MAX_=0,
MALLOC_TRIM_THRESHOLD_ huge: see TORCH_MALLOC_REUSE there; without them every forward pass faults in
fresh pages for its 32 MiB activations) and, for the record, without.
With --train-steps S it also times S training steps of the 2D network (train mode, Adam 4e-4, the
MSE on a 1.5% mask, batch 16 of 64x64, after the warm-up steps): trainStepsPerS, for the training ratios.
usage: torch_infer.py --threads N [--warmup W] --runs2d R --runs3d R [--train-steps S]
  -> one JSON line {mpx2d, mvox3d, trainStepsPerS, torch, malloc}"""
import argparse, json, os, time
import torch, torch.nn as nn, torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument('--threads', type=int, default=1); ap.add_argument('--runs2d', type=int, default=3); ap.add_argument('--runs3d', type=int, default=1)
ap.add_argument('--warmup', type=int, default=3); ap.add_argument('--train-steps', type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(a.threads); torch.set_num_interop_threads(1); torch.manual_seed(0)

def unet(dims, f=32):
    Conv, BN = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    def block(ci, co): return nn.Sequential(Conv(ci, co, 3, padding=1), BN(co), nn.ReLU(), Conv(co, co, 3, padding=1), BN(co), nn.ReLU())
    class UNet(nn.Module):
        def __init__(s):
            super().__init__(); s.e1, s.e2, s.b = block(1, f), block(f, 2*f), block(2*f, 4*f)
            s.d2, s.d1, s.out = block(6*f, 2*f), block(3*f, f), Conv(f, 1, 1)
        def forward(s, x):
            e1 = s.e1(x); e2 = s.e2(pool(e1, 2)); b = s.b(pool(e2, 2))
            d2 = s.d2(torch.cat([F.interpolate(b, scale_factor=2), e2], 1))
            d1 = s.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
            return s.out(d1)
    return UNet().eval()

def rate(dims, shape, runs):
    net = unet(dims); x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        for _ in range(a.warmup): net(x)  # untimed: the first passes allocate (see WARMUP_PASSES in engineSpeed.ts)
        t0 = time.perf_counter()
        for _ in range(runs): net(x)
        seconds = time.perf_counter() - t0
    n = 1
    for s in shape: n *= s
    return round(runs * n / 1e6 / seconds, 4)

def train_rate(steps):
    net = unet(2).train(); opt = torch.optim.Adam(net.parameters(), lr=4e-4)
    x = torch.randn(16, 1, 64, 64); y = torch.randn(16, 1, 64, 64); m = (torch.rand(16, 1, 64, 64) < 0.015).float()
    def step():
        opt.zero_grad(); loss = ((net(x) - y) ** 2 * m).sum() / m.sum().clamp(min=1); loss.backward(); opt.step()
    for _ in range(a.warmup): step()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return round(steps / (time.perf_counter() - t0), 3)

malloc = {k: os.environ[k] for k in ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_') if k in os.environ}
print(json.dumps({'torch': torch.__version__, 'threads': a.threads, 'malloc': malloc or 'glibc defaults', 'mpx2d': rate(2, (512, 512), a.runs2d),
                  'mvox3d': rate(3, (32, 128, 128), a.runs3d) if a.runs3d > 0 else None,
                  'trainStepsPerS': train_rate(a.train_steps) if a.train_steps > 0 else None}))
