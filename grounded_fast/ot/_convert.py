"""numpy <-> torch plumbing for the POT-compatible API: numpy (or lists) in -> numpy out,
torch in -> torch out on the same device and dtype."""
from __future__ import annotations

import numpy as np
import torch


class Converter:
    """Turns the user's arrays into torch tensors and results back into the user's type."""

    def __init__(self, *arrays):
        present = [x for x in arrays if x is not None and not (hasattr(x, "__len__") and len(x) == 0)]
        kinds = {isinstance(x, torch.Tensor) for x in present}
        if len(kinds) > 1:
            raise TypeError("mixed numpy and torch inputs: pass all arrays as numpy or all as torch")
        self.torch_in = kinds == {True}
        tensors = [x for x in present if isinstance(x, torch.Tensor)]
        if self.torch_in:
            devices = {t.device for t in tensors}
            if len(devices) > 1:
                raise ValueError(f"inputs are on different devices: {sorted(map(str, devices))}")
            dtypes = {t.dtype for t in tensors}
            if len(dtypes) > 1:
                raise TypeError(f"inputs have different dtypes: {sorted(map(str, dtypes))}")
            self.device, self.dtype = tensors[0].device, tensors[0].dtype
        else:
            dts = {np.asarray(x).dtype for x in present}
            self.np_dtype = np.result_type(*dts) if dts else np.float64
            if not np.issubdtype(self.np_dtype, np.floating):
                self.np_dtype = np.float64
            self.device, self.dtype = torch.device("cpu"), torch.from_numpy(np.zeros(0, self.np_dtype)).dtype

    def to_torch(self, x):
        if x is None:
            return None
        if isinstance(x, torch.Tensor):
            return x
        return torch.as_tensor(np.asarray(x, dtype=self.np_dtype))

    def out(self, x):
        if x is None or self.torch_in:
            return x
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
            return x[()] if x.ndim == 0 else x
        if isinstance(x, list):
            return [self.out(v) for v in x]
        return x
