"""Processes of a distributed run, through accelerate.

Launched with ``accelerate launch`` (or torchrun), every process runs the same recipe loop on
its own shard of the prompts; gradients are summed across processes before each optimizer
step, so every process applies the same update and the weights never drift apart. A plain
``vgen train`` is one process and all of this is a no-op.
"""

from __future__ import annotations

import sys

import torch


class Dist:
    def __init__(self):
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.device = self.state.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's share of a global list (rank, rank + world, ...): a prompt's whole
        candidate group always stays in one process."""
        if len(items) % self.world:
            raise ValueError(f"{len(items)} prompts per step cannot be split evenly over {self.world} processes")
        return items[self.rank::self.world]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors over processes in place (one flat all-reduce)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def max_(self, t: torch.Tensor) -> None:
        """Elementwise maximum over processes, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)

    def gather(self, obj):
        """Every process's ``obj``, in rank order (a list of length world)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def shutdown() -> None:
    """Tear the process group down while the interpreter is whole. Left to interpreter exit,
    gloo's worker threads can still hold tensors whose release needs the GIL, and the process
    aborts (SIGABRT) after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def end_rank(rc: int) -> None:
    """End a process of a multi-process launch (torchrun / accelerate launch) with ``rc`` at once,
    skipping the interpreter's teardown. Even after ``shutdown``, a rank of a 2-process gloo run
    now and then aborted there ("terminate called without an active exception", SIGABRT, no
    Python frame left on any thread: a C++ object with a live thread destroyed at exit), which
    failed a run whose work was done. Every file is closed by then; the streams are flushed here."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def on_main(fn):
    """``fn()`` run by the main process alone and its result shared with every process (e.g. the
    run directory); a UserError it raises is raised in every process, so none is left waiting."""
    import os

    from vgen.errors import UserError

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return fn()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    box = [None]
    if state.is_main_process:
        try:
            box = [("ok", fn())]
        except UserError as e:
            box = [("error", str(e))]
    broadcast_object_list(box)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value
