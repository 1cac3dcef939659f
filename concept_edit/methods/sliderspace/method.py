"""SliderSpace: sample, embed, PCA, then K rank-1 LoRA sliders trained in one run.

Example::

    >>> from concept_edit.core.loading import load
    >>> from concept_edit.methods.sliderspace import SliderSpaceConfig, discover
    >>> model = load()                                        # the toy world
    >>> res = discover(model, SliderSpaceConfig(prompts=["a square"], samples=512, components=8))
    >>> res.sliders[3]                                        # component, sign, explained variance ...
    >>> res.save("out/square")                                # slider_XX.safetensors + manifest + pca

The K sliders are one rank-K LoRA on the chosen sites while training: the up matrix (out x K) has
seeded orthonormal columns and is frozen, the down matrix (K x in) trains, and slider k is
row k of the down matrix with column k of the up matrix. A forward hook on the down projection
multiplies its K outputs by a per-row one-hot mask, so one batched forward runs every slider
on its own rows (rows = stored samples x sliders) next to one shared no-adapter base pass;
the files written are K independent rank-1 LoRAs (diffusers keys).

Per step: one noise level of the sampling schedule (uniform over its first ``max_step_frac``),
``batch_size`` stored samples noised there with seeded noise, x0-hat with the native sampler
(its CFG included) without the sliders (no grad) and with each slider, decoded by the VAE and
embedded by the image encoder with gradients, then ``delta``:
``-cos(phi(x0_k) - phi(x0_base), pc_k)`` or ``absolute``: ``1 - cos(phi(x0_k), pc_k)``
(``bidirectional`` adds rows at -scale towards -pc_k). ``basis: ica`` replaces the principal
components by independent directions inside the top-K principal subspace (``pca.ica``).
After training, each slider's sign is set so that + raises the projection on its direction
(mean over ``sign_samples`` stored samples), and the up vector is flipped in its file when needed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.artifacts import Artifact, lora_edit
from ...core.backbones import SiteError
from ...core.backbones import sites as site_tables
from ...core.hooks import hooks
from ...core.model import model_of
from ...core.null_tokens import null_token_shortcut
from ...core.paths import get_module
from ...core.sampler import sample
from ...core.trainloop import TrainLoop
from ...core.training import EditParams
from ...scorers import get_embedder
from .cache import SampleCache, cache_root, model_fingerprint
from .config import AUTO, SliderSpaceConfig, SliderSpaceError
from .pca import ica, pca

ADAPTER = "sliderspace"
_MASK_HOOK = "concept_edit:sliderspace-mask"


# -- sites and up vectors -----------------------------------------------------------------------
def resolve_sites(model, sites: str = AUTO) -> tuple[str, list[str]]:
    """(label, module paths): ``auto`` is text_kv on UNets/PixArt (the reference's xattn-strict)
    and every attention projection on MMDiT (SD3/FLUX: the reference's flux-attn); ``a+b`` joins
    groups. Only Linear layers (a slider's up/down vectors are vectors)."""
    bb = model.backbone
    if sites == AUTO:
        groups = ("xattn", "selfattn") if bb.site_table is site_tables.MMDIT else ("text_kv",)
    else:
        groups = tuple(g.strip() for g in sites.split("+") if g.strip())
    paths: list[str] = []
    for g in groups:
        try:
            found = model.sites(g)
        except SiteError as e:
            raise SliderSpaceError(str(e)) from None
        paths += [p for p in found if p not in paths]
    label = "+".join(groups)
    if not paths:
        raise SliderSpaceError(f"this {bb.name} model has no layers in site group {label!r}; choose other "
                               "sites (auto, text_kv, xattn, selfattn, noxattn)")
    bad = [p for p in paths if not isinstance(get_module(model.denoiser, p), nn.Linear)]
    if bad:
        raise SliderSpaceError(f"sites {label!r} include non-Linear layers ({bad[0]}, ...); SliderSpace "
                               "trains rank-1 sliders on Linear layers: choose attention sites")
    return label, paths


def orthonormal_columns(rows: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(rows, k) with orthonormal columns (QR of a seeded Gaussian, signs fixed by R's diagonal);
    for k > rows, consecutive blocks of ``rows`` columns are each orthonormal."""
    cols = []
    while sum(c.shape[1] for c in cols) < k:
        m = min(rows, k - sum(c.shape[1] for c in cols))
        q, r = torch.linalg.qr(torch.randn(rows, m, generator=g, dtype=torch.float64))
        cols.append(q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(())))
    return torch.cat(cols, 1).float()


def up_vectors(out_dims: list[int], k: int, seed: int) -> list[torch.Tensor]:
    """The frozen up matrices of the sites (in site order) for ``seed``: what training uses."""
    g = torch.Generator().manual_seed(seed)
    return [orthonormal_columns(d, k, g) for d in out_dims]


# -- x0-hat with gradients ----------------------------------------------------------------------
class _X0(Exception):
    def __init__(self, x0):
        self.x0 = x0


def _stop(x, t, x0, pred):  # the sampler's guidance hook sees the first step's x0-hat: take it
    raise _X0(x0)


def x0_hat(pipe, prompts: list[str], start: torch.Tensor, seeds: list[int], step: int, steps: int,
           guidance: float, size: int, grad: bool, to_end: bool = False) -> torch.Tensor:
    """x0-hat (pipeline-form latents) of clean ``start`` latents noised with seeded noise to step
    ``step`` of the ``steps``-step schedule: one denoiser call (CFG included), or with ``to_end``
    the rest of the schedule (the last step's x0-hat), with gradients when ``grad``. The native
    sampler does the family work; for one call its guidance hook stops it after the first
    prediction."""
    dev = getattr(pipe, "_execution_device", None) or model_of(pipe).device
    gens = [torch.Generator(dev).manual_seed(int(s)) for s in seeds]
    kw = dict(generator=gens, steps=steps, guidance=guidance, height=size, width=size, start_latents=start,
              noise_start=True, start_step=step, x0_grad=grad, output_type="latent")
    if to_end:
        return sample(pipe, prompts, return_x0=True, **kw).x0[-1]
    try:
        sample(pipe, prompts, guidance_fn=_stop, **kw)
    except _X0 as e:
        return e.x0
    raise RuntimeError("the sampler returned before its first prediction")  # pragma: no cover


def decode_tensor(pipe, latents: torch.Tensor, size: int) -> torch.Tensor:
    """Pipeline-form latents -> images in [-1, 1] (N, 3, H, W), differentiable, fp32."""
    from ...core.sampler import decode_tensor as core_decode

    return core_decode(pipe, latents, size, size).float()


# -- the run ------------------------------------------------------------------------------------
@dataclasses.dataclass
class SliderSpaceResult:
    artifact: Artifact                # K rank-1 LoRA edits, names slider_00 ...
    config: SliderSpaceConfig
    basis: dict                       # PCA tensors (mean, components, explained variance ...)
    sliders: list[dict]               # per slider: name, component, sign, explained variance ...
    info: dict                        # model, embedder, prompts, N, seeds, sites, timings, cache
    losses: list[float]
    embeddings: torch.Tensor | None = None
    images: np.ndarray | None = None  # the N samples (as cached)
    loop: TrainLoop | None = None
    cache_dir: str | None = None      # where the samples and embeddings are cached

    def manifest(self, extra: list[dict] | None = None) -> dict:
        """manifest.json: the Artifact directory's ``edits`` list plus the discovery record."""
        sliders = [dict(s, **(extra[i] if extra else {})) for i, s in enumerate(self.sliders)]
        return {"edits": [{"file": f"{n}.safetensors", "method": "sliderspace", "kind": "lora"}
                          for n in self.artifact.names],
                **self.info, "sliders": sliders}

    def save(self, out: str, sheet: np.ndarray | None = None, extra: list[dict] | None = None) -> list[str]:
        """Write OUT/ as a whole (or not at all): slider_XX.safetensors, manifest.json,
        pca.safetensors and, when given, sheet.png."""
        from ...core.io import atomic_dir, atomic_save_file

        with atomic_dir(out) as tmp:
            for name, e in zip(self.artifact.names, self.artifact.edits):
                e.save(os.path.join(tmp, f"{name}.safetensors"))
            atomic_save_file(self.basis, os.path.join(tmp, "pca.safetensors"),
                             metadata={"sliderspace": json.dumps({"embedder": self.info["embedder"],
                                                                 "samples": self.info["samples"]})})
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump(self.manifest(extra), f, indent=1)
            if sheet is not None:
                from PIL import Image

                Image.fromarray(sheet).save(os.path.join(tmp, "sheet.png"))
        if self.loop is not None:
            self.loop.artifact_written()  # a complete run's checkpoint goes
        return [os.path.join(out, f"{n}.safetensors") for n in self.artifact.names]


def run(model, cfg: SliderSpaceConfig, progress=None) -> Artifact:
    """The method contract: ``run(model, cfg) -> Artifact`` with K edits (slider_00 ...)."""
    return discover(model, cfg, progress=progress).artifact


def _bars(progress) -> bool:
    return progress is True or progress is None


def discover(model, cfg: SliderSpaceConfig, progress=None, checkpoint_dir: str | None = None,
             resume: bool = False) -> SliderSpaceResult:
    """Sample (cached), embed (cached), PCA, train K sliders; the model is left as it was.

    ``progress``: True/None (a bar per stage), False, or a TrainLoop callback
    ``fn(step, total, logs, t)`` for the training stage."""
    model = model_of(model)
    with null_token_shortcut(model.pipe):   # exact; SD3 without T5 runs ~3x faster
        return _discover(model, cfg, progress, checkpoint_dir, resume)


def _discover(model, cfg: SliderSpaceConfig, progress, checkpoint_dir, resume) -> SliderSpaceResult:
    pipe, bb = model.pipe, model.backbone
    t_all = time.perf_counter()
    label, paths = resolve_sites(model, cfg.sites)  # before any work: bad sites fail at once
    d = model.defaults
    steps, size = cfg.steps or d["steps"], cfg.size or d["size"]
    guidance = d["guidance"] if cfg.guidance is None else cfg.guidance
    K, N = cfg.components, cfg.samples
    embedder = get_embedder(cfg.embedder, device=str(model.device))
    timings = {}

    # 1. samples (cached by model, prompts, seed, steps, guidance, size)
    t = time.perf_counter()
    cache = SampleCache(cache_root(cfg.cache_dir), model_fingerprint(pipe), cfg.prompts, cfg.seed, steps,
                        guidance, size)
    sampled = cache.fill(pipe, N, progress=_bars(progress))
    latents, images = cache.load(N)
    timings["sampling_s"] = round(time.perf_counter() - t, 2)

    # 2. embeddings (cached per embedder) and PCA
    t = time.perf_counter()
    emb, emb_reused = cache.embeddings(embedder, images, progress=_bars(progress))
    timings["embedding_s"] = round(time.perf_counter() - t, 2)
    basis = pca(emb, max(cfg.pca_components, K))
    if basis["components"].shape[0] < K:
        raise SliderSpaceError(f"the embeddings span {basis['components'].shape[0]} components, fewer than "
                               f"the {K} asked for (embedding width {emb.shape[1]}); lower --components")
    directions = basis
    if cfg.basis == "ica":
        directions = ica(emb, K, basis, seed=cfg.seed)
        basis = dict(basis, ica_components=directions["components"],
                     ica_explained_variance=directions["explained_variance"],
                     ica_explained_variance_ratio=directions["explained_variance_ratio"])
    pcs = directions["components"][:K].to(model.device)

    # 3. sliders
    up_seed = cfg.seed if cfg.up_seed is None else cfg.up_seed
    t = time.perf_counter()
    trainer = _Trainer(model, cfg, paths, pcs, latents, embedder, steps, guidance, size, up_seed)
    try:
        losses, loop_report = trainer.train(progress, checkpoint_dir, resume)
        timings["training_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        gains = trainer.gains()
        timings["sign_s"] = round(time.perf_counter() - t, 2)
        tensors = trainer.slider_tensors()
    finally:
        trainer.close()
    timings["total_s"] = round(time.perf_counter() - t_all, 2)

    info = {"method": "sliderspace", "model": model.source, "family": bb.name, "prompts": list(cfg.prompts),
            "embedder": cfg.embedder, "embedder_fingerprint": embedder.fingerprint, "samples": N,
            "seed": cfg.seed, "up_seed": up_seed, "components": K, "basis": cfg.basis, "sites": label,
            "n_layers": len(paths), "loss": cfg.loss, "iterations": cfg.iterations, "steps": steps,
            "guidance": guidance, "size": size, "timings": timings, "train": loop_report,
            "cache": {"key": os.path.basename(cache.dir), "sampled": sampled, "embedded": not emb_reused}}
    ratio = directions["explained_variance_ratio"]
    sliders, edits, names = [], [], []
    for k in range(K):
        sign = 1 if gains[k] >= 0 else -1
        rec = {"name": f"slider_{k:02d}", "file": f"slider_{k:02d}.safetensors", "component": k, "sign": sign,
               "explained_variance": round(float(ratio[k]), 6),
               "variance": float(directions["explained_variance"][k]), "basis": cfg.basis,
               "projection_gain": round(abs(float(gains[k])), 6)}
        sd = {key: (v * sign if key.endswith("lora_B.weight") else v) for key, v in tensors[k].items()}
        lora = {"rank": 1, "alpha": 1.0, "group": label, "start": cfg.start, "name": rec["name"],
                "recommended_scales": [-2, 2]}
        extra = {"sliderspace": {**rec, "prompts": list(cfg.prompts), "embedder": cfg.embedder,
                                 "samples": N, "seed": cfg.seed, "up_seed": up_seed},
                 "train_seconds": timings["training_s"]}
        edits.append(lora_edit(pipe, sd, "sliderspace", cfg.to_dict(), lora, extra))
        names.append(rec["name"])
        sliders.append(rec)
    art = Artifact(edits, names)
    return SliderSpaceResult(art, cfg, basis, sliders, info, losses, emb, images, trainer.loop, cache.dir)


def load_sliders(out: str) -> tuple[Artifact, dict]:
    """(Artifact of the K sliders, manifest) of a directory written by ``SliderSpaceResult.save``."""
    from ...core.io import ArtifactError

    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        raise ArtifactError(f"{out} is not a SliderSpace output (no manifest.json); pass the --out "
                            "directory of `concept-edit sliderspace discover`")
    with open(path) as f:
        manifest = json.load(f)
    files = [e["file"] for e in manifest.get("edits", [])]
    if not files:
        raise ArtifactError(f"{path} lists no sliders; re-run `concept-edit sliderspace discover`")
    arts = [Artifact.load(os.path.join(out, f)) for f in files]
    return Artifact([a.edits[0] for a in arts], [f[:-len(".safetensors")] for f in files]), manifest


class _Trainer:
    """The K sliders as one masked rank-K adapter; see the module docstring."""

    def __init__(self, model, cfg, paths, pcs, latents, embedder, steps, guidance, size, up_seed):
        self.model, self.cfg, self.pcs, self.embedder = model, cfg, pcs, embedder
        self.pipe, self.paths = model.pipe, paths
        self.latents, self.steps, self.guidance, self.size = latents, steps, guidance, size
        self.K = cfg.components
        self.prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(len(latents))]
        self.train_steps = cfg.train_steps or steps  # the schedule x_t is drawn from
        self.kmax = max(1, round(cfg.max_step_frac * self.train_steps))
        self.kmin = min(round(cfg.start * self.train_steps), self.kmax - 1) if cfg.train_after_start else 0
        self.mask: torch.Tensor | None = None
        self.edit = EditParams(self.pipe, paths, mode="lora", rank=self.K, alpha=float(self.K), name=ADAPTER,
                               train="AB" if cfg.train_up else "A", seed=cfg.seed)
        self.router = self.edit.router
        self._hooked = False
        self.loop: TrainLoop | None = None
        try:
            self._init_vectors(up_seed)
            hooks(model.denoiser).add(_MASK_HOOK, [f"{p}.lora_A.{ADAPTER}" for p in paths], output=self._masked)
            self._hooked = True
        except Exception:
            self.close()
            raise

    @torch.no_grad()
    def _init_vectors(self, up_seed: int) -> None:
        layers = list(self.router.layers(ADAPTER))
        ups = up_vectors([layer.lora_B[ADAPTER].weight.shape[0] for _, layer in layers], self.K, up_seed)
        g = torch.Generator().manual_seed(self.cfg.seed)
        for (_, layer), up in zip(layers, ups):
            layer.lora_B[ADAPTER].weight.copy_(up)
            a = layer.lora_A[ADAPTER].weight
            bound = self.cfg.init_scale / math.sqrt(a.shape[1])  # Kaiming-uniform (a = sqrt 5) x init_scale
            a.copy_((torch.rand(a.shape, generator=g) * 2 - 1) * bound)

    def _masked(self, out, path):
        m = self.mask
        if m is None:
            return None
        r = out.shape[0]
        if r != m.shape[0]:  # CFG doubles the batch: [uncond; cond], the same rows twice
            m = m.repeat(r // m.shape[0], 1)
        return out * m.view(r, *([1] * (out.ndim - 2)), self.K).to(out)

    def _rows(self, idx: list[int], sliders: list[int], signs=(1,)):
        """Rows (sample b, slider j, direction +-1) and their (rows, K) mask of scales."""
        rows = [(b, j, sg) for b in range(len(idx)) for j in sliders for sg in signs]
        mask = torch.zeros(len(rows), self.K, device=self.model.device)
        for r, (_, j, sg) in enumerate(rows):
            mask[r, j] = sg * self.cfg.scale
        return rows, mask

    def _x0(self, idx, seeds, step, grad):
        # a masked pass always runs with autograd on: without it the sampler folds every adapter
        # into the weights (merged inference) and the per-row mask would never act
        z = x0_hat(self.pipe, [self.prompts[i] for i in idx], self.latents[idx].to(self.model.device), seeds,
                   step, self.train_steps, self.guidance, self.size, grad or self.mask is not None,
                   to_end=bool(self.cfg.train_steps))
        return z if grad else z.detach()

    def _embed(self, z):
        return self.embedder.embed_tensor(decode_tensor(self.pipe, z, self.size))

    def features(self, idx, seeds, step, sliders, grad, base: bool = True, signs=(1,)):
        """(base features (B, D) or None, slider features (rows, D), rows [(b, slider, +-1)])."""
        fb = None
        if base:
            with torch.no_grad(), self.router.disabled():
                fb = self._embed(self._x0(idx, seeds, step, False))
        rows, mask = self._rows(idx, sliders, signs)
        self.mask = mask
        try:
            with torch.set_grad_enabled(grad):
                z = self._x0([idx[r[0]] for r in rows], [seeds[r[0]] for r in rows], step, grad)
                self.mask = None
                fs = self._embed(z)
        finally:
            self.mask = None
        return fb, fs, rows

    def loss(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg, K = self.cfg, self.K
        idx = torch.randint(len(self.latents), (cfg.batch_size,), generator=g).tolist()
        k = int(torch.randint(self.kmin, self.kmax, (1,), generator=g))
        seeds = torch.randint(2 ** 31 - 1, (cfg.batch_size,), generator=g).tolist()
        sliders = list(range(K)) if cfg.sliders_per_step in (0, K) else \
            sorted(torch.randperm(K, generator=g)[:cfg.sliders_per_step].tolist())
        signs = (1, -1) if cfg.bidirectional else (1,)
        fb, fs, rows = self.features(idx, seeds, k, sliders, True, base=cfg.loss == "delta", signs=signs)
        target = self.pcs[[j for _, j, _ in rows]] * torch.tensor([float(sg) for *_, sg in rows],
                                                                  device=fs.device)[:, None]
        if cfg.loss == "delta":
            d = fs - fb[[b for b, _, _ in rows]]
            return -F.cosine_similarity(d, target, dim=-1).mean()
        return (1 - F.cosine_similarity(fs, target, dim=-1)).mean()

    def train(self, progress, checkpoint_dir, resume) -> tuple[list[float], str]:
        cfg = self.cfg
        loop = TrainLoop(self.pipe, cfg.iterations, seed=cfg.seed, checkpoint_dir=checkpoint_dir, resume=resume,
                         every=cfg.checkpoint_every, progress=True if progress is None else progress,
                         desc="sliderspace train")
        loop.attach(self.edit, cfg.optimizer, cfg.lr)
        self.loop = loop
        loop.run(self.loss)
        return loop.losses, loop.report()

    @torch.no_grad()
    def gains(self) -> list[float]:
        """Mean projection change on pc_k of slider k at +scale over ``sign_samples`` stored
        samples (each at a seeded random step): its sign makes + raise the projection."""
        n = min(self.cfg.sign_samples, len(self.latents))
        if n == 0:
            return [1.0] * self.K
        g = torch.Generator().manual_seed(self.cfg.seed + 7_777)
        tot = torch.zeros(self.K, device=self.model.device)
        for i in range(n):
            k = int(torch.randint(self.kmin, self.kmax, (1,), generator=g))
            s = int(torch.randint(2 ** 31 - 1, (1,), generator=g))
            fb, fs, rows = self.features([i], [s], k, list(range(self.K)), False)
            tot += ((fs - fb[[0] * len(rows)]) * self.pcs).sum(-1)
        return (tot / n).tolist()

    def slider_tensors(self) -> list[dict[str, torch.Tensor]]:
        """Slider k as a rank-1 LoRA: row k of the down matrix, column k of the up matrix
        (alpha/rank folded, 1 here), diffusers keys."""
        comp = self.model.backbone.denoiser
        out = [dict() for _ in range(self.K)]
        for p, layer in self.router.layers(ADAPTER):
            a = layer.lora_A[ADAPTER].weight.detach().float().cpu()
            b = layer.lora_B[ADAPTER].weight.detach().float().cpu() * (layer.lora_alpha[ADAPTER] / layer.r[ADAPTER])
            for k in range(self.K):
                out[k][f"{comp}.{p}.lora_A.weight"] = a[k:k + 1].clone().contiguous()
                out[k][f"{comp}.{p}.lora_B.weight"] = b[:, k:k + 1].clone().contiguous()
        return out

    def close(self) -> None:
        self.mask = None
        if self._hooked:
            hooks(self.model.denoiser).remove(_MASK_HOOK)
            self._hooked = False
        if ADAPTER in self.router.adapters:
            self.edit.remove()
