#!/usr/bin/env python
"""The concept_edit demo in the browser (Gradio): sliders, erasure A/B, training a slider, a
SliderSpace browser, base vs distilled vs hybrid sampling, and erasure audits.

    python app.py                                   # embedded toy world on http://127.0.0.1:7860
    python app.py --model DIR --device cuda --artifacts my-edits/
    python app.py --distilled weights/toy-turbo     # the Distillation tab's student (this is the default)
    make app                                        # installs the `app` extra, then the line above

Every edit the app can pick is a concept_edit ``.safetensors`` file inside ``--artifacts``
(default ``out/app-artifacts/``); a SliderSpace is a folder there (or one level below) written by
``concept-edit sliderspace discover``. On the first start with an empty folder on the toy world the
app makes two examples (a UCE edit erasing "circle", seconds; a size slider: copied from ``out/``
when one was trained there, else trained for ``--example-iterations`` steps, about 1-2 minutes
on two CPU cores, with a progress bar in the console).

Safe by default: listens on 127.0.0.1 unless ``--host`` says otherwise, no share link unless
``--share``; only files inside the artifacts folder can be picked (real paths are compared, so
``..`` and symlinks out are refused); uploads must be concept_edit safetensors (header and
metadata checked, size-limited, tried on the model, never unpickled); steps, size, guidance, the
number of images, scales and iterations are bounded here on the server with a one-line message;
one shared model serves every request behind a queue (``--queue-size``), and a lock covers
everything that changes its adapters or weights, so concurrent requests get exactly the images
they would get one at a time.

The app uses only public names of ``concept_edit``: its top-level names, and for the newer tabs
``concept_edit.methods.distill.hybrid_sample``, ``concept_edit.eval.diversity.diversity_report`` and
``concept_edit.eval.audit`` (``audit``, ``load_concept``, ``resolve_probes``, ``write_report``). The
model side is ``app_engine.py`` (no gradio); its SliderSpace and Distillation parts live in
``app_tabs.py``, the Audit part in ``app_audit.py``, training and uploads in ``app_files.py``, the first-start examples in
``app_examples.py``, the widgets of each tab in ``app_page.py``. This file wires the page's events
and serves it.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback

# the model side; names re-exported for `import app` users (tests, scripts)
from app_engine import (API_NAMES, DEFAULT_ARTIFACTS, DEFAULT_DISTILLED, DEFAULT_PROMPT, EXT, MAX_SEED,  # noqa: F401
                        N_SLOTS, REPO, AppError, Engine, Limits, check_safetensors_header, safe_name)
from app_examples import example_slider, example_uce, find_trained_slider, make_examples  # noqa: F401
from app_page import TABS, WIDGETS, page_context
from app_tabs import AUDIT_COLS, DIVERSITY_COLS, one_line as _one_line  # noqa: F401

# -- the page -------------------------------------------------------------------------------------
CSS = """
.pixel img, .pixel canvas { image-rendering: pixelated; }
.pixel img { width: 100%; height: 100%; object-fit: contain; }
.compact-gallery .fixed-height { min-height: 0 !important; }
"""


def theme():
    import gradio as gr

    # system fonts: the default theme would fetch Google fonts, which an offline machine lacks
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(engine: Engine, queue_size: int | None = None):
    """The gr.Blocks of the app (queue configured); launch it with :func:`serve`."""
    import gradio as gr

    L = engine.limits
    queue_size = L.queue_size if queue_size is None else queue_size

    def ui(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            try:
                return fn(*a, **k)
            except AppError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as e:  # the app keeps serving; the console has the traceback
                traceback.print_exc()
                raise gr.Error(f"internal error ({type(e).__name__}: {_one_line(e)}); the app keeps "
                               "serving", print_exception=False) from None
        return inner

    c = page_context(engine)
    table = c.table

    with gr.Blocks(title="concept_edit", delete_cache=(3600, 7200)) as demo:
        gr.Markdown("## concept_edit: sliders, erasure, training, SliderSpace, distillation, audits\n" + c.model_line)
        with gr.Tabs():
            w = {k: v for tab in TABS for k, v in tab(c).items()}
        (prompt, seed, go, slots, start, base_img, out_img, info, steps, guidance, size, sweep, strip_img,
         edit, e_prompt, e_seed, e_n, e_steps, run, base_gal, edit_gal, e_info, t_name, t_target, t_pos,
         t_neg, t_fill, t_it, t_go, t_status, files, refresh, up, up_status, space, ss_prompt, ss_seed,
         ss_scale, ss_go, ss_gallery, ss_info, ss_index, ss_seeds, ss_strip_go, ss_strip, ss_slots,
         ss_compose_go, ss_base, ss_mixed, ss_compose_info, ss_sheet, has_student, d_prompt, d_seed, d_n,
         d_steps, d_switch, d_go, d_sets, d_table, d_info, a_edit, a_concept, a_seed, a_go, a_probes,
         a_summary, a_table, a_files, a_report) = (
            w[k] for k in WIDGETS)

        # -- events -----------------------------------------------------------------------------
        sl_inputs = [prompt, seed, steps, start, guidance, size] + [c for pair in slots for c in pair]

        def _pairs(rest):
            return [(rest[2 * i], rest[2 * i + 1]) for i in range(N_SLOTS)]

        @ui
        def slide(prompt, seed, steps, start_step, guidance, size, slider_1, scale_1, slider_2, scale_2,
                  slider_3, scale_3, slider_4, scale_4):
            return engine.slide(prompt, seed, steps, start_step, guidance, size,
                                _pairs([slider_1, scale_1, slider_2, scale_2, slider_3, scale_3,
                                        slider_4, scale_4]))

        @ui
        def strip(prompt, seed, steps, start_step, guidance, size, slider_1, scale_1, slider_2, scale_2,
                  slider_3, scale_3, slider_4, scale_4):
            return engine.strip(prompt, seed, steps, start_step, guidance, size,
                                _pairs([slider_1, scale_1, slider_2, scale_2, slider_3, scale_3,
                                        slider_4, scale_4]))

        @ui
        def erase(edit, prompt, seed, n, steps):
            base, edited, lb, le, text = engine.erase(edit, prompt, seed, n, steps, engine.guidance, engine.size)

            def cap(lab, i):
                return None if lab is None else " · ".join(lab[i][a] for a in ("shape", "colour", "size", "background"))

            return ([(base[i], cap(lb, i)) for i in range(len(base))],
                    [(edited[i], cap(le, i)) for i in range(len(edited))], text)

        @ui
        def train(name, target, positive, negative, fill, iterations, progress=gr.Progress(track_tqdm=True)):
            out = engine.train(name, target, positive, negative, fill, iterations, progress=True)
            return f"Trained **{out}**: pick it in the Sliders tab."

        @ui
        def upload(file):
            if isinstance(file, dict):  # a client that sends the FileData itself
                file = file.get("path")
            name = engine.upload(file)
            return f"Added **{name}** to the artifacts folder."

        @ui
        def artifacts():
            return table()

        @ui
        def space_gallery(space, prompt, seed, scale):
            return engine.space_gallery(space, prompt, seed, scale)

        @ui
        def space_strip(space, index, prompt, seed, seeds, scale):
            return engine.space_strip(space, index, prompt, seed, seeds, scale)

        @ui
        def space_compose(space, prompt, seed, direction_1, scale_1, direction_2, scale_2, direction_3, scale_3,
                          direction_4, scale_4):
            return engine.space_compose(space, prompt, seed, [(direction_1, scale_1), (direction_2, scale_2),
                                                              (direction_3, scale_3), (direction_4, scale_4)])

        def space_picked(space_):
            """A space picked in the page: its prompt, its directions in the compose slots."""
            try:
                sp = engine.space(space_)
            except AppError as e:
                raise gr.Error(str(e), print_exception=False) from None
            dirs = [("(none)", "")] + [(sl["label"], sl["name"]) for sl in sp["sliders"]]
            return ([gr.update(value=sp["prompt"]) if sp["prompt"] else gr.skip(),
                     gr.update(value=0, maximum=len(sp["sliders"]) - 1)]
                    + [gr.update(choices=dirs, value="") for _ in ss_slots])

        def direction_clicked(evt):
            return max(int(evt.index) - 1, 0)   # the gallery's first image is the base

        # a real class, not the string this file's annotations are: gradio passes the click's data
        direction_clicked.__annotations__["evt"] = gr.SelectData

        @ui
        def distill(prompt, seed, n, switch, steps):
            sets, rows_, text = engine.distill(prompt, seed, n, switch, steps)

            def gallery(imgs):
                lab = engine.labels(imgs)
                return [(im, None if lab is None else " · ".join(lab[i][a] for a in ("shape", "colour", "size")))
                        for i, im in enumerate(imgs)]

            return (gallery(sets["base"]), gallery(sets["distilled"]), gallery(sets["hybrid"]),
                    [[r[0]] + [("-" if v is None else v) for v in r[1:]] for r in rows_], text)

        @ui
        def audit(edit, concept, probes, seed, progress=gr.Progress(track_tqdm=True)):
            progress(0, desc="loading the audit's model copies")
            out = engine.audit(edit, concept, probes, seed, progress=True)
            rows_ = [[("-" if v is None else v) for v in r] for r in out["rows"]]
            return out["summary"], rows_, out["files"], engine.report_frame(out["html"])

        def lists(steps_, space_, *picked):
            """Fresh choices, the picked files' scale bounds, the start's range, the table."""
            rows_ = engine.listing()
            spaces_ = engine.space_choices()
            names = [v for _, v in spaces_]
            sl, ed = [("(none)", "")] + engine.slider_choices(rows_), engine.edit_choices(rows_)
            bounds = []
            for name in picked:
                try:
                    d = engine.slider_defaults(name)
                except AppError:
                    d = engine.slider_defaults(None)
                bounds.append(gr.update(minimum=d["min"], maximum=d["max"]))
            return ([gr.update(choices=sl) for _ in slots] + bounds
                    + [gr.update(maximum=int(steps_)), gr.update(choices=ed), table(rows_),
                       gr.update(choices=spaces_, value=space_ if space_ in names else (names or [None])[0]),
                       gr.update(choices=ed)])

        # the widgets are built with the server's widest bounds (API callers may send any file,
        # any steps); each page narrows them to its own picks on load
        list_inputs = [steps, space] + [f for f, _ in slots]
        list_outputs = [f for f, _ in slots] + [s for _, s in slots] + [start, edit, files, space, a_edit]
        model_lane = dict(concurrency_id="model", concurrency_limit=1)

        gr.on([go.click, prompt.submit, seed.submit, start.release, guidance.release, size.release]
              + [s.release for _, s in slots],
              slide, sl_inputs, [base_img, out_img, info], api_name="slide", trigger_mode="always_last",
              **model_lane)
        sweep.click(strip, sl_inputs, [strip_img], api_name="strip", **model_lane)
        go.click(strip, sl_inputs, [strip_img], api_name="strip_on_generate", api_visibility="private",
                 **model_lane)

        def picker(i):
            def pick(name, steps_):
                try:
                    d = engine.slider_defaults(name)
                except AppError as e:
                    raise gr.Error(str(e), print_exception=False) from None
                start_ = gr.update(value=round(d["start"] * int(steps_))) if (i == 0 and name) else gr.update()
                return gr.update(minimum=d["min"], maximum=d["max"], value=d["scale"]), start_
            return pick

        for i, (f, s) in enumerate(slots):
            f.input(picker(i), [f, steps], [s, start], api_visibility="private",
                    queue=False).success(slide, sl_inputs, [base_img, out_img, info],
                                         api_visibility="private", **model_lane)

        def steps_changed(steps_, k):
            return gr.update(maximum=int(steps_), value=min(int(k), int(steps_)))

        steps.release(steps_changed, [steps, start], [start], api_visibility="private",
                      queue=False).success(slide, sl_inputs, [base_img, out_img, info],
                                           api_visibility="private", **model_lane)

        ss_inputs = [space, ss_prompt, ss_seed]
        ss_go.click(space_gallery, ss_inputs + [ss_scale], [ss_gallery, ss_sheet, ss_info],
                    api_name="space_gallery", **model_lane)
        ss_strip_go.click(space_strip, [space, ss_index] + ss_inputs[1:] + [ss_seeds, ss_scale], [ss_strip],
                          api_name="space_strip", **model_lane)
        ss_gallery.select(direction_clicked, None, [ss_index], api_visibility="private", queue=False).success(
            space_strip, [space, ss_index] + ss_inputs[1:] + [ss_seeds, ss_scale], [ss_strip],
            api_visibility="private", **model_lane)
        ss_compose_go.click(space_compose, ss_inputs + [c for pair in ss_slots for c in pair],
                            [ss_base, ss_mixed, ss_compose_info], api_name="space_compose", **model_lane)
        space.input(space_picked, [space], [ss_prompt, ss_index] + [f for f, _ in ss_slots],
                    api_visibility="private", queue=False).success(
            space_gallery, ss_inputs + [ss_scale], [ss_gallery, ss_sheet, ss_info], api_visibility="private",
            **model_lane)
        def switch_range(steps_, switch_):   # the page narrows the switch to its steps (API: any)
            return gr.update(maximum=int(steps_), value=min(int(switch_), int(steps_)))

        d_steps.release(switch_range, [d_steps, d_switch], [d_switch], api_visibility="private", queue=False)
        demo.load(switch_range, [d_steps, d_switch], [d_switch], api_visibility="private", queue=False)
        d_go.click(distill, [d_prompt, d_seed, d_n, d_switch, d_steps], d_sets + [d_table, d_info],
                   api_name="distill", **model_lane)
        a_edit.input(lambda e: gr.update(value=engine.concept_for(e)), [a_edit], [a_concept],
                     api_visibility="private", queue=False)
        # the audit runs on the background copies (the trainer's lane): the page keeps serving
        a_go.click(audit, [a_edit, a_concept, a_probes, a_seed], [a_summary, a_table, a_files, a_report],
                   api_name="audit", concurrency_id="train", concurrency_limit=1)
        run.click(erase, [edit, e_prompt, e_seed, e_n, e_steps], [base_gal, edit_gal, e_info],
                  api_name="erase", **model_lane)
        t_go.click(train, [t_name, t_target, t_pos, t_neg, t_fill, t_it], [t_status], api_name="train",
                   concurrency_id="train", concurrency_limit=1).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        up.upload(upload, [up], [up_status], api_name="upload", **model_lane).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        refresh.click(artifacts, None, [files], api_name="artifacts", queue=False).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        demo.load(lists, list_inputs, list_outputs, api_visibility="private", queue=False).then(
            slide, sl_inputs, [base_img, out_img, info], api_visibility="private", **model_lane)

    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    return demo


def serve(demo, engine: Engine, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
          block: bool = True, quiet: bool = False):
    """Launch with the safe defaults (no share link, no MCP server, no SSR node process)."""
    return demo.launch(server_name=host, server_port=port, share=bool(share), prevent_thread_lock=not block,
                       max_file_size=int(engine.limits.max_upload_mb * 2**20), ssr_mode=False,
                       mcp_server=False, pwa=False, show_error=False, quiet=quiet, theme=theme(), css=CSS,
                       footer_links=["api"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="hub id, diffusers directory or single-file checkpoint "
                                   "(default: the embedded toy world)")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                   help="folder of .safetensors edits; the only files the app can pick")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (or CONCEPT_EDIT_THREADS; "
                                                           "default 1 for the toy world on a CPU, else torch's)")
    p.add_argument("--queue-size", type=int, default=Limits.queue_size, help="requests that may wait")
    p.add_argument("--max-steps", type=int, default=Limits.max_steps, help="steps bound")
    p.add_argument("--max-images", type=int, default=Limits.max_n, help="images per erasure request")
    p.add_argument("--max-iterations", type=int, default=Limits.max_iterations, help="training bound")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb, help="upload size bound")
    p.add_argument("--max-audit-s", type=float, default=Limits.max_audit_s,
                   help="an audit sampling past this many seconds stops with a message")
    p.add_argument("--distilled", default=None,
                   help="the Distillation tab's distilled model (a diffusers directory or hub id of the "
                        "same family, VAE and text encoder; default: weights/toy-turbo on the toy world "
                        "when it exists; 'none': none, and the tab says how to make one)")
    p.add_argument("--no-examples", action="store_true", help="do not make examples on an empty folder")
    p.add_argument("--example-iterations", type=int, default=100,
                   help="training steps of the example size slider (when none is found in out/)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    t0 = time.perf_counter()
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    artifacts = os.path.abspath(args.artifacts)
    os.makedirs(artifacts, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(artifacts, ".app-cache"))
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit("app.py needs gradio: pip install -e '.[app]' (or: make app)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or int(os.environ.get("CONCEPT_EDIT_THREADS", 0) or 0)
    if not threads and device == "cpu" and args.model is None:
        # the 64 px toy world gains little from threads and loses much when the cores are
        # shared (measured on a busy 2-core machine: 1.0-1.5 s a slider move with one thread,
        # 10-12 s with two)
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    import concept_edit as ce

    load_args = dict(model=args.model, device=device, dtype=args.dtype)
    model = ce.load(**load_args)
    limits = Limits(queue_size=args.queue_size, max_steps=args.max_steps, max_n=args.max_images,
                    max_iterations=args.max_iterations, max_upload_mb=args.max_upload_mb,
                    max_audit_s=args.max_audit_s)
    engine = Engine(model, artifacts, limits, load_args, distilled=load_distilled(args, device))
    print(f"[app] {model.source} ({engine.family}) on {device} loaded in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if not args.no_examples:
        make_examples(engine, iterations=args.example_iterations)
    demo = build_app(engine)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[app] listening on {args.host}: anyone who can reach this machine can use the app",
              flush=True)
    if args.share:
        print("[app] --share: a public link is opened; anyone with it can use the app", flush=True)
    serve(demo, engine, args.host, args.port, args.share, block=False)
    print(f"[app] serving {time.perf_counter() - t0:.1f} s after start", flush=True)
    # the page's first request, rendered once now (torch warms up, the base run is cached): a
    # page opened meanwhile waits for it and then needs the slider image only
    _quietly(engine.slide, **engine.first_request)
    demo.block_thread()


def load_distilled(args, device: str):
    """The Distillation tab's student: --distilled, else weights/toy-turbo on the toy world when
    it exists, else None (the tab says how to make one)."""
    import concept_edit as ce

    name = args.distilled
    if name is None and args.model is None and os.path.isdir(DEFAULT_DISTILLED):
        name = DEFAULT_DISTILLED
    if not name or name.lower() == "none":
        return None
    try:
        model = ce.load(name, device=device, dtype=args.dtype)
    except Exception as e:  # the app still starts; the tab shows how to make a distilled model
        print(f"[app] could not load the distilled model {name}: {_one_line(e)}", flush=True)
        return None
    print(f"[app] distilled model: {model.source} ({model.defaults['steps']} steps, guidance "
          f"{model.defaults['guidance']:g})", flush=True)
    return model


def _quietly(fn, **kw):
    try:
        fn(**kw)
    except Exception as e:  # a warm-up only; the page shows any error itself
        print(f"[app] warm-up: {_one_line(e)}", flush=True)


if __name__ == "__main__":
    main()
