"""One training loop for every fine-tuning method: accelerate, checkpoints, resume, progress, Ctrl-C.

Example::

    >>> from concept_edit.core.trainloop import TrainLoop
    >>> loop = TrainLoop(pipe, total=300, seed=0, checkpoint_dir="out.safetensors.ckpt")
    >>> edit = EditParams(pipe, resolve_sites(pipe, "xattn"), name="esd")
    >>> loop.attach(edit, optimizer="adam", lr=1e-4)       # the optimiser; accelerate's wrappers
    >>> loop.run(lambda step, g: loss_of(step, g))          # resumes first when resume=True
    >>> loop.report()                                       # '300 steps' | 'resumed at 200, ran 100 steps'
    >>> loop.artifact_written()                             # the finished run's checkpoint goes

The arithmetic of one step is fixed here (forward ``step_fn``, ``zero_grad``, backward, the edit's
grad/weight hand-over, optimiser step), so every method trains the same way. One process (no
launcher) touches no accelerate at all. Under ``accelerate launch`` (or torchrun) the edit's
trainable tensors are gathered into a small module, :class:`Trainables`, that
``accelerator.prepare`` wraps in DistributedDataParallel. The tensors live inside the frozen
denoiser, which is never wrapped (no copy, no sync of frozen weights); DDP hooks their grads as
autograd fills them, and because DDP arms its all-reduce only in its own ``forward``, the whole
loss is computed *through* the wrapper (``forward(fn)`` runs ``fn()``): the averaged grads are in
place when ``backward`` returns, before the optimiser step. ``find_unused_parameters`` is on, so an
edit tensor a step does not reach cannot stall the reduction.

Ranks draw from ``step_generator(seed, step, stream=rank)``: rank 0 draws what a one-process run
draws, the others their own batches. A launch that cannot give the processes it asked for is a
:class:`LaunchError`, never a quiet one-process run.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
import time

import torch
from tqdm.auto import tqdm

from .families import detect_family, get_family
from .training import Checkpointer, EditParams, make_optimizer, step_generator

_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(ValueError):
    """A distributed launch that cannot run as asked; the message names the fix."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint is saved and the message says how to continue."""


def launched() -> bool:
    """Started by ``accelerate launch``, torchrun or MPI (then accelerate runs the processes)."""
    env = os.environ
    return ("LOCAL_RANK" in env or "ACCELERATE_USE_CPU" in env or "ACCELERATE_MIXED_PRECISION" in env
            or any(int(env.get(k, "1") or 1) > 1 for k in _SIZE_VARS))


def launch_device(device: str) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under a multi-process launch (load each rank's model on its
    own GPU); anything else unchanged."""
    rank = int(os.environ.get("LOCAL_RANK", -1))
    if rank < 0 or device != "cuda" or not launched():
        return device
    n = torch.cuda.device_count()
    if rank >= n:
        raise LaunchError(f"this launch starts process {rank} on the GPUs but only {n} are visible; "
                          f"lower --num_processes to {n}")
    return f"cuda:{rank}"


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("CONCEPT_EDIT_DIST_TIMEOUT", 600)))


def _accelerator(cpu: bool):
    """The launch's Accelerator; every way it can fail to start is one LaunchError."""
    env = os.environ
    mp = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp not in ("no", ""):
        raise LaunchError(f"accelerate launch --mixed_precision {mp}: training runs in the model's own "
                          "dtype; launch with --mixed_precision no and pick it with --dtype")
    if env.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper() not in ("NO", ""):
        raise LaunchError("accelerate launch --dynamo_backend: not supported here; launch with "
                          "--dynamo_backend no")
    want = max(int(env.get(k, "1") or 1) for k in _SIZE_VARS)
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        acc = Accelerator(cpu=cpu, kwargs_handlers=[
            InitProcessGroupKwargs(timeout=_timeout()),
            DistributedDataParallelKwargs(find_unused_parameters=True)])
    except Exception as e:  # noqa: BLE001  (re-raised as one line, with the cause chained)
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LaunchError(f"the distributed launch did not start ({type(e).__name__}: {first}); check "
                          "--num_processes/--num_machines against the processes and hosts that can "
                          "join, MASTER_ADDR/MASTER_PORT, or run without a launcher") from e
    if acc.num_processes < want:
        raise LaunchError(f"the launch asked for {want} processes but accelerate set up "
                          f"{acc.num_processes}; the model's device (--device) must match the launch "
                          "(--cpu with --device cpu, GPUs with --device cuda)")
    if acc.num_processes == 1 and env.get("MASTER_ADDR") and "WORLD_SIZE" not in env:
        raise LaunchError("accelerate launch --cpu started one process where --num_processes/"
                          "--num_machines asked for more (several CPU processes need --mpirun_hostfile); "
                          "launch with --multi_gpu --num_processes N --device cpu, or torchrun "
                          "--nproc_per_node N")
    return acc


class Trainables(torch.nn.Module):
    """The edit's trainable tensors as one module (shared with the denoiser, not copied), for
    ``accelerator.prepare``. ``forward(fn, *args)`` returns ``fn(*args)``: the loss is computed
    through the (DDP) wrapper, which is what arms its gradient all-reduce."""

    def __init__(self, params):
        super().__init__()
        self.params = torch.nn.ParameterList(params)

    def forward(self, fn, *args):
        return fn(*args)


@contextlib.contextmanager
def _deferred_sigint():
    """Ctrl-C waits until the block is done (an optimiser step is never half applied)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # no Python-level handler to swap (not the main thread, or one set from C)
        return
    pending = []
    old = signal.signal(signal.SIGINT, lambda *a: pending.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending and old is not signal.SIG_IGN:
            if callable(old):
                old(signal.SIGINT, None)
            raise KeyboardInterrupt


class TrainLoop:
    """Steps ``[start, min(stop_at, total))`` of a fine-tune on ``pipe``'s denoiser.

    ``progress``: True (a tqdm bar), False, or ``fn(step, total, logs, t)`` called on the main
    process once before the first step (``logs`` empty) and after each step (``logs['loss']``;
    ``t`` = ``time.perf_counter()``). Checkpoints (main process only) every ``every`` steps, at
    ``stop_at`` and on Ctrl-C; ``artifact_written()`` removes them once the run is complete.
    """

    def __init__(self, pipe, total: int, seed: int = 0, checkpoint_dir: str | None = None,
                 resume: bool = False, every: int = 100, stop_at: int | None = None,
                 progress=True, desc: str = "train"):
        self.total, self.seed, self.every, self.desc = total, seed, every, desc
        self.end = total if stop_at is None else min(stop_at, total)
        self.ck, self.resume = Checkpointer(checkpoint_dir), resume
        self.callback = progress if callable(progress) else None
        module = getattr(pipe, get_family(detect_family(pipe)).denoiser)
        device = next(module.parameters()).device
        self.acc = _accelerator(cpu=device.type == "cpu") if launched() else None
        self.rank = self.acc.process_index if self.acc else 0
        self.world = self.acc.num_processes if self.acc else 1
        self.is_main = self.rank == 0
        self.bars = progress is True and self.is_main  # tqdm bars (also for trajectory banks)
        if self.acc and self.world > 1 and device.type != "cpu" and device != self.acc.device:
            pipe.to(self.acc.device)  # every rank on its own GPU
        self.start = self.step = self._saved = 0
        self.losses: list[float] = []
        self.seconds = 0.0

    # -- set-up ----------------------------------------------------------------------------
    def generator(self, step: int) -> torch.Generator:
        """This rank's randomness of ``step`` (rank 0 = a one-process run's)."""
        return step_generator(self.seed, step, stream=self.rank)

    def attach(self, edit: EditParams, optimizer: str = "adam", lr: float = 1e-4,
               weight_decay: float = 0.0) -> "TrainLoop":
        """Build the optimiser and hand it and the edit's tensors to accelerate. A checkpoint is
        loaded later, when ``run`` starts: what the method builds in between from the untrained
        model (trajectory banks) is what an uninterrupted run builds."""
        self.edit = edit
        self.opt = make_optimizer(optimizer, edit.parameters(), lr, weight_decay)
        edit.prepare_model_params()
        self.module = Trainables(edit.grad_tensors())
        self._opt = self.opt
        if self.acc:
            self.module, self._opt = self.acc.prepare(self.module, self.opt, device_placement=[False, False])
        return self

    # -- the loop ------------------------------------------------------------------------
    def run(self, step_fn) -> list[float]:
        """``step_fn(step, generator) -> loss`` (a scalar tensor) for each remaining step."""
        if self.resume and self.ck.exists():
            self.start, extra = self.ck.load(self.edit, self.opt)
            self.step = self._saved = self.start
            self.losses = list(extra.get("losses", []))
        t0 = time.time()
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, disable=not self.bars)
        try:
            self._emit({})
            while self.step < self.end:
                s = self.step
                loss = self.module(step_fn, s, self.generator(s))
                self._opt.zero_grad(set_to_none=True)
                loss.backward()
                self.edit.after_backward()
                with _deferred_sigint():
                    self._opt.step()
                    self.edit.after_step()
                    self.losses.append(self._mean(loss))
                    self.step = s + 1
                    if self.step % self.every == 0:
                        self.save()
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.5f}")
                self._emit({"loss": self.losses[-1]})
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._interrupted()) from None
        finally:
            bar.close()
            self.seconds = time.time() - t0
        if self.step < self.total:
            self.save()  # stopped early (stop_at): resumable from here
        for p in self.edit.parameters():
            p.requires_grad_(False)
        return self.losses

    def _mean(self, loss: torch.Tensor) -> float:
        if self.world > 1:
            return self.acc.reduce(loss.detach().float(), reduction="mean").item()
        return loss.item()

    def _emit(self, logs: dict) -> None:
        if self.callback and self.is_main:
            self.callback(self.step, self.total, logs, time.perf_counter())

    def _interrupted(self) -> str:
        where = f"interrupted at step {self.step}/{self.total}"
        if not self.ck.dir:
            return f"{where}; nothing saved (no checkpoint directory)"
        with _deferred_sigint():
            self.save()
        if not self.ck.exists():
            return f"{where}, before any checkpoint; rerun without --resume"
        return f"{where}; checkpoint in {self.ck.dir}: rerun the same command with --resume to continue"

    # -- checkpoints and reports -----------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the current step (main process; skipped when already saved)."""
        if self.is_main and self.ck.dir and self.step > self._saved:
            self.ck.save(self.step, self.edit, self.opt, {"losses": self.losses})
            self._saved = self.step

    @property
    def ran(self) -> int:
        """Steps this call ran (not counting those a resumed checkpoint had done)."""
        return self.step - self.start

    @property
    def complete(self) -> bool:
        return self.step >= self.total

    def report(self) -> str:
        """'300 steps', 'resumed at 300, ran 100 steps' or '... stopped at 150/400'."""
        out = f"resumed at {self.start}, ran {self.ran} steps" if self.start else f"{self.ran} steps"
        return out if self.complete else f"{out}, stopped at {self.step}/{self.total}"

    def artifact_written(self) -> None:
        """The artifact is on disk: a complete run's checkpoint is dropped (main process)."""
        if self.is_main and self.complete:
            self.ck.clear()
