"""The `thorax` command. Each subcommand imports its side of the project only when it runs, so that
`thorax --help` needs neither torch nor the web stack.

    thorax train   --config cxr64 --data ../shared/data/cxr256 --run-dir runs/cxr64
    thorax sample  [--model cxr64] --count 16 --label Cardiomegaly=1 --out thorax-samples
    thorax export  runs/cxr64 --name cxr64 --version 1 [--default]
    thorax models  list | show NAME[/VERSION] [--json] | verify [NAME[/VERSION]]
    thorax configs
    thorax serve   [--host 127.0.0.1] [--port 8000]      the gateway; settings from THORAX_ variables
    thorax dataset build OUT --rebalance Cardiomegaly=10000 [--base labels.csv] [--model site-a=2 ...]

A bad argument or a missing file prints one line, `thorax: error: ...`, and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thorax.errors import UserError

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cxr256"


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default in ([], "") or default is argparse.SUPPRESS:
            return text
        if "default" in text or not (action.option_strings or action.nargs == "?"):
            return text
        return f"{text} (default: %(default)s)"


def _label_names() -> tuple[str, tuple[str, ...]]:
    """Whose label names they are, and the names: the default model's card, else the NIH labels that the
    shipped models use (a store without a readable default model still gets its help)."""
    from thorax.labels import NIH_LABELS
    from thorax.store import find_model

    try:
        model = find_model(None)
        return f"the default model ({model.ref})", tuple(model.card()["labels"]["names"])
    except (UserError, OSError, KeyError, ValueError):
        return "the NIH ChestX-ray14 set", NIH_LABELS


class _Parser(argparse.ArgumentParser):
    """One-line errors; defaults in the help; with `lists_labels`, the label names after the options
    (read from the model card only when the help is shown)."""

    def __init__(self, *args, lists_labels: bool = False, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.lists_labels = lists_labels

    def format_help(self) -> str:
        if self.lists_labels:
            whose, names = _label_names()
            self.epilog = (
                f"labels of {whose}, in any case, spaces for underscores: {', '.join(names)}. "
                "Another model's: thorax models show NAME."
            )
        return super().format_help()

    def error(self, message: str) -> None:  # one line, not argparse's usage block
        command = self.prog.split()[-1]
        raise UserError(message if command == "thorax" else f"{command}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _label_guidance(text: str) -> float | dict[str, float]:
    from training.networks import parse_label_guidance

    try:
        return parse_label_guidance(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label_variation_scale(text: str) -> float | dict[str, float]:
    from training.networks import parse_label_variation_scale

    try:
        return parse_label_variation_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label_value(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        return name, 1.0
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value after = must be a number in 0..1") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be in 0..1")
    return name, number


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.train import RunOptions, TrainingDiverged, train

    cfg = load_config(args.config)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    opts = RunOptions(
        run_dir=run_dir,
        data_dir=Path(args.data),
        device=args.device,
        bf16=args.bf16,
        channels_last=args.channels_last,
        stop_kimg=args.stop_kimg,
        limit_images=args.limit_images,
        log_every_s=args.log_every,
        init_from=Path(args.init_from) if args.init_from else None,
    )
    try:
        train(cfg, opts)
    except TrainingDiverged as exc:
        print(f"thorax: training stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch

    from thorax.labels import canonical_label
    from thorax.latents import latents_for
    from training.checkpoint import load_generator
    from training.sample import generate_fixed, to_uint8, write_pngs

    model_dir = _model_folder(args.model)
    G, config = load_generator(model_dir)
    try:
        G.set_sampling(label_guidance=args.label_guidance, label_variation_scale=args.label_variation_scale)
    except ValueError as exc:  # a block side the model does not have, a fixed label embedding
        raise UserError(str(exc)) from None
    label_names = tuple(config["label_names"])
    labels = np.zeros(len(label_names), dtype=np.float32)
    for name, value in args.label:
        try:
            labels[label_names.index(canonical_label(name, label_names))] = value
        except KeyError as exc:
            raise UserError(f"--label: {exc.args[0]}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, args.count, args.batch):
        indices = range(start, min(start + args.batch, args.count))
        z = torch.from_numpy(latents_for(args.seed, indices, G.latent_dim))
        cond = torch.from_numpy(np.tile(labels, (len(indices), 1)))
        images = to_uint8(generate_fixed(G, z, cond))  # passes of a fixed size: the same bytes for any batch
        for index, name in zip(indices, write_pngs(images, out, start), strict=True):
            rows.append(
                {
                    "file": name,
                    "seed": args.seed,
                    "index": index,
                    "labels": dict(zip(label_names, labels.tolist(), strict=True)),
                    "label_guidance": G.label_guidance,
                    "label_variation_scale": G.label_variation_scale,
                }
            )
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.count} images of {config['resolution']} px from {model_dir} to {out}")
    return 0


def _model_folder(ref: str | None) -> Path:
    """A verified model of the store, or (for trying out a run) a folder with a generator in it."""
    from thorax.store import open_model

    if ref and (Path(ref) / "generator.json").is_file():
        return Path(ref)
    return open_model(ref).path


def _cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_model

    model = export_model(
        Path(args.source),
        args.name,
        args.version,
        store=Path(args.store) if args.store else None,
        make_default=args.default,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        force=args.force,
        label_guidance=args.label_guidance,
        label_variation_scale=args.label_variation_scale,
    )
    card = model.card()
    files = sum(1 for p in model.path.iterdir() if p.is_file())
    print(
        f"exported {model.ref} to {model.path}: {card['architecture']['resolution']} px, "
        f"{card['architecture']['kimg']:g} kimg, {files} files verified"
        + (" (now the default)" if args.default else "")
    )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from thorax.store import default_ref, find_model, list_models, open_model, verify

    if args.json and args.action != "show":
        raise UserError(f"models: --json goes with show, not {args.action}")
    try:
        default = default_ref()
    except UserError:
        default = None  # a store without a default still lists and shows its models
    if args.action == "list":
        for model in list_models():
            card = model.card()
            mark = "*" if model.ref == default else " "
            arch, n = card["architecture"], len(card["labels"]["names"])
            print(f"{mark} {model.ref:20s} {arch['resolution']:5d} px  {arch['kimg']:7g} kimg  "
                  f"{n:2d} label{'s' if n != 1 else ' '}  created {card['created']}")  # fmt: skip
        return 0
    if args.action == "show":
        from thoraxclient.model_card import ModelCard

        from thorax.cards import summary

        model = open_model(args.ref)
        card = ModelCard.model_validate(model.card()).model_dump(mode="json")
        if args.json:
            print(json.dumps(card, indent=1))
        else:
            print(summary(card, is_default=model.ref == default))
        return 0
    models = [find_model(args.ref)] if args.ref else list_models()
    for model in models:
        verify(model)
        print(f"ok  {model.ref}")
    return 0


CHECKS = ("memorisation", "classifier", "pictures", "sweep", "collapse")  # training.evaluate.CHECKS, no torch


def _check_list(text: str) -> list[str]:
    checks = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if not checks or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CHECKS)}, got {text!r}")
    return checks


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """`thorax evaluate`: the checks of a stored model, or of a generator folder (a run's `generator/`)."""
    from training.evaluate import EvalOptions, evaluate_model

    if args.generator and args.model:
        raise UserError("give a stored model or --generator DIR, not both")

    opts = EvalOptions(
        count=args.count,
        seed=args.seed,
        checks=tuple(args.checks),
        classifier=args.classifier,
        epochs=args.epochs,
        classifier_px=args.classifier_px,
        bootstrap=args.bootstrap,
        min_positives=args.min_positives,
        collapse_latents=args.collapse_latents,
        cache=not args.no_cache,
        balanced_judge=args.balanced_judge,
        tstr_repeats=args.tstr_repeats,
    )
    generator = Path(args.generator) if args.generator else None
    out = Path(args.out) if args.out else None
    evaluation = evaluate_model(
        args.model,
        Path(args.data),
        opts,
        store=Path(args.store) if args.store else None,
        generator_dir=generator,
        label_guidance=args.label_guidance,
        label_variation_scale=args.label_variation_scale,
        out_dir=out,
    )
    where = f"into {out or generator}" if out or generator else "into the model's folder and card"
    print(f"wrote evaluation.json and {len(evaluation['figures'])} figures {where}")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from training.config import CONFIG_DIR, load_config

    for path in sorted(CONFIG_DIR.glob("*.toml")):
        cfg = load_config(str(path))
        print(f"{path.stem:12s} {cfg.resolution:5d} px  {cfg.total_kimg:7g} kimg  {cfg.description}")
    return 0


def _gateway_settings(**overrides: object):
    """The gateway's settings from THORAX_ variables, a bad one as a one-line error naming it."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = "THORAX_" + "_".join(str(p) for p in problem["loc"]).upper()
        raise UserError(f"{field}: {problem['msg']}") from None


def _cmd_generate(args: argparse.Namespace) -> int:
    """`thorax generate`: one batch job of the gateway, run in this process (no server): WebDataset
    shards and a manifest in a local folder, or in S3 when THORAX_S3_ENDPOINT is set."""
    import os
    import time

    from pydantic import ValidationError
    from thoraxclient.schemas import TERMINAL_STATES, JobRequest

    from service.catalog import Catalog
    from service.jobs import JobManager
    from service.metrics import Metrics
    from service.problems import ApiProblem
    from service.storage import open_storage

    overrides: dict = {"resume_on_start": args.resume}
    if args.out:
        overrides["storage_dir"] = Path(args.out)
    if args.executor:
        overrides["executor"] = args.executor
    if args.scheduler:
        overrides["dask_scheduler"] = args.scheduler
    if args.executor == "dask" and not (args.scheduler or os.environ.get("THORAX_DASK_SCHEDULER")):
        needs = "--executor dask needs --scheduler ADDRESS (tcp://host:8786) or THORAX_DASK_SCHEDULER"
        raise UserError(needs)
    settings = _gateway_settings(**overrides)
    if not args.resume:
        fixed = {name: value for name, value in args.label}
        labels = {"prior": "model", "fixed": fixed} if args.prior else (fixed or None)
        try:
            request = JobRequest(
                model=args.model, count=args.count, resolution=args.resolution, labels=labels,
                seed=args.seed, format=args.format, shard_size=args.shard_size, prefix=args.prefix,
            )  # fmt: skip
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise UserError(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None
    catalog = Catalog(settings)
    storage = open_storage(settings)
    manager = JobManager(settings, storage, catalog, Metrics())
    manager.start()
    try:
        if not manager.scanned.wait(60):
            raise UserError(f"storage {storage.location} did not answer within 60 s")
        if args.resume:
            jobs = [j for j in manager.list() if j.state not in TERMINAL_STATES]
            if not jobs:
                print(f"nothing to resume in {storage.location}")
                return 0
        else:
            try:
                jobs = [manager.submit(request)]
            except ApiProblem as exc:
                raise UserError(exc.detail) from None
        for job in jobs:
            where = f"{storage.location}/{job.base}"
            print(f"job {job.id}: {job.spec.count} images, seed {job.spec.seed}, into {where}/")
        last = 0.0
        while any(j.state not in TERMINAL_STATES for j in jobs):
            time.sleep(0.5 if manager.shared else 0.2)
            if manager.shared:  # the workers make the job: its state is in storage and the scheduler
                jobs = [manager.get(j.id) for j in jobs]
            if time.monotonic() - last >= args.progress_every:
                last = time.monotonic()
                for job in jobs:
                    done = f"{job.images_made}/{job.spec.count} images made, {job.images_done} in shards"
                    print(f"  {job.id[:8]} {job.state}: {done}")
        failed = [j for j in jobs if j.state != "succeeded"]
        for job in jobs:
            if job.state == "succeeded":
                manifest = f"{storage.location}/{job.base}/manifest.json"
                print(f"job {job.id} succeeded: {job.images_done} images; {manifest}")
            else:
                print(f"job {job.id} {job.state}: {job.error or 'not finished'}")
        if any(j.state == "failed" for j in jobs):
            out = f" --out {args.out}" if args.out else ""
            print(f"`thorax generate --resume{out}` finishes the failed jobs from their first missing shard")
        return 1 if failed else 0
    except KeyboardInterrupt:
        if manager.shared:
            print("interrupted; the job goes on in the Dask cluster (its state: the manifest in storage)")
            return 130
        print(
            f"interrupted; `thorax generate --resume{' --out ' + args.out if args.out else ''}` finishes it"
        )
        return 130
    finally:
        manager.stop()
        catalog.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service.app import create_app

    settings = _gateway_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from thorax.store import open_model

    open_model(settings.default_model)  # a missing or damaged default model is a one-line error here
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _label_count(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    try:
        count = int(value)
    except ValueError:
        count = -1
    if not sep or not name.strip() or count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write LABEL=COUNT with a whole number >= 0")
    return name, count


def _model_weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        weight = float(value) if sep else 1.0
    except ValueError:
        weight = -1.0
    if not name.strip() or not weight >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME or NAME=WEIGHT with a weight >= 0")
    return name, weight


def _cmd_dataset(args: argparse.Namespace) -> int:
    """`thorax dataset build`: thoraxclient.build_dataset from the command line."""
    import os

    from thoraxclient import ThoraxError, build_dataset

    if args.uniform == bool(args.rebalance):
        raise UserError("dataset build: give --rebalance LABEL=COUNT (repeatable) or --uniform, not both")
    rebalance = "uniform" if args.uniform else dict(args.rebalance)
    models = dict(args.model) if args.model else None
    try:
        card = build_dataset(
            args.out, rebalance, base=args.base, models=models, resolution=args.resolution,
            format=args.format, seed=args.seed, comorbidity=args.comorbidity, base_url=args.url,
            api_key=args.api_key or os.environ.get("THORAX_API_KEY"), shard_size=args.shard_size,
            progress=not args.quiet,
        )  # fmt: skip
    except ThoraxError as exc:
        raise UserError(f"dataset build: {exc}") from None
    after = ", ".join(f"{k} {card.counts_before[k]}->{v}" for k, v in card.counts_after.items() if v)
    print(f"{args.out}: {card.real_images} real + {card.synthetic_images} synthetic images ({after})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="thorax", description="Synthetic chest radiographs without sharing patients.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train (or resume) a conditional PGGAN on real radiographs")
    p.add_argument("--config", default="cxr64", help="config name in training/configs or a TOML path")
    p.add_argument(
        "--data", default=str(DEFAULT_DATA), help="folder with labels.csv (or Data_Entry_2017) and PNGs"
    )
    p.add_argument("--run-dir", help="run folder (default runs/<config>); resumes when it has a checkpoint")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="where to train; auto takes CUDA when there is a GPU")  # fmt: skip
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast; the penalty stays fp32 (default: the config's)")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory layout (default: the config's)")  # fmt: skip
    p.add_argument("--stop-kimg", type=float, help="stop with a checkpoint after this many kimg in total")
    p.add_argument("--limit-images", type=_positive_int, help="train on the first N images only (trials)")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start a new run from another run's latest checkpoint (its networks, "
                   "optimisers and kimg): a finished run trained on under a longer schedule")  # fmt: skip
    p.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "sample", help="generate radiographs from a trained generator into PNG files", lists_labels=True
    )
    p.add_argument(
        "--model",
        help="name[/version] in the model store, or a generator folder (default: the default model)",
    )
    p.add_argument("--count", type=_positive_int, default=16, help="images")
    p.add_argument("--seed", type=int, default=0, help="image i of seed s has the same latent in every run")
    p.add_argument(
        "--label",
        type=_label_value,
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a pathology to draw, e.g. Cardiomegaly or Effusion=0.5 (repeatable; others are 0)",
    )
    p.add_argument("--out", default="thorax-samples", help="output folder")
    p.add_argument("--batch", type=_positive_int, default=32,
                   help="images per step (any gives the same bytes: the generator always runs in "
                   "passes of 16)")  # fmt: skip
    p.add_argument("--label-guidance", type=_label_guidance, metavar="W",
                   help="draw each label W times as far from no finding as trained, to preview a "
                   "strength before exporting it; or per place, e.g. 16=2.5 (the 16 px block's "
                   "modulations; input = the labels beside the latent; others as trained); a number "
                   "with labels of their own strength, e.g. 2,Pneumonia=1 (default: the "
                   "model's)")  # fmt: skip
    p.add_argument("--label-variation-scale", type=_label_variation_scale, metavar="S",
                   help="for a model trained with conditioning augmentation (label_variation, as "
                   "nih64/6), spread each label's drawn embedding S times as wide as trained: more "
                   "variety within a label above 1; or per label, e.g. Edema=2,Cardiomegaly=1.5 (the "
                   "others as trained; No_Finding=1.1 for the images without a label) (default: the "
                   "model's)")  # fmt: skip
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "export", help="export a run's generator to ONNX, a TorchServe archive and a model card"
    )
    p.add_argument(
        "source",
        help="a run folder (its latest checkpoint), a checkpoint's .json, or a stored model's folder "
        "(its weights again, e.g. with another --label-guidance)",
    )
    p.add_argument("--name", required=True, help="model name in the store, e.g. cxr64")
    p.add_argument("--version", required=True, help="version, e.g. 1")
    p.add_argument("--store", help="model store folder (default: the repository's model_store/)")
    p.add_argument("--default", action="store_true", help="make this the store's default model")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="TorchServe batch size")
    p.add_argument("--max-batch-delay", type=_positive_int, default=20, help="TorchServe batch delay, ms")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument(
        "--label-guidance",
        type=_label_guidance,
        metavar="W",
        help="draw each label W times as far from no finding as trained, or per place, e.g. 16=2.5, "
        "or with labels of their own strength, e.g. 2,Pneumonia=1 (default: the source's; 1 for a run); "
        "baked into the ONNX graph and the archive, recorded in the card",
    )
    p.add_argument(
        "--label-variation-scale",
        type=_label_variation_scale,
        metavar="S",
        help="with conditioning augmentation, spread each label's drawn embedding S times as wide as "
        "trained, or per label, e.g. Edema=2,Cardiomegaly=1.5 (the others as trained; No_Finding for "
        "the images without a label) (default: the source's; 1 for a run); baked in and recorded like "
        "--label-guidance",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list, show or verify the models in the store")
    p.add_argument("action", choices=["list", "show", "verify"],
                   help="list: a line per model; show: a summary of a model's card; verify: its "
                   "checksums")  # fmt: skip
    p.add_argument(
        "ref", nargs="?", help="NAME or NAME/VERSION (default: the default model for show, all for verify)"
    )
    p.add_argument("--json", action="store_true", help="show: the whole card as JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("evaluate", help="the paper's checks of a stored model, into its folder and card")
    p.add_argument("model", nargs="?", help="NAME[/VERSION] (default: the default model)")
    p.add_argument(
        "--generator", metavar="DIR",
        help="a generator folder instead of a stored model, e.g. runs/x/generator (no export needed)",
    )  # fmt: skip
    p.add_argument(
        "--data", default=str(DEFAULT_DATA), help="the training data (its patient split is rebuilt)"
    )
    p.add_argument("--store", help="model store folder (default: the repository's model_store/)")
    p.add_argument("--count", type=_positive_int, default=3000,
                   help="generated images to check for copies (about 85 s per 1,000 at 128 px)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    p.add_argument(
        "--checks", type=_check_list, default=list(CHECKS), metavar="LIST",
        help=f"comma-separated, any of {','.join(CHECKS)} (default: all; classifier includes sweep and "
        "collapse; sweep,collapse is the quick check)",
    )  # fmt: skip
    p.add_argument("--classifier", choices=["small", "densenet121"], default="small",
                   help="classifier for the classifier checks (densenet121 needs MONAI)")  # fmt: skip
    p.add_argument("--epochs", type=_positive_int, default=15, help="training epochs of each classifier")
    p.add_argument("--classifier-px", type=_positive_int, default=64, help="classifier input side")
    p.add_argument("--bootstrap", type=_positive_int, default=10_000, help="resamples per AUC interval")
    p.add_argument("--min-positives", type=_positive_int, default=5,
                   help="test positives a label needs for its AUC to be reported")  # fmt: skip
    p.add_argument("--collapse-latents", type=_positive_int, default=64,
                   help="generated images per label vector in the collapse detector")  # fmt: skip
    p.add_argument("--balanced-judge", action="store_true",
                   help="train the real-trained classifier with both classes of each label weighted "
                   "alike (scores around 0.5, not near the prevalence): a second yardstick")  # fmt: skip
    p.add_argument("--tstr-repeats", type=_positive_int, default=3,
                   help="repeats of train on synthetic, test on real, at seeds seed, seed+1, ...; the "
                   "ratio reported is their mean, with its spread")  # fmt: skip
    p.add_argument("--no-cache", action="store_true",
                   help="train the real-trained classifier anew instead of reusing the cached one "
                   "($THORAX_CACHE_DIR, else ~/.cache/thorax)")  # fmt: skip
    p.add_argument("--out", metavar="DIR",
                   help="write the results into DIR and leave the model's folder and card as they are "
                   "(a trial)")  # fmt: skip
    p.add_argument("--label-guidance", type=_label_guidance, metavar="W",
                   help="judge the model at this guidance instead of its own, e.g. 1.5, 16=2.5 or "
                   "2,Pneumonia=1 (needs --out): a strength judged before it is exported")  # fmt: skip
    p.add_argument("--label-variation-scale", type=_label_variation_scale, metavar="S",
                   help="judge the model with its drawn label embedding spread S times as wide as "
                   "trained, or per label as Edema=2 (needs --out), as --label-guidance")  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("configs", help="list the training configs")
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser(
        "generate",
        help="a batch job in this process: WebDataset shards of PNG or DICOM, and a manifest",
        lists_labels=True,
    )
    p.add_argument("--count", type=_positive_int, default=100, help="images")
    p.add_argument("--label", type=_label_value, action="append", default=[], metavar="NAME[=VALUE]",
                   help="a label on every image (1 unless given); repeat for several")  # fmt: skip
    p.add_argument("--prior", action="store_true",
                   help="the other labels per image from the model card's training-set patterns")  # fmt: skip
    p.add_argument("--model", help="NAME[/VERSION] (default: the store's default model)")
    p.add_argument("--resolution", type=_positive_int,
                   help="pixels per side, the model's or lower (default: the model's)")  # fmt: skip
    p.add_argument("--seed", type=int, help="chosen, recorded and printed if omitted")
    p.add_argument("--format", choices=["png", "dicom"], default="png", help="image encoding in the shards")
    p.add_argument("--shard-size", type=_positive_int, default=1000, help="images per tar shard")
    p.add_argument("--prefix", default="", help="folder under the storage root (default: the root)")
    p.add_argument("--out", help="local folder (default THORAX_STORAGE_DIR, thorax-data); ignored with S3")
    p.add_argument("--resume", action="store_true", help="finish the unfinished jobs in --out; submit none")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--executor", choices=["local", "dask"],
                   help="local: this process's threads; dask: the shards as tasks on a Dask cluster, "
                   "whose workers need this run's THORAX_ storage settings "
                   "(default: THORAX_EXECUTOR, else local)")  # fmt: skip
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="the Dask scheduler, tcp://host:8786 (default: THORAX_DASK_SCHEDULER)")  # fmt: skip
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("serve", help="run the gateway (POST /generate -> shards in a folder or S3)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's and the gateway's log level")  # fmt: skip
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("dataset", help="datasets from the gateway: rebalanced, pooled from several sites")
    dataset_sub = p.add_subparsers(dest="dataset_command", required=True, parser_class=_Parser)
    p = dataset_sub.add_parser(
        "build", help="top a dataset up to per-label counts with synthetic images", lists_labels=True
    )
    p.add_argument("out", help="output folder (the same call again resumes)")
    p.add_argument("--rebalance", type=_label_count, action="append", default=[], metavar="LABEL=COUNT",
                   help="images positive for LABEL the dataset must hold (repeatable)")  # fmt: skip
    p.add_argument(
        "--uniform", action="store_true", help="raise every label to the most frequent one's count"
    )
    p.add_argument("--base", help="a real label table: thorax labels.csv or NIH Data_Entry_2017 layout")
    p.add_argument("--model", type=_model_weight, action="append", default=[], metavar="NAME[=WEIGHT]",
                   help="a generator to pool (repeatable; default: the gateway's default model)")  # fmt: skip
    p.add_argument("--resolution", type=_positive_int, help="pixels per side (default: the model's)")
    p.add_argument("--format", choices=["png", "dicom"], default="png", help="image encoding")
    p.add_argument("--seed", type=int, default=None, help="recorded in the dataset card (default: chosen)")
    p.add_argument("--comorbidity", choices=["prior", "none"], default="prior",
                   help="prior: a synthetic image also gets the other labels of a training-set pattern "
                   "holding its label; none: only the label topped up")  # fmt: skip
    p.add_argument("--shard-size", type=_positive_int, default=1000, help="images per tar shard")
    p.add_argument("--url", help="the gateway (default: THORAX_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: THORAX_API_KEY)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if (getattr(args, "seed", 0) or 0) < 0:
            raise UserError("--seed must be >= 0")
        return args.func(args)
    except UserError as exc:
        print(f"thorax: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `thorax models show | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
