"""An encoder's forward pass run as one TorchScript graph once a process runs it a second time.

Run layer by layer, a forward pass goes back to Python (and takes the interpreter lock) between every layer,
and keeps each batch normalisation apart from the convolution before it. Traced and frozen, the whole graph
runs in C++ with the normalisations folded into the convolutions, which on 2 CPU cores takes about 40% off the
forward pass and leaves the interpreter to a server's request threads meanwhile (README "Speed").

Tracing costs about 0.4 s, so the first call runs as it is and the second traces: a command that runs the
model once (`geoloc locate ONE.jpg`) never pays for it, while a server's warm-up (which runs the model twice)
and every batch job pay it once. The trace is checked against the plain pass on the batch that made it and on
one of another size; a model that does not trace, or traces to other features, keeps running as it is, and so
does one whose trace later fails on a batch (each logged). CPU only (models.device.traces). torch.jit is
deprecated in favour of torch.compile, which needs a C++ toolchain at run time and minutes of compilation on a
CPU; should a torch release drop it, the failed trace leaves the model as it is.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import torch

from geoloc.models.device import traces

log = logging.getLogger(__name__)

# torch.jit's deprecation notice, once per trace (the tracer's own warnings, about shapes, still show)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


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
        traced = self._traced
        if traced is not None:
            try:
                return traced(x)
            except RuntimeError as exc:  # a shape the trace did not foresee: layer by layer from now on
                log.warning("the encoder's trace failed on a batch of %d (%s): it runs layer by layer from now on",
                            len(x), exc)
                self._traced = None
                return self._plain(x)
        if not self.enabled or not traces(x.device):  # off, on a GPU, or given up: no lock on this path
            return self._plain(x)
        with self._lock:
            self._calls += 1
            if self._traced is None and self.enabled and self._calls >= 2:
                expected = self._plain(x)
                self._traced = self._trace(x, expected)
                return expected
        return self._plain(x)

    def _trace(self, x: torch.Tensor, expected: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The frozen trace, or None (and never again) if it cannot be made, or gives other features than the
        layers do on the batch that made it or on a batch of another size."""
        self.enabled = False
        other = torch.cat([x, x[:1]])
        try:
            traced = torch.jit.freeze(torch.jit.trace(self._module.eval(), x, check_trace=False))
            same = _agree(traced(x), expected) and _agree(traced(other), self._plain(other))
            if same:
                traced(x)  # a graph's first two runs at a batch size are slow: the caller's next is not
        except Exception as exc:
            log.warning("the encoder runs layer by layer: it could not be traced (%s)", exc)
            return None
        if not same:
            log.warning("the encoder runs layer by layer: its trace gave other features")
            return None
        return traced


def _agree(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Within 1e-4 of each feature (the trace folds batch normalisation into the convolutions: 2e-5 measured)."""
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=0.0, atol=1e-4)
