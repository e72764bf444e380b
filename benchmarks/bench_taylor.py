"""Hutchinson's ``vᵀHv`` by second-order forward (Taylor) mode, against our Hessian-vector products
and a PyHessian-style fresh graph per probe, in one process. An experiment, not part of the package.

    python benchmarks/bench_taylor.py small_cnn "{}" 8
    python benchmarks/bench_taylor.py resnet18 "{'width': 16}" 2

Along ``θ + t v`` every activation has a value and first and second derivatives in ``t``; they are
stacked along the batch axis, ``[x, ẋ_1..ẋ_K, ẍ_1..ẍ_K]`` for ``K`` probes, so that every layer that
is linear in its input and acts per sample (pooling, adds, reshapes) handles all three at once.
Layers with weights use the product rule (``ẏ = W ẋ + V x``, ``ÿ = W ẍ + 2 V ẋ`` with ``V`` the
probe), ReLU and max pooling their activation pattern, eval batch norm its affine form; at the end
``vᵀHv = ż ᵀ∇²ℓ ż + ∇ℓ · z̈`` for cross-entropy. It needs no graph, but does ~4 convolutions per
layer and probe against ~3 of a product on a kept graph.
Measured numbers (slower than our product, hence not adopted): ``benchmarks/README.md``.
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensembles.models.zoo import build  # noqa: E402
from landscape.hvp import LossHessian, rademacher_rows  # noqa: E402


class Taylor(TorchFunctionMode):
    def __init__(self, tangents, n, k):
        super().__init__()
        self.t, self.n, self.k = tangents, n, k

    def split(self, x):
        n, k = self.n, self.k
        return x[:n], x[n:n + k * n].unflatten(0, (k, n)), x[n + k * n:].unflatten(0, (k, n))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n, k = self.n, self.k
        if func is F.conv2d or func is F.linear:
            if func is F.conv2d:
                x, weight, bias, stride, padding, dilation, groups = (list(args) + [None, 1, 0, 1, 1][len(args) - 2:])[:7]
                stride = kwargs.get("stride", stride); padding = kwargs.get("padding", padding)
                dilation = kwargs.get("dilation", dilation); groups = kwargs.get("groups", groups)
                bias = kwargs.get("bias", bias)
                op = lambda a, w, g=groups: F.conv2d(a, w, None, stride, padding, dilation, g)
            else:
                x, weight = args[:2]; bias = args[2] if len(args) > 2 else kwargs.get("bias")
                op = None
            V = self.t[id(weight)]
            y = func(x, weight) if func is F.linear else op(x, weight)
            y0, y1, y2 = self.split(y)
            x0, x1, x2 = self.split(x)
            if func is F.conv2d:
                cout = weight.shape[0]
                a = op(x0, V.flatten(0, 1), groups)  # (n, k*cout, ...)
                a = a.unflatten(1, (k, cout)).transpose(0, 1)
                b = op(x1.transpose(0, 1).flatten(1, 2), V.flatten(0, 1), k * groups)  # (n, k*cout, ...)
                b = b.unflatten(1, (k, cout)).transpose(0, 1)
            else:
                a = torch.einsum("ni,koi->kno", x0, V)
                b = torch.einsum("kni,koi->kno", x1, V)
            y1 = y1 + a
            y2 = y2 + 2 * b
            if bias is not None:
                shape = (1, -1) + (1,) * (y0.dim() - 2)
                y0 = y0 + bias.reshape(shape)
                Vb = self.t[id(bias)]
                y1 = y1 + Vb.reshape((k,) + shape)
            return torch.cat([y0, y1.flatten(0, 1), y2.flatten(0, 1)])
        if func is F.batch_norm:
            x, mean, var = args[:3]
            weight = kwargs.get("weight", args[3] if len(args) > 3 else None)
            bias = kwargs.get("bias", args[4] if len(args) > 4 else None)
            eps = kwargs.get("eps", args[7] if len(args) > 7 else 1e-5)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            r = torch.rsqrt(var + eps)
            s0 = weight * r; t0 = bias - mean * s0
            s1 = self.t[id(weight)] * r; t1 = self.t[id(bias)] - mean * s1  # (k, C)
            y = x * s0.reshape(shape)
            y0, y1, y2 = self.split(y)
            x0, x1, x2 = self.split(x)
            kshape = (k,) + shape
            y0 = y0 + t0.reshape(shape)
            y1 = y1 + x0 * s1.reshape(kshape) + t1.reshape(kshape)
            y2 = y2 + 2 * x1 * s1.reshape(kshape)
            return torch.cat([y0, y1.flatten(0, 1), y2.flatten(0, 1)])
        if func in (F.relu, torch.relu, torch.Tensor.relu):
            x = args[0]
            x0 = x[:n]
            mask = (x0 > 0).to(x.dtype)
            return (x.unflatten(0, (1 + 2 * k, n)) * mask).flatten(0, 1)
        if func is F.max_pool2d:
            x = args[0]
            rest = dict(kwargs); rest.pop("return_indices", None)
            _, idx = F.max_pool2d(x[:n], *args[1:], **rest, return_indices=True)
            xs = x.unflatten(0, (1 + 2 * k, n)).flatten(-2)
            out = xs.gather(-1, idx.flatten(-2).expand(1 + 2 * k, *idx.flatten(-2).shape))
            return out.view(((1 + 2 * k) * n,) + idx.shape[1:])
        return func(*args, **kwargs)


def quadratic_forms(model, x, y, probes_by_name):
    k = next(iter(probes_by_name.values())).shape[0]
    n = x.shape[0]
    tangents = {id(p): probes_by_name[name] for name, p in model.named_parameters()}
    X = torch.cat([x, x.new_zeros((2 * k * n,) + x.shape[1:])])
    with torch.no_grad(), Taylor(tangents, n, k):
        Z = model(X)
    z0, z1, z2 = Z[:n], Z[n:n + k * n].unflatten(0, (k, n)), Z[n + k * n:].unflatten(0, (k, n))
    p = z0.softmax(-1)
    g = p - F.one_hot(y, p.shape[-1]).to(p.dtype)
    # z1^T (diag p - p p^T) z1 + g . z2, mean over samples
    quad = (z1 * z1 * p).sum(-1) - (z1 * p).sum(-1) ** 2 + (g * z2).sum(-1)
    return quad.mean(1)


if __name__ == "__main__":
    torch.set_num_threads(2)
    name = sys.argv[1]; opts = eval(sys.argv[2]); K = int(sys.argv[3])
    torch.manual_seed(0)
    model = build(name, 10, **opts).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, .1); m.running_var.uniform_(0.5, 2)
    x = torch.randn(128, 3, 32, 32); y = torch.randint(0, 10, (128,))
    names = [nm for nm, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    D = sum(sizes)
    block = rademacher_rows(1, 0, K, D, torch.float32, torch.device("cpu"))
    probes = {nm: t.reshape(K, *p.shape) for nm, t, p in zip(names, block.split(sizes, 1), model.parameters())}
    op = LossHessian(model, F.cross_entropy, [(x, y)])
    ref = (op.matmat(block) * block).sum(1)
    q = quadratic_forms(model, x, y, probes)
    print("ref", ref[:4].tolist(), "\njet", q[:4].tolist(), "max rel", ((q - ref).abs().max() / ref.abs().max()).item())
    params = list(model.parameters())
    vs = [[p.view_as(qq) for p, qq in zip(r.split(sizes), params)] for r in block]
    def pyh():
        for v in vs:
            l = F.cross_entropy(model(x), y)
            gs = torch.autograd.grad(l, params, create_graph=True)
            torch.autograd.grad(gs, params, grad_outputs=v)
    def ours():
        LossHessian(model, F.cross_entropy, [(x, y)]).matmat(block)
    fs = {"pyhessian-like": pyh, "ours hvp": ours, "jets": lambda: quadratic_forms(model, x, y, probes)}
    for f in fs.values(): f()
    r = {kk: [] for kk in fs}
    for _ in range(3):
        for kk, f in fs.items():
            s = time.perf_counter(); f(); r[kk].append(time.perf_counter() - s)
    med = {kk: statistics.median(v) / K for kk, v in r.items()}
    print(name, K, {kk: f"{v:.3f}s/probe x{med['pyhessian-like']/v:.2f}" for kk, v in med.items()})
