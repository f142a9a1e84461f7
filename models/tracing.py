"""An encoder's forward pass run as one TorchScript graph once a process runs it a second time.

Run layer by layer, a forward pass goes back to Python (and takes the interpreter lock) between every layer,
and keeps each batch normalisation apart from the convolution before it. Traced and frozen, the whole graph
runs in C++ with the normalisations folded into the convolutions, which on 2 CPU cores takes about 40% off the
forward pass and leaves the interpreter to a server's request threads meanwhile (README "Speed").

Tracing costs about 0.4 s, so the first call runs as it is and the second traces: a command that runs the
model once (`geoloc locate ONE.jpg`) never pays for it, while a server's warm-up (which runs the model twice)
and every batch job pay it once. The trace is checked against the plain pass on the batch that made it; a
model that does not trace, or traces to other features, keeps running as it is (logged). CPU only
(models.device.traces). torch.jit is deprecated in favour of torch.compile, which needs a C++
toolchain at run time and minutes of compilation on a CPU; should a torch release drop it, the failed trace
leaves the model as it is.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import torch

from geoloc.models.device import traces

log = logging.getLogger(__name__)


class _Forward(torch.nn.Module):
    """`forward` as a module, so that it can be traced."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], owner: torch.nn.Module):
        super().__init__()
        self.owner, self._forward = owner, forward  # owner: the parameters the trace freezes in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


class TracedOnReuse:
    """`forward(x)` as given on its first call, traced on its second when `enabled` (see the module's doc)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], owner: torch.nn.Module, enabled: bool):
        self._plain = forward
        self._module = _Forward(forward, owner)
        self.enabled = enabled
        self._calls = 0
        self._traced: torch.jit.ScriptModule | None = None
        self._lock = threading.Lock()

    @property
    def traced(self) -> bool:
        return self._traced is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._traced is not None:
            return self._traced(x)
        with self._lock:
            self._calls += 1
            if self._traced is None and self.enabled and self._calls >= 2 and traces(x.device):
                expected = self._plain(x)
                self._traced = self._trace(x, expected)
                return expected
        return self._traced(x) if self._traced is not None else self._plain(x)

    def _trace(self, x: torch.Tensor, expected: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The frozen trace, or None (and never again) if it cannot be made or gives other features."""
        self.enabled = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes and torch.jit's deprecation
                traced = torch.jit.freeze(torch.jit.trace(self._module.eval(), x, check_trace=False))
                got = traced(x)
                traced(x)  # a graph's first two runs at a batch size are slow: the caller's next is not
        except Exception as exc:
            log.warning("the encoder runs layer by layer: it could not be traced (%s)", exc)
            return None
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
            log.warning("the encoder runs layer by layer: its trace gave other features")
            return None
        return traced
