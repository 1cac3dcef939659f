"""The shared training loop: resume == uninterrupted, Ctrl-C, checkpoint lifetime, progress,
broken launches, and two processes under ``accelerate launch`` with synced gradients."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from concept_edit.core.families import resolve_sites
from concept_edit.core.io import load_safetensors
from concept_edit.core.trainloop import TrainingInterrupted, TrainLoop
from concept_edit.core.training import EditParams
from concept_edit.methods.esd import EsdConfig, train_esd
from concept_edit.methods.slider import SliderConfig, train_slider

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
ESD = dict(concepts=["circle", "square"], iterations=4, bank_size=2, ddim_steps=4, lr=1e-2,
           batch_size=2, checkpoint_every=100)


def _slider_cfg(pairs_dir, **kw):
    return SliderConfig.from_dict(dict(
        prompts=[dict(target="a {}", positive="a large {}", unconditional="a small {}", guidance=2.0)],
        preservation=["circle", "square"], iterations=4, bank_size=2, bank_refresh=2, ddim_steps=4,
        lr=1e-2, batch_size=2, image_pairs=dict(low=f"{pairs_dir}/low", high=f"{pairs_dir}/high",
                                                prompt="a shape"), **kw))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (root / sub).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")
    return str(root)


def _same(a, b):
    ta, tb = a.edit.artifact_tensors(), b.edit.artifact_tensors()
    return a.losses == b.losses and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _interrupt_at(n):
    def progress(step, total, logs, t):
        if step == n:
            raise KeyboardInterrupt
    return progress


def test_slider_resume_and_interrupt_equal_uninterrupted(tiny_pipe, pairs, tmp_path):
    """A slider (text + image pairs, bank refreshed) stopped by stop_at or by Ctrl-C and resumed
    trains exactly as one uninterrupted run; the checkpoint stays until the artifact is written."""
    cfg = _slider_cfg(pairs)
    a = train_slider(tiny_pipe("sd1"), cfg, progress=False)
    ck = str(tmp_path / "ck")
    part = train_slider(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, progress=False, stop_at=1)
    assert part.loop.report() == "1 steps, stopped at 1/4" and os.path.exists(f"{ck}/optim.pt")
    part.save(str(tmp_path / "partial.safetensors"))
    assert os.path.exists(f"{ck}/optim.pt")              # an unfinished run keeps its checkpoint
    with pytest.raises(TrainingInterrupted, match=r"step 3/4; checkpoint in .*--resume"):
        train_slider(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, resume=True, progress=_interrupt_at(3))
    b = train_slider(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, resume=True, progress=False)
    assert b.loop.report() == "resumed at 3, ran 1 steps" and _same(a, b)
    b.save(str(tmp_path / "s.safetensors"))
    assert not os.path.exists(ck)                         # done: the checkpoint folder is gone


def test_esd_direct_interrupt_and_resume(tiny_pipe, tmp_path):
    """Direct fine-tuning (fp32 masters) interrupted between steps resumes bit-identically."""
    cfg = EsdConfig(variant="x-strict", train="direct", **ESD)
    a = train_esd(tiny_pipe("sd1"), cfg, progress=False)
    ck = str(tmp_path / "ck")
    with pytest.raises(TrainingInterrupted, match="step 2/4"):
        train_esd(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, progress=_interrupt_at(2))
    b = train_esd(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, resume=True, progress=False)
    assert b.loop.start == 2 and b.loop.ran == 2 and _same(a, b)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a terminal: a shell's background job (nohup ... &)
    starts with SIGINT ignored, and an ignored Ctrl-C is left ignored by the loop."""
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, prev)


def test_loop_ctrl_c_waits_for_the_update_and_progress(tiny_pipe, tmp_path, python_sigint):
    """SIGINT inside the optimiser update lands after it: the checkpoint holds that step, whole.
    The progress callback sees (step, total, logs, t) with increasing perf_counter times."""
    pipe = tiny_pipe("sd1")
    seen = []
    loop = TrainLoop(pipe, total=5, checkpoint_dir=str(tmp_path / "ck"),
                     progress=lambda *a: seen.append(a))
    edit = EditParams(pipe, resolve_sites(pipe, "xattn"), name="t")
    loop.attach(edit, "adam", 1e-2)
    real = edit.after_step
    edit.after_step = lambda: (real(), loop.step == 1 and signal.raise_signal(signal.SIGINT))

    def step(i, g):
        return sum(((p - torch.randn(p.shape, generator=g)) ** 2).sum() for p in edit.parameters())

    with pytest.raises(TrainingInterrupted, match="step 2/5"):
        loop.run(step)
    assert load_safetensors(str(tmp_path / "ck" / "state.safetensors"))  # saved at step 2
    assert torch.load(str(tmp_path / "ck" / "optim.pt"), weights_only=True)["step"] == 2
    assert [s[:2] for s in seen] == [(0, 5), (1, 5)] and seen[0][2] == {}   # step 2 never reported
    assert isinstance(seen[1][2]["loss"], float) and seen[0][3] <= seen[1][3] <= time.perf_counter()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _esd_cmd(tiny, out, steps=2):
    return ["-m", "concept_edit.cli.main", "esd", "--model", tiny, "--concept", "circle; square",
            "--steps", str(steps), "--batch-size", "2", "--bank-size", "2", "--ddim-steps", "4", "--out", out]


def test_broken_launch_is_one_line_error(tiny_dirs, tmp_path):
    """WORLD_SIZE=2 with no second process, and --cpu --num_processes 2 (which accelerate runs as
    ONE process), both fail with a one-line error instead of training alone."""
    out = str(tmp_path / "e.safetensors")
    env = dict(ENV, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), CONCEPT_EDIT_DIST_TIMEOUT="2")
    r = subprocess.run([sys.executable, *_esd_cmd(tiny_dirs("sd1"), out)], capture_output=True,
                       text=True, env=env, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("concept-edit: error: the distributed launch did not "
                                                 "start") and "--num_processes" in last, r.stderr[-2000:]
    env = dict(ENV, ACCELERATE_USE_CPU="True", ACCELERATE_MIXED_PRECISION="no", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))   # what `accelerate launch --cpu --num_processes 2` sets
    r = subprocess.run([sys.executable, *_esd_cmd(tiny_dirs("sd1"), out)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and "started one process" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert not os.path.exists(out)


SPY = """import os, sys
from safetensors.torch import save_file
import concept_edit.methods.esd.train as T
real = T.train_esd
def spy(*a, **k):
    res = real(*a, **k)
    save_file({n: v.contiguous() for n, v in res.edit.artifact_tensors().items()},
              os.path.join(sys.argv[1], f"rank{res.loop.rank}.safetensors"))
    return res
T.train_esd = spy
from concept_edit.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_accelerate_launch_two_processes_sync(tiny_dirs, tiny_pipe, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPUs (--device cpu): both ranks end
    with the same weights (gradients averaged; each drew its own batches, so a one-process run
    differs), the artifact is rank 0's, and the checkpoint folder is gone."""
    out = str(tmp_path / "acc.safetensors")
    (tmp_path / "spy.py").write_text(SPY)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(tmp_path / "spy.py"), str(tmp_path),
           *_esd_cmd(tiny_dirs("sd1"), out, steps=3)[2:], "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ESD-x on circle, square: 3 steps") == 1     # printed by rank 0 only
    r0, r1 = (load_safetensors(str(tmp_path / f"rank{i}.safetensors")) for i in (0, 1))
    art = load_safetensors(out)
    assert set(r0) == set(r1) == set(art) and any(k.endswith("lora_A.weight") for k in art)
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], art[k]) for k in art)
    assert not os.path.exists(out + ".ckpt")
    cfg = EsdConfig(concepts=["circle", "square"], iterations=3, batch_size=2, bank_size=2, ddim_steps=4)
    one = train_esd(tiny_pipe("sd1"), cfg, progress=False).edit.artifact_tensors()
    assert not all(torch.equal(one[k], art[k]) for k in art)
