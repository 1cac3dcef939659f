"""The app's page, tab by tab: the widgets only (app.py wires their events and serves the page).

Example (what app.py's ``build_app`` does)::

    import gradio as gr
    from app_page import TABS, page_context
    c = page_context(engine)                     # an app_engine.Engine
    with gr.Blocks() as demo, gr.Tabs():
        widgets = {k: v for tab in TABS for k, v in tab(c).items()}

``page_context`` reads what the first page shows (the artifacts folder's sliders, edits and
spaces, the audit's concepts); each ``*_tab(c)`` builds one tab inside the current ``gr.Tabs``
and returns its widgets by name.
"""
from __future__ import annotations

import types

from app_engine import DEFAULT_PROMPT, EXT, MAX_SEED, N_SLOTS, AppError
from app_tabs import AUDIT_COLS, DIVERSITY_COLS


def table(engine, rows_=None) -> list[list]:
    """The Artifacts tab's rows (a fresh listing when ``rows_`` is None)."""
    rows_ = engine.listing() if rows_ is None else rows_
    return [[r["file"], r["kind"], r["method"], r["model"], r["note"]] for r in rows_]


def page_context(engine) -> types.SimpleNamespace:
    """What the first page shows; also sets ``engine.first_request`` (rendered once at start)."""
    rows = engine.listing()
    sliders, edits = engine.slider_choices(rows), engine.edit_choices(rows)
    first = sliders[0][1] if sliders else ""
    d0 = engine.slider_defaults(first) if first else engine.slider_defaults(None)
    scale0, k0 = (d0["scale"] if first else 0.0), round(d0["start"] * engine.steps)
    engine.first_request = dict(prompt=DEFAULT_PROMPT, seed=0, steps=engine.steps, start_step=k0,
                                guidance=engine.guidance, size=engine.size, pairs=[(first, scale0)])
    model_line = (f"Model: **{engine.model.source}** ({engine.family}), {engine.size} px, "
                  f"{engine.steps} steps by default. Artifacts folder: `{engine.root}`.")

    spaces = engine.space_choices()
    space0 = spaces[0][1] if spaces else None
    try:
        sp0 = engine.space(space0) if space0 else None
    except AppError:
        sp0 = None
    ss_prompt0 = (sp0 or {}).get("prompt") or "a circle"
    directions0 = [(sl["label"], sl["name"]) for sl in (sp0 or {}).get("sliders", [])]
    concepts, probes = engine.audit_concepts(), engine.audit_probes()
    concept0 = engine.concept_for(edits[0][1]) if edits else (concepts[0] if concepts else None)
    return types.SimpleNamespace(engine=engine, L=engine.limits, rows=rows, sliders=sliders, edits=edits, first=first,
                                 scale0=scale0, k0=k0, model_line=model_line, spaces=spaces, space0=space0,
                                 ss_prompt0=ss_prompt0, directions0=directions0, concepts=concepts, probes=probes,
                                 concept0=concept0, table=lambda rows_=None: table(engine, rows_))


def sliders_tab(c) -> dict:
    """The Sliders tab's widgets, by name."""
    import gradio as gr

    engine, L, sliders, first, scale0, k0 = c.engine, c.L, c.sliders, c.first, c.scale0, c.k0
    with gr.Tab("Sliders", id="sliders"):
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=4, max_lines=1)
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, scale=1)
            go = gr.Button("Generate", variant="primary", scale=1)
        slots = []
        with gr.Row():
            for i in range(N_SLOTS):
                with gr.Column(min_width=180):
                    f = gr.Dropdown([("(none)", "")] + sliders, value=first if i == 0 else "",
                                    label=f"Slider {i + 1}", allow_custom_value=True,
                                    elem_id=f"slider-file-{i + 1}")
                    s = gr.Slider(-L.max_scale, L.max_scale,
                                  value=scale0 if i == 0 else 0.0, step=0.1,
                                  label=f"Scale {i + 1}", elem_id=f"slider-scale-{i + 1}")
                    slots.append((f, s))
        start = gr.Slider(0, L.max_steps, value=k0, step=1, label="Start step (the sliders act "
                          "from this denoising step on; earlier steps fix the layout)",
                          elem_id="start-step")
        with gr.Row():
            base_img = gr.Image(label="Base (same seed)", type="numpy", format="png",
                                interactive=False, height=320, elem_classes=["pixel"],
                                elem_id="base-image")
            out_img = gr.Image(label="With sliders", type="numpy", format="png",
                               interactive=False, height=320, elem_classes=["pixel"],
                               elem_id="slider-image")
        info = gr.Markdown(elem_id="slide-info")
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                steps = gr.Slider(1, L.max_steps, value=engine.steps, step=1, label="Steps")
                guidance = gr.Slider(0, L.max_guidance, value=engine.guidance, step=0.5,
                                     label="Guidance")
                size = gr.Slider(engine.min_size, engine.max_size, value=engine.size,
                                 step=engine.size_multiple, label="Size (px)")
        sweep = gr.Button("Strip over scales (first slider)")
        strip_img = gr.Image(label="Strip: the first slider over its scales", show_label=False,
                             type="numpy", format="png", interactive=False, elem_id="strip-image")
    return dict(prompt=prompt, seed=seed, go=go, slots=slots, start=start, base_img=base_img, out_img=out_img,
                info=info, steps=steps, guidance=guidance, size=size, sweep=sweep, strip_img=strip_img)


def erasure_tab(c) -> dict:
    """The Erasure A/B tab's widgets, by name."""
    import gradio as gr

    engine, L, edits = c.engine, c.L, c.edits
    with gr.Tab("Erasure A/B", id="erasure"):
        with gr.Row():
            edit = gr.Dropdown(edits, value=edits[0][1] if edits else None, allow_custom_value=True,
                               label="Edit (a UCE or ESD artifact)", scale=3, elem_id="edit-file")
            e_prompt = gr.Textbox("a circle", label="Prompt", scale=3, max_lines=1)
            e_seed = gr.Number(0, label="First seed", precision=0, minimum=0, maximum=MAX_SEED)
        with gr.Row():
            e_n = gr.Slider(1, L.max_n, value=4, step=1, label="Images")
            e_steps = gr.Slider(1, L.max_steps, value=engine.steps, step=1, label="Steps")
            run = gr.Button("Compare", variant="primary")
        with gr.Row():
            base_gal = gr.Gallery(label="Base", columns=2, format="png", height="auto",
                                  object_fit="contain", elem_classes=["pixel"], elem_id="base-gallery")
            edit_gal = gr.Gallery(label="Edited", columns=2, format="png", height="auto",
                                  object_fit="contain", elem_classes=["pixel"], elem_id="edit-gallery")
        e_info = gr.Markdown()
    return dict(edit=edit, e_prompt=e_prompt, e_seed=e_seed, e_n=e_n, e_steps=e_steps, run=run, base_gal=base_gal,
                edit_gal=edit_gal, e_info=e_info)


def train_tab(c) -> dict:
    """The Train a slider tab's widgets, by name."""
    import gradio as gr

    L = c.L
    with gr.Tab("Train a slider", id="train"):
        gr.Markdown("A text slider: the LoRA learns to move **target** toward **positive** and "
                    "away from **negative**. `{}` in a prompt is filled with each value of "
                    "the fill list. The file appears in the Sliders tab when done.")
        with gr.Row():
            t_name = gr.Textbox("my-size", label="Name", max_lines=1)
            t_target = gr.Textbox("a {}", label="Target", max_lines=1)
            t_pos = gr.Textbox("a large {}", label="Positive", max_lines=1)
            t_neg = gr.Textbox("a small {}", label="Negative", max_lines=1)
        with gr.Row():
            t_fill = gr.Textbox("circle; square; triangle; star", label="Fill {} with (';'-separated)",
                                max_lines=1, scale=3)
            t_it = gr.Slider(1, L.max_iterations, value=100, step=1, label="Iterations", scale=2,
                             elem_id="train-iterations")
        t_go = gr.Button("Train", variant="primary")
        t_status = gr.Markdown("Progress shows here while a slider trains.", min_height=90,
                               container=True, padding=True, elem_id="train-status")
    return dict(t_name=t_name, t_target=t_target, t_pos=t_pos, t_neg=t_neg, t_fill=t_fill, t_it=t_it, t_go=t_go,
                t_status=t_status)


def artifacts_tab(c) -> dict:
    """The Artifacts tab's widgets, by name."""
    import gradio as gr

    engine, L, rows, table = c.engine, c.L, c.rows, c.table
    with gr.Tab("Artifacts", id="artifacts"):
        gr.Markdown(f"Files in `{engine.root}` (only these can be picked). Upload a "
                    f"concept_edit `{EXT}` file (at most {L.max_upload_mb:g} MB; checked, tried on "
                    "the model, never unpickled).")
        files = gr.Dataframe(table(rows), headers=["file", "kind", "method", "base model", "note"],
                             interactive=False, wrap=True)
        with gr.Row():
            refresh = gr.Button("Refresh")
            up = gr.File(label=f"Upload an artifact ({EXT})", file_types=[EXT], type="filepath")
        up_status = gr.Markdown()
    return dict(files=files, refresh=refresh, up=up, up_status=up_status)


def sliderspace_tab(c) -> dict:
    """The SliderSpace browser tab's widgets, by name."""
    import gradio as gr

    L, spaces, space0, ss_prompt0, directions0 = c.L, c.spaces, c.space0, c.ss_prompt0, c.directions0
    with gr.Tab("SliderSpace", id="sliderspace"):
        gr.Markdown("Directions discovered without labels (`concept-edit sliderspace discover "
                    "--out DIR`, DIR inside the artifacts folder): one image per direction at "
                    "+scale; click one for its strip from -scale to +scale on a few seeds; "
                    "compose several below.", elem_id="space-intro")
        with gr.Row():
            space = gr.Dropdown(spaces, value=space0, allow_custom_value=True, scale=3,
                                label="Space (a SliderSpace folder)", elem_id="space-dir")
            ss_prompt = gr.Textbox(ss_prompt0, label="Prompt", scale=3, max_lines=1)
            ss_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            ss_scale = gr.Slider(0.5, L.scale_bound, value=2.0, step=0.5, label="Scale")
            ss_go = gr.Button("Show directions", variant="primary")
        ss_gallery = gr.Gallery(label="Directions at +scale (click one)", columns=8, format="png",
                                height="auto", object_fit="contain", elem_classes=["pixel", "compact-gallery"],
                                elem_id="space-gallery")
        ss_info = gr.Markdown()
        with gr.Row():
            ss_index = gr.Number(0, label="Direction (index)", precision=0, minimum=0, elem_id="space-index")
            ss_seeds = gr.Slider(1, L.max_strip_seeds, value=3, step=1, label="Seeds (rows)")
            ss_strip_go = gr.Button("Strip -scale..+scale")
        ss_strip = gr.Image(label="Strip", type="numpy", format="png", interactive=False,
                            elem_id="space-strip")
        with gr.Accordion("Compose several directions", open=False):
            ss_slots = []
            with gr.Row():
                for i in range(N_SLOTS):
                    with gr.Column(min_width=160):
                        ss_slots.append((
                            gr.Dropdown([("(none)", "")] + directions0, value="", label=f"Direction {i + 1}",
                                        allow_custom_value=True),
                            gr.Slider(-L.scale_bound, L.scale_bound, value=0.0, step=0.1,
                                      label=f"Scale {i + 1}")))
            ss_compose_go = gr.Button("Compose")
            with gr.Row():
                ss_base = gr.Image(label="Base", type="numpy", format="png", interactive=False,
                                   height=256, elem_classes=["pixel"])
                ss_mixed = gr.Image(label="Composed", type="numpy", format="png", interactive=False,
                                    height=256, elem_classes=["pixel"], elem_id="space-composed")
            ss_compose_info = gr.Markdown()
        with gr.Accordion("The space's sheet (sheet.png: rows = directions)", open=False):
            ss_sheet = gr.Image(show_label=False, type="numpy", format="png", interactive=False)
    return dict(space=space, ss_prompt=ss_prompt, ss_seed=ss_seed, ss_scale=ss_scale, ss_go=ss_go,
                ss_gallery=ss_gallery, ss_info=ss_info, ss_index=ss_index, ss_seeds=ss_seeds,
                ss_strip_go=ss_strip_go, ss_strip=ss_strip, ss_slots=ss_slots, ss_compose_go=ss_compose_go,
                ss_base=ss_base, ss_mixed=ss_mixed, ss_compose_info=ss_compose_info, ss_sheet=ss_sheet)


def distillation_tab(c) -> dict:
    """The Distillation tab's widgets, by name."""
    import gradio as gr

    engine, L = c.engine, c.L
    with gr.Tab("Distillation", id="distillation"):
        has_student = engine.distilled is not None
        gr.Markdown(engine.distill_note() or (
            f"Base **{engine.model.source}** vs distilled **{engine.distilled.source}** vs the hybrid "
            "(the base for the first steps, the distilled model after) for the same seeds, on the "
            "distilled model's schedule, with the diversity of each set."), elem_id="distill-note")
        with gr.Row(visible=has_student):
            d_prompt = gr.Textbox("a circle", label="Prompt", scale=3, max_lines=1)
            d_seed = gr.Number(0, label="First seed", precision=0, minimum=0, maximum=MAX_SEED)
            d_n = gr.Slider(2, L.max_distill_n, value=8, step=1, label="Images per set")
            d_steps = gr.Slider(1, L.max_steps, value=engine.distilled_steps, step=1,
                                label="Distilled steps")
            d_switch = gr.Slider(0, L.max_steps, value=min(1, engine.distilled_steps), step=1,
                                 label="Switch (base steps of the hybrid)")
            d_go = gr.Button("Compare", variant="primary")
        with gr.Column(visible=has_student):   # one set a row: a column = one seed
            d_sets = [gr.Gallery(label=lab, columns=8, format="png", height="auto", object_fit="contain",
                                 elem_classes=["pixel", "compact-gallery"], elem_id=f"distill-{lab.lower()}")
                      for lab in ("Base", "Distilled", "Hybrid")]
        d_table = gr.Dataframe(headers=DIVERSITY_COLS, interactive=False, visible=has_student,
                               label="Diversity (higher = more diverse)")
        d_info = gr.Markdown()
    return dict(has_student=has_student, d_prompt=d_prompt, d_seed=d_seed, d_n=d_n, d_steps=d_steps,
                d_switch=d_switch, d_go=d_go, d_sets=d_sets, d_table=d_table, d_info=d_info)


def audit_tab(c) -> dict:
    """The Audit tab's widgets, by name."""
    import gradio as gr

    L, edits, concepts, probes, concept0 = c.L, c.edits, c.concepts, c.probes, c.concept0
    with gr.Tab("Audit", id="audit"):
        gr.Markdown("The erasure audit at `--budget quick` (`concept-edit audit`): which probes bring "
                    "the erased concept back, base vs edited. All ten probes take a few minutes on "
                    f"the toy world on a CPU; an audit past {L.max_audit_s:g} s stops. It runs on "
                    "copies of the model, so the other tabs keep serving.")
        with gr.Row():
            a_edit = gr.Dropdown(edits, value=edits[0][1] if edits else None, allow_custom_value=True,
                                 label="Edit (a UCE or ESD artifact)", scale=3, elem_id="audit-edit")
            a_concept = gr.Dropdown(concepts, value=concept0, label="Concept (configs/audit/*.yaml)")
            a_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            a_go = gr.Button("Audit", variant="primary")
        a_probes = gr.CheckboxGroup(probes, value=probes, label="Probes")
        a_summary = gr.Markdown(elem_id="audit-summary")
        a_table = gr.Dataframe(headers=AUDIT_COLS, interactive=False, wrap=True, label="Summary")
        a_files = gr.File(label="Report files", file_count="multiple", interactive=False)
        with gr.Accordion("Report (report.html)", open=False):
            a_report = gr.HTML()
    return dict(a_edit=a_edit, a_concept=a_concept, a_seed=a_seed, a_go=a_go, a_probes=a_probes,
                a_summary=a_summary, a_table=a_table, a_files=a_files, a_report=a_report)


TABS = (sliders_tab, erasure_tab, train_tab, artifacts_tab, sliderspace_tab, distillation_tab, audit_tab)
# every widget name the tabs return, in page order (app.py unpacks them in this order)
WIDGETS = ('prompt', 'seed', 'go', 'slots', 'start', 'base_img', 'out_img', 'info', 'steps', 'guidance',
           'size', 'sweep', 'strip_img', 'edit', 'e_prompt', 'e_seed', 'e_n', 'e_steps', 'run',
           'base_gal', 'edit_gal', 'e_info', 't_name', 't_target', 't_pos', 't_neg', 't_fill', 't_it',
           't_go', 't_status', 'files', 'refresh', 'up', 'up_status', 'space', 'ss_prompt', 'ss_seed',
           'ss_scale', 'ss_go', 'ss_gallery', 'ss_info', 'ss_index', 'ss_seeds', 'ss_strip_go',
           'ss_strip', 'ss_slots', 'ss_compose_go', 'ss_base', 'ss_mixed', 'ss_compose_info',
           'ss_sheet', 'has_student', 'd_prompt', 'd_seed', 'd_n', 'd_steps', 'd_switch', 'd_go',
           'd_sets', 'd_table', 'd_info', 'a_edit', 'a_concept', 'a_seed', 'a_go', 'a_probes',
           'a_summary', 'a_table', 'a_files', 'a_report')
