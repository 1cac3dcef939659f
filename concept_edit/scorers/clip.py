"""``clip:ARCH@WEIGHTS``: open_clip zero-shot attribute scorer for real models (weights passed by the user).

Example::

    concept-edit uce --debias "doctor" --attributes "male; female" --ratios 0.5,0.5 \\
        --scorer clip:ViT-B-32@/models/openclip-vit-b-32.safetensors --model ... --out d.safetensors

No weights ship with open_clip_torch; ``pretrained`` is a local safetensors file.
"""
from __future__ import annotations

import numpy as np
import torch

def clip_scorer(spec: str, attributes: list[str], template: str = "a photo of a {}"):
    import open_clip
    from PIL import Image

    body = spec.split(":", 1)[1] if ":" in spec else ""
    arch, _, weights = body.partition("@")
    if not arch or not weights:
        raise ValueError(f"bad scorer {spec!r}: write clip:ARCH@WEIGHTS.safetensors, "
                         "e.g. clip:ViT-B-32@/models/vit-b-32.safetensors")
    if not weights.endswith(".safetensors"):
        raise ValueError(f"{weights}: pass open_clip weights as .safetensors (never pickles)")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    tok = open_clip.get_tokenizer(arch)
    model.eval()
    with torch.no_grad():
        t = model.encode_text(tok([template.format(a) for a in attributes]))
        t = t / t.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def score(images: np.ndarray) -> list[str]:
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
        f = model.encode_image(x)
        f = f / f.norm(dim=-1, keepdim=True)
        return [attributes[i] for i in (f @ t.T).argmax(-1).tolist()]

    return score

