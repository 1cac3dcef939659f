"""UCE: closed-form edits of the layers that read text (erase, moderate, debias).

Example::

    >>> from concept_edit.methods.uce import UceConfig, uce_edit
    >>> result = uce_edit(pipe, UceConfig(edit=["circle"], preserve=["square", "star"]))
    >>> result.save("erase-circle.safetensors")          # only the changed tensors + header
    >>> with result.applied():                            # or apply_artifact(pipe, file)
    ...     pipe("a circle")

Rows of the least-squares system are the edited layers' own inputs (captured with the hook
layer) at the token positions the policy selects. The concept is located in each prompt by
diffing its tokens with the guide prompt's ("a red circle" vs "a circle": the token 'red'), so
concepts in the middle of a template and multi-token concepts are handled: ``last`` (the
concept's last token, onto the guide's, or for the guide '' the token before it: the
reference's policy when the concept ends the prompt), ``last+eos`` (that and every later token:
following words, EOS, padding, which read the concept through causal attention, onto the guide
prompt's tokens) or ``all`` (also the tokens before the concept, kept as they are).
Preserved prompts contribute every token (``preserve_tokens: all``, with '' among them: the
paper-era reference) or the preserved concept's last token (``last``; with ``preserve_empty:
false`` and bare concepts this is the current reference).
Layers whose inputs do not depend on the image (UNet/PixArt cross-attention, ``text_in``) share
one factorisation; MMDiT ``add_k/v_proj`` read a text stream that evolves with the image, so
their rows come from several denoising states and each layer is solved on its own inputs.
Where the model also reads a pooled text vector (SD3/FLUX AdaLN), that layer is edited too
(``pooled: true``, ``pooled.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core.artifacts import Artifact, weights_edit
from ...core.backbones import backbone_of
from ...core.denoise import Denoiser
from ...core.families import resolve_sites
from ...core.sampling import SampleSettings, generate, pipe_defaults
from ...core.tokens import diff_spans, token_positions
from ...core.trace import StopForward, TraceDict
from ...core.weights import edited, snapshot
from ...scorers import get_scorer
from .config import UceConfig
from .pooled import pooled_paths, pooled_rows
from .solve import UceSystem


@dataclasses.dataclass
class UceResult:
    pipe: object
    config: UceConfig
    tensors: dict[str, torch.Tensor]      # '<component>.<path>.weight' -> edited weight
    history: list[dict] = dataclasses.field(default_factory=list)

    def artifact(self) -> Artifact:
        return Artifact([weights_edit(self.pipe, self.tensors, "uce", self.config.to_dict(),
                                      extra={"debias_history": self.history} if self.history else None)])

    def save(self, path: str) -> dict:
        art = self.artifact()
        art.save(path)
        return art.meta

    @contextlib.contextmanager
    def applied(self):
        dn = Denoiser(self.pipe)
        comp = dn.family.denoiser + "."
        with edited(dn.module, {k[len(comp):]: v for k, v in self.tensors.items()}):
            yield self.pipe


class InputCapture:
    """Inputs of the edited layers for batches of prompts (the hook layer does the reading)."""

    def __init__(self, pipe, paths: list[str], static: bool, timesteps=(999, 750, 500, 250, 1), seed: int = 0,
                 context_steps: int = 25):
        """``static``: the edited layers read text only (one capture suffices). Otherwise the
        inputs are captured along a ``context_steps`` trajectory of '' and the states nearest to
        each of ``timesteps`` (on the 0..1000 scale) are kept."""
        self.dn = Denoiser(pipe)
        self.paths = paths
        self.static = static
        d = pipe_defaults(pipe)
        size = self.dn.family.small_size(pipe) if static else d["size"]
        bank = self.dn.capture([""], steps=1 if static else max(context_steps, len(timesteps)),
                               guidance=1.0, seed=seed, height=size, width=size)
        steps = [0] if static else _nearest_steps(bank.timesteps * self.dn.family.timestep_scale, timesteps)
        self.states = [bank.take([0], [s]) for s in steps]
        self.timesteps = [float(bank.timesteps[s]) * self.dn.family.timestep_scale for s in steps]

    @torch.no_grad()
    def __call__(self, prompts: list[str], batch: int = 64) -> dict[str, torch.Tensor]:
        """path -> (n_prompts, n_states, seq, features) fp32 (path '*' when all share one input)."""
        out: dict[str, list] = {}
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            cond = self.dn.encode(chunk)
            per_state: dict[str, list] = {}
            for st in self.states:
                state = {k: (v.expand(len(chunk), *v.shape[1:]) if isinstance(v, torch.Tensor) and
                             k not in self.dn.family.shared_kwargs else
                             ({kk: vv.expand(len(chunk), *vv.shape[1:]) for kk, vv in v.items()}
                              if isinstance(v, dict) else v)) for k, v in st.items()}
                paths = self.paths[:1] if self.static else self.paths
                with TraceDict(self.dn.module, paths, retain_input=True, retain_output=False,
                               stop=self.static) as td:
                    try:
                        self.dn.predict(state, cond)
                    except StopForward:
                        pass
                for p in paths:
                    per_state.setdefault("*" if self.static else p, []).append(td[p].input.float())
            for p, xs in per_state.items():
                out.setdefault(p, []).append(torch.stack(xs, dim=1))
        return {p: torch.cat(v) for p, v in out.items()}


def _rows(X: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """(states, seq, d) at positions -> (states * len(positions), d)."""
    return X[:, positions].reshape(-1, X.shape[-1])


def _aligned(pos_c, pos_g, policy: str) -> tuple[list[int], list[int], list[int]]:
    """(edited positions, guide positions, kept positions) for one concept/guide pair."""
    src, dst = [], []
    for (off, length, lc), (_, _, lg) in zip(pos_c.segments, pos_g.segments):
        if policy == "last":
            src.append(off + lc)
            dst.append(off + lg)
            continue
        for k in range(length - lc):  # last word token, then EOS and padding
            src.append(off + lc + k)
            dst.append(off + min(lg + k, length - 1))
    keep = pos_c.prefix if policy == "all" else []
    return src, dst, keep


def _span_aligned(spans, policy: str) -> tuple[list[int], list[int], list[int]]:
    """(edited, guide, kept) positions of a concept prompt and its guide prompt (``diff_spans``).

    The concept's tokens (wherever the template puts them) map onto the guide's tokens, or, for
    the guide '', onto the token before them; ``last+eos``/``all`` also edit every token after the
    concept (later words, EOS, padding: they read the concept through causal attention) onto
    the guide prompt's tokens shifted by the difference in length. ``all`` keeps the tokens
    before the concept as they are. With the concept last in the prompt (the reference's
    templates) ``last`` is the reference's last-token policy.
    """
    src, dst, keep = [], [], []
    for off, length, s, n_c, n_g in spans:
        def guide_at(k):  # guide position for concept-prompt position s + k
            if k < n_c:
                j = s + min(k, n_g - 1) if n_g else s - 1
            else:
                j = s + n_g + (k - n_c)
            return off + min(max(j, 0), length - 1)

        ks = [n_c - 1] if policy == "last" else range(length - s)
        for k in ks:
            if s + k < length:
                src.append(off + s + k)
                dst.append(guide_at(k))
        if policy == "all":
            keep += list(range(off, off + s))
    return src, dst, keep


def _preserve_positions(pos, policy: str = "all", spans=None) -> list[int]:
    """Rows of a preserved prompt, whatever the edit policy.

    ``all`` (default; the paper-era reference): every token, so "a green circle" keeps the
    key/value of 'green' too (erasing 'red' would otherwise drag its neighbour along).
    ``last`` (the current reference): the preserved concept's last token only; ``spans`` are
    ``diff_spans`` of the prompt against its template without the concept (one list per
    template/concept pair that wrote the prompt), so in "a square on a plain background" it is
    'square'; for a bare concept it is the prompt's last word token, and for '' the token before
    EOS (CLIP: BOS), as the reference's ``attention_mask.sum() - 2``.
    """
    if policy == "all":
        return pos.all()
    if not spans:
        return list(pos.last)
    return sorted({off + min(s + n_c - 1, length - 1) for sp in spans for off, length, s, n_c, _ in sp})


def expand(concept: str, templates: list[str]) -> list[str]:
    return [t.format(concept) for t in templates] if concept else [""]


def edit_prompts_of(cfg: UceConfig):
    """(edit prompts, guide prompts per edit prompt, attribute prompts, preserved prompt -> the
    (template, concept) pairs that wrote it ('' = the empty prompt))."""
    guides = cfg.guides() if cfg.mode != "debias" else [None] * len(cfg.edit)
    edit_prompts, guide_prompts, attr_prompts = [], [], []
    for concept, guide in zip(cfg.edit, guides):
        for t in cfg.templates:
            edit_prompts.append(t.format(concept))
            alts = (guide or "").split("|")
            # the guide sits in the same context ('' in "a {} on a dotted background" is
            # "a on a dotted background"), so only the concept moves, not its context
            guide_prompts.append([" ".join(t.format(g.strip()).split()) for g in alts])
            if cfg.mode == "debias":
                attr_prompts.append([t.format(f"{a} {concept}") for a in cfg.attributes])
    # preserved prompt -> the (template, concept) pairs that wrote it ('' = the empty prompt)
    keep_src: dict[str, set] = {}
    for c in cfg.preserve:
        for t in (cfg.templates if c else ["{}"]):
            keep_src.setdefault(t.format(c) if c else "", set()).add((t, c))
    if cfg.preserve_empty:
        keep_src.setdefault("", set()).add(("{}", ""))
    return edit_prompts, guide_prompts, attr_prompts, keep_src


def build_rows(cfg: UceConfig, cap: InputCapture, pipe, targets: dict[str, dict[str, float]] | None = None):
    """{input key: (C_e, T, C_p)} for the configured edit (debias: ``targets`` = alphas)."""
    edit_prompts, guide_prompts, attr_prompts, keep_src = edit_prompts_of(cfg)
    keep_prompts = sorted(keep_src)
    flat_attr = [p for ps in attr_prompts for p in ps]
    uniq = list(dict.fromkeys(edit_prompts + [g for gs in guide_prompts for g in gs] + keep_prompts
                              + flat_attr))
    X = cap(uniq)
    idx = {p: i for i, p in enumerate(uniq)}
    seq = next(iter(X.values())).shape[2]
    pos = {p: token_positions(pipe, p, seq) for p in uniq}
    keep_spans = {} if cfg.preserve_tokens == "all" else {
        q: [diff_spans(pipe, q, " ".join(t.format("").split()), seq) for t, c in sorted(src) if c]
        for q, src in keep_src.items()}
    systems, etas = {}, cfg.etas()
    for key, Xk in X.items():
        ce, tt, cp = [], [], []
        for j, (p, g) in enumerate(zip(edit_prompts, guide_prompts)):
            xp = Xk[idx[p]]
            if cfg.mode == "debias":
                alphas = (targets or {}).get(cfg.edit[j // len(cfg.templates)], {})
                src, dst, keep = _aligned(pos[p], pos[p], cfg.token_policy)
                tgt = _rows(xp, dst)
                for a, ap in zip(cfg.attributes, attr_prompts[j]):
                    s2, d2, _ = _aligned(pos[p], pos[ap], cfg.token_policy)
                    tgt = tgt + alphas.get(a, 0.0) * (_rows(Xk[idx[ap]], d2) - _rows(xp, s2))
            else:  # average of the guide alternatives, optionally pushed away from the concept
                tgts = []
                for gi in g:
                    src, dst, keep = _span_aligned(diff_spans(pipe, p, gi, seq), cfg.token_policy)
                    tgts.append(_rows(Xk[idx[gi]], dst))
                tgt = torch.stack(tgts).mean(0)
                eta = etas[j // len(cfg.templates)]
                if eta:
                    tgt = tgt + eta * (tgt - _rows(xp, src))
            ce.append(_rows(xp, src))
            tt.append(tgt)
            if keep:
                cp.append(_rows(xp, keep))
        for q in keep_prompts:
            cp.append(_rows(Xk[idx[q]], _preserve_positions(pos[q], cfg.preserve_tokens, keep_spans.get(q))))
        systems[key] = (torch.cat(ce), torch.cat(tt), torch.cat(cp) if cp else None)
    return systems


def solve_all(cfg: UceConfig, pipe, caps: tuple, original: dict, alphas=None) -> dict[str, torch.Tensor]:
    """Every edited layer: the text-reading sites, and the pooled layer where there is one."""
    cap, pcap = caps
    out = solve(cfg, pipe, cap, build_rows(cfg, cap, pipe, alphas), original)
    if pcap is not None:
        e, g, a, keep = edit_prompts_of(cfg)
        rows = pooled_rows(cfg, pcap, e, g, sorted(keep), a, alphas if cfg.mode == "debias" else None)
        out.update(solve(cfg, pipe, pcap, {"*": rows}, original))   # static: '*' = pcap.paths
    return out


def solve(cfg: UceConfig, pipe, cap: InputCapture, systems: dict, original: dict[str, torch.Tensor]):
    """Edited weights (fp32) from the ORIGINAL weights for every edited layer."""
    out = {}
    for key, (ce, tt, cp) in systems.items():
        sysm = UceSystem(ce, tt, cp, cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
        paths = cap.paths if key == "*" else [key]
        names = [f"{p}.weight" for p in paths]
        for n, w in zip(names, sysm.apply_many([original[n] for n in names])):
            out[n] = w
    return out


def _static(pipe, group: str) -> bool:
    return group == "text_in" or not backbone_of(pipe).text_reads_timestep


def _nearest_steps(grid: torch.Tensor, timesteps: list[int]) -> list[int]:
    """Distinct trajectory steps whose timesteps are nearest to ``timesteps``, in order."""
    out = []
    for t in timesteps:
        i = int((grid.float() - float(t)).abs().argmin())
        if i not in out:
            out.append(i)
    return sorted(out)


def uce_edit(pipe, cfg: UceConfig, progress: bool = True) -> UceResult:
    dn = Denoiser(pipe)
    paths = resolve_sites(pipe, cfg.sites)
    if not paths:
        raise ValueError(f"site group {cfg.sites!r} is empty for this {dn.family.name} model; use text_kv")
    cap = InputCapture(pipe, paths, _static(pipe, cfg.sites), timesteps=cfg.timesteps, seed=cfg.seed)
    pp = [p for p in pooled_paths(pipe, cfg) if p not in paths]
    caps = (cap, InputCapture(pipe, pp, True, seed=cfg.seed) if pp else None)
    original = snapshot(dn.module, [f"{p}.weight" for p in paths + pp])
    comp = dn.family.denoiser
    if cfg.mode != "debias":
        new = solve_all(cfg, pipe, caps, original)
        return UceResult(pipe, cfg, {f"{comp}.{k}": v for k, v in new.items()})
    return _debias(pipe, cfg, caps, original, progress)


def _debias(pipe, cfg: UceConfig, caps: tuple, original, progress: bool) -> UceResult:
    """Generate, score, move alphas toward the wanted ratios, re-solve from the ORIGINAL W."""
    scorer = get_scorer(cfg.scorer, attributes=cfg.attributes)
    dn = Denoiser(pipe)
    comp = dn.family.denoiser
    alphas = {c: {a: 0.0 for a in cfg.attributes} for c in cfg.edit}
    want = dict(zip(cfg.attributes, cfg.ratios))
    history, best, new = [], None, {}
    for r in tqdm(range(cfg.rounds), desc="debias", disable=not progress):
        new = solve_all(cfg, pipe, caps, original, alphas) if r else {}
        obs_all = {}
        with edited(dn.module, new):
            for c in cfg.edit:
                imgs = generate(pipe, SampleSettings(prompt=expand(c, cfg.templates)[0],
                                                     n=cfg.debias_samples, seed=cfg.seed + 1000 * r),
                                progress=False)
                labels = scorer(imgs)
                obs_all[c] = {a: float(np.mean([lab == a for lab in labels])) for a in cfg.attributes}
        err = max(abs(obs_all[c][a] - want[a]) for c in cfg.edit for a in cfg.attributes)
        history.append({"round": r, "observed": obs_all, "alphas": {c: dict(v) for c, v in alphas.items()},
                        "max_error": err})
        if r and (best is None or err < best[0]):
            best = (err, dict(new))
        if err <= cfg.debias_tolerance:
            break
        for c in cfg.edit:
            for a in cfg.attributes:
                alphas[c][a] += cfg.step * (want[a] - obs_all[c][a])
    final = best[1] if best else solve_all(cfg, pipe, caps, original, alphas)
    return UceResult(pipe, cfg, {f"{comp}.{k}": v for k, v in final.items()}, history)


def run(model, cfg: UceConfig, progress=True) -> Artifact:
    """The registry's entry point: ``run(model_or_pipe, cfg) -> Artifact`` (the model is left
    unedited; ``artifact.apply(model)`` applies the edit)."""
    return uce_edit(getattr(model, "pipe", model), cfg, progress=bool(progress)).artifact()
