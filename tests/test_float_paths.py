"""CI runs the suite twice (README, "Set up"): as installed, then with ``ATEN_CPU_CAPABILITY=default
ONEDNN_MAX_CPU_ISA=SSE41``, so that torch takes its generic kernels and oneDNN its SSE4.1 code. That
second pass only proves something if the floats really change: here a small CNN's logits and
gradients are computed in two subprocesses, one with the setting and one without, and must differ
in their bits (as they would on another CPU) while agreeing to float32 rounding.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

#: The second pass's setting (README.md and .ci/run).
GENERIC = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}

SCRIPT = """
import json, torch, torch.nn.functional as F
from ensembles.models.zoo import build
torch.set_num_threads(1)
torch.manual_seed(0)
model = build("small_cnn", 10, width=4).eval()
inputs = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
logits = model(inputs)
F.cross_entropy(logits, torch.arange(8) % 10).backward()
gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "logits": logits.detach().flatten().tolist(),
                  "gradient": gradient.tolist()}))
"""


def computed(**setting):
    environment = {key: value for key, value in os.environ.items() if key not in GENERIC}
    environment.update(setting, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_second_pass_takes_another_float_path():
    native, generic = computed(), computed(**GENERIC)
    assert generic["capability"] == "DEFAULT"
    if native["capability"] == "DEFAULT":
        pytest.skip("this CPU runs torch's generic kernels already: the two passes share one float path")
    for name in ("logits", "gradient"):
        ours, theirs = np.array(native[name], dtype=np.float32), np.array(generic[name], dtype=np.float32)
        assert not np.array_equal(ours, theirs), f"the {name} have the same bits on both passes"
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)  # the same numbers up to rounding

