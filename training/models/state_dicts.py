"""What keeps a state dict from loading into a module, said in one line: the one check behind
`model.pretrained: <file>` (a timm encoder's weights) and checkpoints of an older network."""
from __future__ import annotations

from typing import Collection, Mapping


def state_dict_mismatch(expected: Mapping, given: Mapping, ignored: Collection[str] = ()) -> str:
    """"" when `given` has exactly `expected`'s keys and shapes (keys in `ignored` aside), else
    "missing (N): a, b ...; unexpected (N): ...; shape mismatch (N): key (given) vs (expected)"."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(k for k in set(given) - set(expected) if k not in ignored)
    shapes = sorted(f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                    if k in given and tuple(given[k].shape) != tuple(v.shape))
    found = (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
    return "; ".join(f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                     for label, keys in found if keys)
