"""Mixed precision inside a step: the caller's autocast for the model's forward passes,
float32 for everything else, and :class:`torch.amp.GradScaler` loss scaling for every
backward pass.

A step of :class:`~dynamtl.MultiTask` does more than one forward and backward pass
(per-task gradients, look-aheads, meta-gradients, finite differences). Under mixed
precision each of them must behave as the single backward pass of an ordinary AMP loop:

* **autocast**: when the caller runs the step inside ``torch.autocast(device, dtype)``,
  every forward pass of the model runs under that autocast (the real one and the
  functional ones at other parameters), and the task losses are cast to float32. The rest
  of the step — weights, aggregations (Gram matrices, projections), look-ahead steps and
  hypergradient arithmetic — runs with autocast *off*, in the parameters' float32.
* **loss scaling**: with a ``GradScaler``, every gradient is taken of S·loss (S the
  scaler's current scale) and divided by S at once, so that weightings and aggregations
  read *true* gradients; a non-finite one (an overflow at that scale) raises
  :class:`GradientOverflow`, which :class:`~dynamtl.MultiTask` turns into a skipped step.
  What the step leaves in ``.grad`` is S × the step's gradient, as after
  ``scaler.scale(loss).backward()``, so ``scaler.unscale_``, ``scaler.step`` and
  ``scaler.update`` work as in any AMP loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from dynamtl.distributed import Replicas

LOW_PRECISION = (torch.float16, torch.bfloat16)


class GradientOverflow(ArithmeticError):
    """A gradient of the scaled losses was infinite or NaN: the step must be skipped.
    ``losses``: the step's task losses, once known."""

    losses: Tensor | None = None


class Precision:
    """The mixed-precision settings of one model's steps.

    Args:
        scaler: a ``torch.amp.GradScaler`` (ignored when disabled), or ``None`` for no loss
            scaling.
        device_type: the device type of the model's parameters (``"cuda"``, ``"cpu"``…), whose
            autocast state is read.
    """

    def __init__(self, scaler: torch.amp.GradScaler | None = None, device_type: str = "cpu") -> None:
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.device_type = device_type
        self.autocast: torch.dtype | None = None  # the caller's autocast dtype during a step
        self.before_backward: Callable[[Tensor], None] | None = None
        """Called with the (scaled) loss before every ``.backward()`` of a step: a training
        framework's preparation of its gradient synchronisation (Lightning's DDP reducer under
        manual optimisation, see :mod:`dynamtl.lightning`)."""
        self._scale: Tensor | None = None
        self._share = 1.0  # 1/k for one of k accumulated micro-batches

    @contextlib.contextmanager
    def step(self, device: torch.device, micro_batches: int = 1) -> Iterator[None]:
        """Run one step: remember the caller's autocast for :meth:`forward`, turn it off for
        the rest of the step, and read the scaler's scale (without a device sync). With
        ``micro_batches`` = k, what the step leaves in ``.grad`` is divided by k (the
        gradients that methods read are not)."""
        self._share = 1.0 / micro_batches
        previous = self.autocast
        self.autocast = _autocast_dtype(self.device_type)
        if self.scaler is not None:
            # scaler.scale() also creates the scale tensor that scaler.step() requires
            self._scale = self.scaler.scale(torch.ones((), dtype=torch.float32, device=device))
        try:
            with torch.autocast(self.device_type, enabled=False):
                yield
        finally:
            self.autocast, self._scale, self._share = previous, None, 1.0

    def forward(self) -> contextlib.AbstractContextManager[object]:
        """The context of a forward pass of the model: the caller's autocast, if any."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        """Forward passes in full precision in the block, whatever the caller's autocast (for
        finite differences of losses, which a 16-bit forward pass would round away)."""
        previous, self.autocast = self.autocast, None
        try:
            yield
        finally:
            self.autocast = previous

    def backward(self, total: Tensor, retain_graph: bool = False, through_model: bool = True) -> None:
        """``total.backward()`` of S·total (divided by the number of micro-batches), leaving
        scaled gradients in ``.grad``. ``through_model=False``: ``total`` reaches no model
        parameter (a weighting's own regulariser), so :attr:`before_backward` is not called."""
        scaled = total if self._scale is None else total * self._scale
        if self._share != 1.0:
            scaled = scaled * self._share
        if self.before_backward is not None and through_model:
            self.before_backward(scaled)
        scaled.backward(retain_graph=retain_graph)

    def scaled(self, gradient: Tensor) -> Tensor:
        """S·``gradient`` (divided by the number of micro-batches): a true gradient as it
        must be left in ``.grad``."""
        scaled = gradient if self._scale is None else gradient * self._scale
        return scaled if self._share == 1.0 else scaled * self._share

    def local_gradients(
        self,
        output: Tensor,
        inputs: Sequence[Tensor],
        *,
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> list[Tensor | None]:
        """∂output/∂inputs of this process (``None`` where unused), taken of S·output and
        divided by S (differentiably, with ``create_graph``)."""
        if self._scale is None:
            return list(
                torch.autograd.grad(
                    output, inputs, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True
                )
            )
        raw = torch.autograd.grad(
            output * self._scale, inputs, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True
        )
        return [None if g is None else g / self._scale for g in raw]

    def gradients(
        self, output: Tensor, inputs: Sequence[Tensor], replicas: Replicas, *, retain_graph: bool = False
    ) -> list[Tensor | None]:
        """∂output/∂inputs averaged over the processes (detached) and checked: see
        :meth:`local_gradients` and :meth:`check`."""
        grads = replicas.means(self.local_gradients(output, inputs, retain_graph=retain_graph))
        self.check(grads)
        return grads

    def check(self, tensors: Sequence[Tensor | None]) -> None:
        """With a scaler, :class:`GradientOverflow` if any tensor has an inf or NaN (one device
        sync). Call it on values that every process shares (after the averages), so that all
        of them skip the same steps."""
        if self.scaler is None:
            return
        present = [t for t in tensors if t is not None]
        if present and not bool(torch.stack([torch.isfinite(t).all() for t in present]).all()):
            raise GradientOverflow("a gradient of the scaled losses is not finite")


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of the caller's autocast on ``device_type``, ``None`` when it is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def float32_loss(loss: Tensor) -> Tensor:
    """A task loss in float32 when autocast computed it in 16 bits (weights, sums and
    differences of losses are then taken in float32)."""
    return loss.float() if loss.dtype in LOW_PRECISION else loss
