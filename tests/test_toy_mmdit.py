"""The toy MMDiT recipe (weights/toy-mmdit): exact training shortcut, resumable run, plain loading."""
import os

import numpy as np
import pytest
import torch

from concept_edit.core.null_tokens import RepeatedTokenAttn
from concept_edit.toyworld.mmdit import encode, make_text_encoders, make_transformer


def test_repeated_token_attention_is_the_pipelines_function():
    """One zero token with ln 256 on its logit == the plain pipeline's 256 zero T5 tokens."""
    torch.manual_seed(0)
    tr, (te1, te2) = make_transformer(64, 2).eval(), make_text_encoders()
    ids = torch.randint(0, 49408, (2, 77))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 800.0])
    with torch.no_grad():
        ctx, pooled = encode(te1, te2, ids, ids, 256)
        full = tr(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t).sample
        ctx1, _ = encode(te1, te2, ids, ids, 1)
        wrong = tr(hidden_states=x, encoder_hidden_states=ctx1, pooled_projections=pooled, timestep=t).sample
        tr.set_attn_processor(RepeatedTokenAttn(256))
        short = tr(hidden_states=x, encoder_hidden_states=ctx1, pooled_projections=pooled, timestep=t).sample
    assert (full - short).abs().max() < 1e-5 * max(1.0, full.abs().max().item())
    assert (full - wrong).abs().max() > 1e-3  # without the bias one token is not 256


@pytest.mark.timeout(300)
def test_mmdit_recipe_trains_resumes_and_loads_plainly(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from concept_edit.core.config import ConfigError
    from concept_edit.core.loading import load
    from concept_edit.core.sampler import sample
    from concept_edit.toyworld.config import ToyTrainConfig
    from concept_edit.toyworld.train import run

    from concept_edit.core.io import load_safetensors

    kw = dict(arch="mmdit", base_vae="weights/toy-world", n_images=64, unet_batch=4, eval_every=0,
              ckpt_every=2, threads=1, dit_width=64, dit_layers=2)
    with pytest.raises(ConfigError, match="arch"):
        ToyTrainConfig(arch="vit").check()
    run(ToyTrainConfig(**kw, work=str(tmp_path / "w"), unet_steps=2, out=str(tmp_path / "a")))
    os.remove(tmp_path / "w" / "mmdit-final.safetensors")  # resume from the step-2 checkpoint
    out = run(ToyTrainConfig(**kw, work=str(tmp_path / "w"), unet_steps=4, out=str(tmp_path / "b")))
    run(ToyTrainConfig(**kw, work=str(tmp_path / "w2"), unet_steps=4, out=str(tmp_path / "c"), sample_guidance=1.5,
                       guidance_below=0.9))
    # the sampler defaults it ships: the arch's own unless the recipe sets them; both are toy-world models
    assert load(out).defaults["guidance"] == 2.0 and "guidance_below" not in load(out).defaults
    assert load(str(tmp_path / "c")).defaults["guidance"] == 1.5
    assert load(str(tmp_path / "c")).defaults["guidance_below"] == 0.9
    with pytest.raises(ConfigError, match="guidance_below"):
        ToyTrainConfig(guidance_below=0).check()
    assert load(out).toy_world and load(str(tmp_path / "c")).toy_world
    with pytest.raises(ConfigError, match="sample_guidance"):
        ToyTrainConfig(sample_guidance=-1).check()
    resumed = load_safetensors(str(tmp_path / "w" / "mmdit-final.safetensors"))
    straight = load_safetensors(str(tmp_path / "w2" / "mmdit-final.safetensors"))
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)
    assert not torch.equal(resumed["tr.proj_out.weight"],
                           load_safetensors(str(tmp_path / "w" / "mmdit-ckpt.safetensors"))["tr.proj_out.weight"])
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    assert pipe.vae.config.shift_factor is not None and pipe.tokenizer_2.pad_token == "!"
    ref = pipe("a red circle", num_inference_steps=3, guidance_scale=2.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    ours = sample(load(out).pipe, ["a red circle"], seed=0, steps=3).images
    assert ours.shape == (1, 64, 64, 3) and np.abs(ours - ref).max() < 1e-5
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    assert size < 40e6 and not any(f.endswith((".bin", ".pt")) for _, _, fs in os.walk(out) for f in fs)
    vae_a = open(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors", "rb").read()
    assert vae_a == open(os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"), "rb").read()
    # a second phase from the trained pipeline: at a vanishing learning rate it stays where it started
    # (another seed: a fresh init would differ)
    again = run(ToyTrainConfig(**{**kw, "unet_lr": 1e-12}, seed=5, work=str(tmp_path / "w3"), unet_steps=2,
                               warmup=0, init_from=out, out=str(tmp_path / "d")))
    start = load_safetensors(os.path.join(out, "transformer", "diffusion_pytorch_model.safetensors"))
    end = load_safetensors(os.path.join(again, "transformer", "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    with pytest.raises(ValueError, match="dit_width"):
        run(ToyTrainConfig(**{**kw, "dit_width": 32}, work=str(tmp_path / "w4"), unet_steps=2, init_from=out,
                           out=str(tmp_path / "e")))
    with pytest.raises(ConfigError, match="init_from"):
        ToyTrainConfig(init_from=out).check()
    with pytest.raises(ConfigError, match="not a toy MMDiT pipeline"):   # refused before any data is made
        ToyTrainConfig(arch="mmdit", init_from=str(tmp_path / "nowhere")).check()


MMDIT = "weights/toy-mmdit"


@pytest.mark.timeout(300)
def test_shipped_toy_mmdit_loads_plainly_and_draws_what_it_is_told():
    """The trained toy MMDiT: plain SD3 pipeline, under 40 MB, and it draws the prompt."""
    from diffusers import StableDiffusion3Pipeline

    from concept_edit.core.backbones import backbone_of
    from concept_edit.core.loading import load
    from concept_edit.core.sampler import sample
    from concept_edit.toyworld.classifier import load_classifier, predict

    assert os.path.exists(os.path.join(MMDIT, "model_index.json")), "weights/toy-mmdit must ship"
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(MMDIT) for f in fs)
    assert size <= 40e6 and not [f for _, _, fs in os.walk(MMDIT) for f in fs if f.endswith((".bin", ".pt"))]
    pipe = StableDiffusion3Pipeline.from_pretrained(MMDIT, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    from concept_edit.core.model import model_of
    # loaded by plain diffusers, it still samples with its own concept_edit.json (not SD3's 28 / 7.0)
    assert model_of(pipe).defaults == {"size": 64, "steps": 25, "guidance": 2.0, "guidance_below": 0.9}
    ref = pipe("a red circle", num_inference_steps=4, guidance_scale=2.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    model = load(MMDIT)
    assert backbone_of(model.pipe).name == "sd3"
    ours = sample(model.pipe, ["a red circle"], seed=0, steps=4, guidance_below=1.0).images
    assert np.abs(ours - ref).max() < 1e-4   # every step guided: pipe()'s images
    own = sample(model.pipe, ["a red circle"], seed=0, steps=4).images   # its interval: step 0 unguided
    assert np.abs(own - ref).max() > 1e-3
    named = [("circle", "red", "large", "plain"), ("square", "blue", "small", "striped"),
             ("triangle", "green", "large", "dotted"), ("star", "yellow", "small", "plain")]
    prompts = [f"a {sz} {c} {s} on a {bg} background" for s, c, sz, bg in named for _ in range(2)]
    img = sample(model.pipe, prompts, seed=0, steps=20).images
    preds = predict(load_classifier(), (img * 255).round().astype(np.uint8))
    for axis, i in (("shape", 0), ("colour", 1), ("size", 2), ("background", 3)):
        hits = np.mean([p[axis] == named[k // 2][i] for k, p in enumerate(preds)])
        assert hits >= 6 / 8, (axis, hits)


@pytest.mark.timeout(300)
def test_evaluate_samples_and_reports_at_the_models_own_guidance(monkeypatch):
    """The card's numbers come at the model's own sampler (guidance 2 on the toy MMDiT, unguided
    above 0.9 of the noise range), and the report says so (it once printed the UNet's 5.0
    whatever the model)."""
    import concept_edit.core.sampler as smp
    import concept_edit.toyworld.evaluate as ev
    from concept_edit.core.loading import load_pipeline

    pipe = load_pipeline(MMDIT)
    seen = []
    real_sample, real_predict = smp.sample, smp._predict
    monkeypatch.setattr(smp, "sample", lambda *a, **kw: real_sample(*a, **{**kw, "steps": 2}))
    monkeypatch.setattr(smp, "_predict", lambda fam, den, x, t, kw, do_cfg, scale:
                        seen.append((float(t), do_cfg, scale)) or real_predict(fam, den, x, t, kw, do_cfg, scale))
    monkeypatch.setattr(ev, "speed", lambda pipe: {})
    monkeypatch.setattr(ev, "classifier_report", lambda clf, vae=None: {})
    rep = ev.evaluate(pipe, seeds=2, max_prompts=2, progress=False)
    # 2 steps (timesteps 1000 and 1): the first above 0.9 of the range, unguided; the second guided at 2
    assert seen and {(c, g) for _, c, g in seen} == {(False, 1.0), (True, 2.0)}
    assert all(c == (t < 900) for t, c, _ in seen)
    assert rep["sampler"] == {"steps": 25, "guidance": 2.0, "guidance_below": 0.9,
                              "scheduler": "FlowMatchEulerDiscreteScheduler"}


def test_noise_levels_put_weight_near_pure_noise_only_when_asked():
    from concept_edit.core.config import ConfigError
    from concept_edit.toyworld.config import ToyTrainConfig
    from concept_edit.toyworld.mmdit import noise_levels

    plain = noise_levels(200_000, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.sigmoid(torch.randn(200_000, generator=torch.Generator().manual_seed(0))))
    mixed = noise_levels(200_000, torch.Generator().manual_seed(0), t_uniform=0.5)
    assert 0 <= mixed.min() and mixed.max() <= 1
    high = lambda s: (s > 0.9).float().mean().item()   # noqa: E731
    assert abs(high(plain) - 0.014) < 0.002 and abs(high(mixed) - (0.5 * 0.1 + 0.5 * 0.014)) < 0.003
    with pytest.raises(ConfigError, match="t_uniform"):
        ToyTrainConfig(arch="mmdit", t_uniform=1.5)
    with pytest.raises(ConfigError, match="t_uniform is for arch: mmdit"):
        ToyTrainConfig(arch="unet", t_uniform=0.5)
