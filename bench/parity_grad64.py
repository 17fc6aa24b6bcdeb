#!/usr/bin/python3
"""Float32 rounding or a different computation? The reference U-Net's first gradients in float64
(from the weights and batch that `n2v_torch_parity.py --dump DIR` wrote) against the reference's
float32 gradients (DIR/grad0) and ours (DIR/ours_grad0_<backend>, written by bench/parityStep.ts): per tensor
the relative L2 error ||g - g64|| / ||g64||. Equal maths: both errors of the same (float32) order.
usage: parity_grad64.py DIR > result.json"""
import json, os, sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
d = sys.argv[1]; info = json.load(open(os.path.join(d, 'dump.json'))); sw = info['switches']
torch.set_num_threads(1)
def conv_bn(ci, co): return [nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co, eps=sw['bn_eps']), nn.ReLU()]
def block(ci, co): return nn.Sequential(*conv_bn(ci, co), *conv_bn(co, co))
class UNet(nn.Module):
    def __init__(s, f=32):
        super().__init__(); s.e1, s.e2, s.b = block(1, f), block(f, 2*f), block(2*f, 4*f)
        s.d2, s.d1, s.out = block(6*f, 2*f), block(3*f, f), nn.Conv2d(f, 1, 1)
    def forward(s, x):
        e1 = s.e1(x); e2 = s.e2(F.max_pool2d(e1, 2)); b = s.b(F.max_pool2d(e2, 2))
        d2 = s.d2(torch.cat([F.interpolate(b, scale_factor=2), e2], 1))
        d1 = s.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return s.out(d1)
net = UNet().double()
state = {k: torch.from_numpy(np.fromfile(os.path.join(d, k + '.bin'), np.float32).reshape(shape).astype(np.float64)) for k, shape in info['weights'].items()}
net.load_state_dict(state, strict=False)
X, Y, M = (torch.from_numpy(np.fromfile(os.path.join(d, f'{n}0.bin'), np.float32).reshape(16, 1, 64, 64).astype(np.float64)) for n in 'XYM')
loss = (((net(X) - Y) ** 2) * M).sum() / M.sum(); loss.backward()
rows = {}; ours = sorted(f for f in os.listdir(d) if f.startswith('ours_grad0_'))
for k, p in net.named_parameters():
    if not os.path.exists(os.path.join(d, ours[0], k + '.bin')): continue  # conv biases before BN: ours has none
    g64 = p.grad.numpy().ravel(); norm = np.linalg.norm(g64)
    err = lambda f: float(np.linalg.norm(np.fromfile(os.path.join(d, f, k + '.bin'), np.float32).astype(np.float64) - g64) / norm)
    rows[k] = {'pytorch': float('%.2e' % err('grad0')), **{f[len('ours_grad0_'):]: float('%.2e' % err(f)) for f in ours}}
worst = {key: max(rows.items(), key=lambda r: r[1][key]) for key in next(iter(rows.values()))}
print(json.dumps({'loss64': loss.item(), 'measure': '||g32 - g64|| / ||g64|| per tensor', 'worst': worst, 'perTensor': rows}, indent=1))
