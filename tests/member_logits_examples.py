"""Member logits shared by the ensemble-metric tests: one hand-worked example and seeded random ones."""
import numpy as np
import torch

# Three members, four samples, three classes; member predictions
#   member 0: [0, 1, 2, 0]   member 1: [0, 2, 2, 1]   member 2: [1, 1, 0, 2]   labels: [0, 1, 2, 2]
# Member errors 1/4, 2/4, 2/4 (mean 5/12). Sample 3 is a three-way tie for the vote; its logit
# sizes 5, 3, 4 break it for "probs" and "logits".
HAND_LOGITS = [
    [[5, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]],
    [[5, 0, 0], [0, 0, 5], [0, 0, 5], [0, 3, 0]],
    [[0, 5, 0], [0, 5, 0], [5, 0, 0], [0, 0, 4]],
]
HAND_LABELS = [0, 1, 2, 2]


def hand_example(dtype=torch.float64):
    return torch.tensor(HAND_LOGITS, dtype=dtype), torch.tensor(HAND_LABELS)


def random_member_logits(seed, n_members, n_samples, n_classes, discrete=False, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    if discrete:  # small integers: many ties between classes and between members
        member_logits = torch.randint(-2, 3, (n_members, n_samples, n_classes), generator=generator).to(dtype)
    else:
        member_logits = 3 * torch.randn(n_members, n_samples, n_classes, generator=generator, dtype=dtype)
    labels = torch.randint(0, n_classes, (n_samples,), generator=generator)
    return member_logits, labels


def numpy_softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
