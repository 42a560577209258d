"""Count the aten operators a piece of code dispatches, and the host syncs it would cause on a GPU.

On a GPU a training step is launch-bound when it dispatches many small operators: each non-view aten operator
is roughly one kernel launch, and each device-to-host read (``.item()``, ``bool(t)``, ``.cpu()``, an operator
whose output size depends on the data) stalls the host until the GPU has caught up. Both are properties of the
code, not of the machine, so they can be counted on a CPU and asserted in tests.

`OpCounter` is a ``TorchDispatchMode``: every aten call made while it is active is counted under the current
section (``with counter.section("backward"): ...``). It tells view operators (free on a GPU) from the others, and
counts as **syncs**:

* ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``, ``float(t)`` on a tensor);
* operators whose output shape depends on the data (``nonzero``, ``masked_select``, boolean indexing, ``unique``,
  ``repeat_interleave`` without ``output_size``);
* device-to-host copies: ``Tensor.cpu()``, ``Tensor.tolist()`` and ``Tensor.numpy()`` on a tensor that did not
  already come from ``.cpu()`` (on a CPU run every tensor is a host tensor, so the counter tracks which storages
  a ``.cpu()`` produced; reading those again is free, as on a GPU).

It also counts **host tensors**: tensors built from Python data (``torch.tensor``, ``torch.as_tensor`` of a list;
``aten.lift_fresh``), which on a GPU run are host-to-device copies when built on the device.

Backward work runs in the calling thread on a CPU, so a ``loss.backward()`` inside a section is counted there. On a
GPU, autograd runs the backward in a device thread that the mode does not see: use this counter on the CPU.
"""
import contextlib
import traceback
from collections import Counter
from typing import Dict, Iterator, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "SYNC_OPS"]

_aten = torch.ops.aten

#: operators that read device memory on the host (a sync on a GPU)
SYNC_OPS = {
    _aten._local_scalar_dense.default,
    _aten.nonzero.default,
    _aten.nonzero_static.default,
    _aten.masked_select.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor,
    _aten.is_nonzero.default,
    _aten.equal.default,
    _aten.allclose.default,
}
_HOST_DATA_OPS = {_aten.lift_fresh.default}


class OpCounter(TorchDispatchMode):
    """Counts aten operators per section, views apart, and host syncs.

    Attributes (after use):
        ops: Counter section -> non-view operators.
        views: Counter section -> view operators.
        syncs: Counter section -> host syncs.
        host_tensors: Counter section -> tensors built from Python data.
        by_op: Counter (section, operator name) -> calls (non-view operators only).
        sync_sites: list of (section, what, short stack) for every sync, for finding them.

    Args:
        record_stacks: keep a short Python stack for each sync (slower; for debugging).
    """

    def __init__(self, record_stacks: bool = False):
        super().__init__()
        self.section_name = "other"
        self.ops: Counter = Counter()
        self.views: Counter = Counter()
        self.syncs: Counter = Counter()
        self.host_tensors: Counter = Counter()
        self.by_op: Counter = Counter()
        self.sync_sites: List = []
        self.record_stacks = record_stacks
        self._host_storages = set()
        self._suppress = 0
        self._patches: Dict[str, object] = {}

    # ------------------------------------------------------------------ sections
    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Count what runs inside under ``name`` (sections nest; the innermost wins)."""
        previous, self.section_name = self.section_name, name
        try:
            yield
        finally:
            self.section_name = previous

    def total(self, what: str = "ops", sections: Optional[List[str]] = None) -> int:
        counter = getattr(self, what)
        return sum(v for k, v in counter.items() if sections is None or k in sections)

    # ------------------------------------------------------------------ dispatch
    def _record_sync(self, what: str) -> None:
        self.syncs[self.section_name] += 1
        stack = "".join(traceback.format_stack(limit=8)[:-2]) if self.record_stacks else ""
        self.sync_sites.append((self.section_name, what, stack))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._suppress:
            return func(*args, **kwargs)
        if func in _HOST_DATA_OPS:
            self.host_tensors[self.section_name] += 1
        elif func.is_view:
            self.views[self.section_name] += 1
        else:
            self.ops[self.section_name] += 1
            self.by_op[(self.section_name, func.overloadpacket.__name__)] += 1
        if func in SYNC_OPS:
            self._record_sync(func.overloadpacket.__name__)
        return func(*args, **kwargs)

    # ------------------------------------------------------------------ device-to-host reads
    def _is_host(self, t: torch.Tensor) -> bool:
        try:
            return t.untyped_storage().data_ptr() in self._host_storages
        except (RuntimeError, NotImplementedError):
            return False

    def _wrap_methods(self) -> None:
        counter = self
        original = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "numpy", "item")}
        self._patches = original

        def cpu(t, *a, **k):
            if not counter._is_host(t):
                counter._record_sync("cpu")
            out = original["cpu"](t, *a, **k)
            counter._host_storages.add(out.untyped_storage().data_ptr())
            return out

        def reader(name):
            def read(t, *a, **k):
                host = counter._is_host(t)
                if not host and name != "item":
                    counter._record_sync(name)
                if host:  # reading a host copy costs nothing on a GPU run
                    counter._suppress += 1
                try:
                    return original[name](t, *a, **k)
                finally:
                    if host:
                        counter._suppress -= 1

            return read

        torch.Tensor.cpu = cpu
        for name in ("tolist", "numpy", "item"):
            setattr(torch.Tensor, name, reader(name))

    def _unwrap_methods(self) -> None:
        for name, fn in self._patches.items():
            setattr(torch.Tensor, name, fn)
        self._patches = {}

    def __enter__(self):
        self._wrap_methods()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._unwrap_methods()

    # ------------------------------------------------------------------ report
    def top_ops(self, section: Optional[str] = None, n: int = 15) -> List:
        """The ``n`` most called non-view operators (of one section, or all)."""
        counts: Counter = Counter()
        for (sec, name), v in self.by_op.items():
            if section is None or sec == section:
                counts[name] += v
        return counts.most_common(n)
