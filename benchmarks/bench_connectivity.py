"""Connectivity: interpolate() against a plain loop that deep-copies the model for each alpha.

Run: python benchmarks/bench_connectivity.py [--quick]; prints time ratios (loop / ours) per chunk size."""
import copy, statistics, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
from landscape.connectivity import interpolate
torch.set_num_threads(1)
quick = "--quick" in sys.argv

def cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))
def tiny(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3*32*32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

def straightforward(a, b, data, alphas):
    out = []
    sa, sb = a.state_dict(), b.state_dict()
    for al in alphas:
        net = copy.deepcopy(a).eval()
        net.load_state_dict({k: (1-al)*v + al*sb[k] if v.is_floating_point() else v for k, v in sa.items()})
        tot = n = 0
        with torch.no_grad():
            for x, y in data:
                out_ = net(x); tot += F.cross_entropy(out_, y).item() * len(y); n += len(y); acc = (out_.argmax(1) == y).sum().item()
        out.append(tot / n)
    return torch.tensor(out)

def median_time(f, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), r

g = torch.Generator().manual_seed(0)
tiny_data = [(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(20)]
data = [(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)) for _ in range(2 if quick else 4)]
alphas = torch.linspace(0, 1, 21).tolist()
repeats = 3 if quick else 5
print(f"{'model':6} {'method':24} {'median s':>9} {'ratio vs loop':>14} {'max |dloss|':>12}")
for name, make, data in (("tiny", tiny, tiny_data), ("mlp", mlp, data), ("cnn", cnn, data[:2])):
    a, b = make(1), make(2)
    t0, ref = median_time(lambda: straightforward(a, b, data, alphas), repeats)
    print(f"{name:6} {'loop over alphas':24} {t0:9.3f} {1.0:14.2f} {0.0:12.1e}")
    for chunk in (1, 4, 21):
        t, r = median_time(lambda: interpolate(a, b, data, F.cross_entropy, 21, chunk_size=chunk).loss, repeats)
        print(f"{name:6} {'interpolate chunk=%d' % chunk:24} {t:9.3f} {t0 / t:14.2f} {(r.double() - ref.double()).abs().max():12.1e}")
