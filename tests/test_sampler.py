"""Native sampler: equals pipe(...) on every family; DDIM eta > 1, resume, paste-back masks,
guidance functions, x0-hat (with gradients), phases, LoRA step schedules."""
import copy

import numpy as np
import pytest
import torch

from concept_edit.core import schedule as S
from concept_edit.core.families import resolve_sites
from concept_edit.core.lora import lora_router
from concept_edit.core.sampler import Phase, decode, sample
from concept_edit.core.sampling import SampleSettings, generate
from concept_edit.core.tiny import TINY_DEFAULTS

from conftest import FAMILIES

PROMPTS = ["a red circle", "a blue square"]
ONE = PROMPTS[:1]


@pytest.fixture(scope="module")
def shared(tiny_dirs):
    """Read-only pipelines, loaded once for this module (tests that change one use tiny_pipe)."""
    from concept_edit.core.loading import load_pipeline

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_pipeline(tiny_dirs(family))
        return cache[family]

    return get


def _kw(family):
    d = TINY_DEFAULTS[family]
    return dict(steps=d["steps"], guidance=d["guidance"], height=d["size"], width=d["size"])


def _pipe_call(pipe, family, output_type, prompts=PROMPTS, **extra):
    d = TINY_DEFAULTS[family]
    kw = dict(num_inference_steps=d["steps"], guidance_scale=d["guidance"], height=d["size"],
              width=d["size"], output_type=output_type)
    if family == "pixart":
        kw.update(use_resolution_binning=False, clean_caption=False)
    gens = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
    return pipe(prompts, generator=gens, **kw, **extra).images


def _ddim_sd1(tiny_pipe, **cfg):
    from diffusers import DDIMScheduler

    pipe = tiny_pipe("sd1")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **cfg)
    return pipe


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_pipe(shared, family):
    pipe = shared(family)
    res = sample(pipe, PROMPTS, seed=0, **_kw(family))
    ref = _pipe_call(pipe, family, "np")                    # image i from seed i, 2 prompts
    assert res.images.shape == ref.shape
    np.testing.assert_allclose(res.images, ref, atol=1e-4)
    assert len(res.timesteps) == TINY_DEFAULTS[family]["steps"] and res.x0 == []


def test_ddim_eta(tiny_pipe):
    pipe = _ddim_sd1(tiny_pipe)
    # eta <= 1 draws the same per-image noise as the stock scheduler: same images
    ours = sample(pipe, ONE, eta=0.5, output_type="latent", **_kw("sd1")).latents
    stock = _pipe_call(pipe, "sd1", "latent", ONE, eta=0.5)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    for eta in (1.0, 1.5, 1.85):
        res = sample(pipe, ONE, eta=eta, output_type="latent", **_kw("sd1"))
        assert torch.isfinite(res.latents).all()
    stock = _pipe_call(pipe, "sd1", "latent", ONE, eta=1.85)   # 1 - a_prev - sigma^2 < 0: NaN
    assert torch.isnan(stock).any()


def test_eta_needs_ddim(shared):
    with pytest.raises(ValueError, match="DDIM"):
        sample(shared("sd3"), ONE, eta=0.5, **_kw("sd3"))


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_resume_from_intermediate_latents(shared, family):
    pipe = shared(family)
    full = sample(pipe, ONE, return_states=True, return_x0=True, output_type="latent", **_kw(family))
    tail = sample(pipe, ONE, start_step=2, start_latents=full.states[2], return_x0=True,
                  output_type="latent", **_kw(family))
    torch.testing.assert_close(tail.latents, full.latents, atol=1e-5, rtol=0)
    assert torch.equal(tail.timesteps, full.timesteps[2:]) and len(tail.x0) == 2
    by_t = sample(pipe, ONE, start_timestep=float(full.timesteps[2]), start_latents=full.states[2],
                  output_type="latent", **_kw(family))
    torch.testing.assert_close(by_t.latents, full.latents, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="start_latents"):
        sample(pipe, ONE, start_step=2, **_kw(family))


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_mask_paste_back(shared, family):
    pipe = shared(family)
    kw = _kw(family)
    plain = sample(pipe, ONE, return_states=True, output_type="latent", **kw)
    ref = sample(pipe, ["a green triangle"], seed=7, output_type="latent", **kw).latents
    size = kw["height"]
    mask = torch.zeros(1, 1, size, size)
    mask[..., :, : size // 2] = 1.0                       # generate the left half, keep the right
    res = sample(pipe, ONE, mask=mask, mask_latents=ref, return_states=True, output_type="latent", **kw)
    from concept_edit.core.backbones import backbone_of
    from concept_edit.core.sampler_parts import mask_to_latents

    m = mask_to_latents(pipe, backbone_of(pipe).sampler, mask, ref, size, size)
    assert 0 < m.mean() < 1
    keep = m == 0
    assert torch.equal(res.latents[keep], ref[keep])      # final: the given clean latents
    assert not torch.allclose(res.latents[~keep], ref[~keep])
    sched = pipe.scheduler
    noise = plain.states[0] / float(getattr(sched, "init_noise_sigma", 1.0))
    lvl = sched.sigmas[2] if S.is_flow(sched) else sched.timesteps[2]
    torch.testing.assert_close(res.states[2][keep], S.noisy_state(sched, ref, noise, lvl)[keep])


def test_guidance_fn_zero_changes_nothing_and_sees_x0(shared):
    pipe = shared("sd1")
    base = sample(pipe, ONE, output_type="latent", return_x0=True, **_kw("sd1"))
    seen = []

    def zero(x_t, t, x0, pred):
        seen.append((x0.detach().clone(), pred.shape))
        return torch.zeros_like(pred)

    res = sample(pipe, ONE, guidance_fn=zero, output_type="latent", **_kw("sd1"))
    assert torch.equal(res.latents, base.latents) and len(seen) == 4
    assert torch.equal(seen[-1][0], base.x0[-1])
    push = sample(pipe, ONE, guidance_fn=lambda x, t, x0, p: 0.1 * torch.ones_like(p),
                  output_type="latent", **_kw("sd1"))
    assert not torch.allclose(push.latents, base.latents)


def test_x0_list_and_last_x0_is_final(tiny_pipe):
    pipe = _ddim_sd1(tiny_pipe, set_alpha_to_one=True)     # last step lands on a_prev = 1: x0
    res = sample(pipe, ONE, return_x0=True, **_kw("sd1"))
    assert len(res.x0) == len(res.timesteps) == 4
    torch.testing.assert_close(res.x0[-1], res.latents, atol=1e-6, rtol=0)
    np.testing.assert_allclose(decode(pipe, res.x0[-1], 64, 64), res.images, atol=1e-5)
    # x0-hat sharpens along the run: its distance to the final latents shrinks
    d = [float((z - res.latents).abs().mean()) for z in res.x0]
    assert d[0] > d[-1]


def test_x0_grad_reaches_lora_and_leaf_latent(tiny_pipe, shared):
    pipe = tiny_pipe("sd1")
    router = lora_router(pipe)
    router.add("s", resolve_sites(pipe, "noxattn"), rank=2)
    with torch.no_grad():
        for p in router.parameters("s", "B"):
            p.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    kw = dict(_kw("sd1"), steps=2)
    res = sample(pipe, ONE, x0_grad=True, output_type="latent", **kw)
    assert len(res.x0) == 2 and res.x0[-1].requires_grad
    res.x0[-1].pow(2).mean().backward()
    grads = [p.grad for p in router.parameters("s")]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    flux = shared("flux")
    leaf = torch.randn(1, 4, 16, 16, requires_grad=True)  # (N, C, h, w): packed by the sampler
    res = sample(flux, ONE, latents=leaf, x0_grad=True, output_type="latent",
                 **dict(_kw("flux"), steps=2))
    res.x0[0].sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_phases(shared):
    pipe = shared("sd1")
    kw = dict(_kw("sd1"), output_type="latent")
    one = sample(pipe, ONE, **kw).latents
    same = [Phase(until_step=2), Phase(denoiser=copy.deepcopy(pipe.unet))]
    torch.testing.assert_close(sample(pipe, ONE, phases=same, **kw).latents, one, atol=1e-6, rtol=0)
    by_t = [Phase(until_timestep=300, denoiser=pipe), Phase()]
    torch.testing.assert_close(sample(pipe, ONE, phases=by_t, **kw).latents, one, atol=1e-6, rtol=0)
    other = [Phase(until_step=2, guidance=1.0), Phase()]
    assert not torch.allclose(sample(pipe, ONE, phases=other, **kw).latents, one)
    with pytest.raises(ValueError, match="runs no step"):
        sample(pipe, ONE, phases=[Phase(until_step=2), Phase(until_step=2), Phase()], **kw)
    with pytest.raises(ValueError, match="runs no step"):
        sample(pipe, ONE, phases=[Phase(), Phase()], **kw)
    with pytest.raises(ValueError, match="last phase"):
        sample(pipe, ONE, phases=[Phase(until_step=2)], **kw)
    with pytest.raises(ValueError, match="no LoRA"):
        sample(pipe, ONE, phases=[Phase(adapter_scales={"s": 1.0})], **kw)


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_guidance_interval(shared, family):
    """guidance_below=f: the steps above f of the timestep range run unguided (as the explicit
    phases); 1 is every step guided; a model's concept_edit.json default applies when not given."""
    from concept_edit.core.model import model_of

    pipe = shared(family)
    kw = dict(_kw(family), output_type="latent")
    one = sample(pipe, ONE, **kw).latents
    torch.testing.assert_close(sample(pipe, ONE, guidance_below=1.0, **kw).latents, one, atol=0, rtol=0)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    f = (ts[0] + ts[1]) / 2 / pipe.scheduler.config.num_train_timesteps   # the first step unguided
    explicit = sample(pipe, ONE, phases=[Phase(until_step=1, guidance=1.0), Phase()], **kw).latents
    late = sample(pipe, ONE, guidance_below=f, **kw).latents
    torch.testing.assert_close(late, explicit, atol=1e-6, rtol=0)
    assert not torch.allclose(late, one)
    m = model_of(pipe)
    m.defaults["guidance_below"] = f
    try:
        torch.testing.assert_close(sample(pipe, ONE, **kw).latents, explicit, atol=1e-6, rtol=0)
    finally:
        del m.defaults["guidance_below"]
    # a bound under the last step leaves every step unguided
    unguided = sample(pipe, ONE, **{**kw, "guidance": 1.0}).latents
    low = min(ts) / 2 / pipe.scheduler.config.num_train_timesteps
    torch.testing.assert_close(sample(pipe, ONE, guidance_below=low, **kw).latents, unguided, atol=1e-6, rtol=0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="guidance_below"):
            sample(pipe, ONE, guidance_below=bad, **kw)
    with pytest.raises(ValueError, match="without phases"):   # not silently ignored
        sample(pipe, ONE, guidance_below=f, phases=[Phase()], **kw)


def test_lora_step_schedule_as_generate_and_as_phases(tiny_pipe):
    pipe = tiny_pipe("sd1")
    router = lora_router(pipe)
    router.add("s", resolve_sites(pipe, "noxattn"), rank=2)
    with torch.no_grad():
        for p in router.parameters("s", "B"):
            p.normal_(std=0.3, generator=torch.Generator().manual_seed(0))
    router.set_scale("s", 2.0)
    router.set_schedule("s", start=0.5)                   # off for steps 0-1 of 4
    s = SampleSettings(prompt=ONE, n=1, seed=0, steps=4, guidance=5.0, height=64)
    ref = generate(pipe, s, progress=False)
    res = sample(pipe, ONE, **_kw("sd1"))
    ours = (np.clip(res.images, 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(ours, ref)
    router.set_schedule("s", None)
    phased = sample(pipe, ONE, phases=[Phase(until_step=2, adapter_scales={"s": 0.0}), Phase()],
                    **_kw("sd1"))
    np.testing.assert_allclose(phased.images, res.images, atol=1e-4)
    always = sample(pipe, ONE, **_kw("sd1"))
    assert np.abs(always.images - res.images).max() > 1e-3   # the schedule did act


def test_x0_hat_is_the_schedulers_own(shared):
    pipe = shared("sdxl")                                  # Euler: the state is x0 + sigma n
    sched, seen = pipe.scheduler, []
    step = sched.step
    sched.step = lambda *a, **k: (lambda out: seen.append(out[1]) or out)(step(*a, **k))
    try:
        res = sample(pipe, ONE, return_x0=True, output_type="latent", **_kw("sdxl"))
    finally:
        del sched.step
    assert len(seen) == len(res.x0) == 4
    for theirs, ours in zip(seen, res.x0):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd3"])
def test_schedule_formulas_match_denoise(shared, family):
    from concept_edit.core.denoise import Denoiser, noisy_state, signal_ratio

    pipe = shared(family)
    dn, sched = Denoiser(pipe), pipe.scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for frac in (0.1, 0.5, 0.93):
        lvl = S.level(sched, frac)
        state, tgt = noisy_state(dn, {}, x0, noise, frac)
        x_t = S.noisy(sched, x0, noise, lvl)
        torch.testing.assert_close(state[dn.family.input_kwarg], x_t)
        torch.testing.assert_close(S.target(sched, x0, noise, lvl), tgt)
        assert S.signal_ratio(sched, lvl) == pytest.approx(signal_ratio(dn, frac))
        torch.testing.assert_close(S.x0_from_output(sched, tgt, x_t, lvl), x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(S.eps_from_output(sched, tgt, x_t, lvl), noise, atol=1e-4, rtol=1e-4)
    out = tgt.clone().requires_grad_(True)                # differentiable in the tensors
    S.x0_from_output(sched, out, x_t, lvl).sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_ddim_step_clamps_instead_of_nan():
    x0, eps, n = torch.ones(1, 4), torch.zeros(1, 4), torch.zeros(1, 4)
    for eta in (0.0, 1.0, 1.85, 3.0):
        assert torch.isfinite(S.ddim_step(x0, eps + 1, 0.1, 0.3, eta, n)).all()
    assert torch.equal(S.ddim_step(x0, eps, 0.1, 1.0, 0.0), x0)   # a_prev = 1 lands on x0
