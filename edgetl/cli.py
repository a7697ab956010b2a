"""The `edgetl` command line. Commands stay thin: they build a config and call the library.

TensorFlow is imported inside commands only, so `edgetl --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.spec.modes import Adapt, ChannelOrder, IoDtype, MixedPrecision, ModelOutput, Preprocess, Quantize, Selection, Strategy
from edgetl.errors import EdgetlError
from edgetl.runtime import MAX_THREADS

app = typer.Typer(
    name="edgetl",
    help="Transfer learning to edge devices: fine-tune, export and check image classifiers.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False, "command": None}


def _flag_type_hidden() -> None:
    """typer 0.29's rich help prints `<bool>` after plain flags (`--dry-run <bool>`), which
    reads as if they took a value: show no type for flags, the type of every other option."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_edgetl", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._edgetl = True
    TyperOption.display_type_rich = display_type_rich


_flag_type_hidden()


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors (also accepted after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    _state["debug"] = _state["debug"] or debug  # main() also takes --debug after the subcommand
    if _state["debug"]:  # TensorFlow's own start-up and logging lines too (edgetl/_compat.py)
        os.environ["EDGETL_DEBUG"] = "1"
    if version:
        from edgetl import __version__

        typer.echo(f"edgetl {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:  # `edgetl` alone: show what it can do
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


# compile's options, grouped in --help by what they tune. Each one that is a setting is named as
# CompileConfig's field (but --cache: use_cache) and takes its default from it, written once there
# (tests/fast/test_cli.py checks both); with --recipe only the options given on the line count.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(CompileConfig) if f.default is not dataclasses.MISSING}
_FIELD = {"cache": "use_cache"}  # CLI name -> setting, where they differ


def _student_size(value: str) -> int | str:
    """--student-size: pixels (at least 32 on the command line) or 'auto'."""
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 32:
        raise typer.BadParameter(f"{value!r} is neither a whole number of pixels (32 or more) nor 'auto'")
    return int(text)
_NOT_SETTINGS = ("recipe", "dry_run", "trust_model")  # options of the command, not of the build


@app.command("compile")
def compile_command(
    ctx: typer.Context,
    data: Annotated[
        Optional[Path], typer.Argument(help="Image folder: DATA/<class>/* or DATA/train|val|test/<class>/*.", show_default=False)
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder. \\[default: build/<DATA's name>]")] = None,
    target: Annotated[
        Optional[str], typer.Option(help="Device profile (see `edgetl targets`): sets precision, I/O types, student size.")
    ] = _DEFAULT["target"],
    recipe: Annotated[
        Optional[Path], typer.Option(help="Replay a recipe.yaml; options given beside it change just those settings.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and the stages that would run.")] = False,
    teacher: Annotated[str, typer.Option(help="Registry model to fine-tune (see `edgetl models`).", rich_help_panel="Teacher")] = _DEFAULT["teacher"],
    teacher_weights: Annotated[
        str, typer.Option(help="'imagenet', a weights file (e.g. a Keras no-top .h5), or 'none'.", rich_help_panel="Teacher")
    ] = _DEFAULT["teacher_weights"],
    finetune_epochs: Annotated[
        int, typer.Option(min=0, help="Max epochs fine-tuning the top of the backbone, from the linear probe (0: the probe alone).", rich_help_panel="Teacher")
    ] = _DEFAULT["finetune_epochs"],
    student: Annotated[
        str, typer.Option(help="Registry model distilled from the teacher and deployed (efficientnet_lite0_slim75 / _slim50: channel-pruned Lite0, faster); 'none' deploys the teacher.", rich_help_panel="Student")
    ] = _DEFAULT["student"],
    student_size: Annotated[
        Optional[str], typer.Option(
            parser=_student_size, metavar="PX|auto",
            help="Student input px (e.g. 160 or 128 for a slow device), or 'auto': the model's own size and smaller ones measured "
                 "(probe accuracy, int8 p50 here), the fastest within --max-accuracy-drop kept (with --max-latency-ms: the most "
                 "accurate within it; when no size meets it, the channel-pruned student that does is distilled too and deployed if it passes the accuracy gate). "
                 "\\[default: the target's, else the model's]",
            rich_help_panel="Student")
    ] = _DEFAULT["student_size"],
    student_weights: Annotated[str, typer.Option(help="'imagenet', a weights file, or 'none'.", rich_help_panel="Student")] = _DEFAULT["student_weights"],
    distill_epochs: Annotated[int, typer.Option(min=0, help="Max epochs of distillation from the student's probe (chosen on val, or by cross-validation on small data).", rich_help_panel="Student")] = _DEFAULT["distill_epochs"],
    temperature: Annotated[float, typer.Option(min=1.0, help="Softmax temperature of the soft targets.", rich_help_panel="Student")] = _DEFAULT["temperature"],
    alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Teacher's share of the loss (0: labels only).", rich_help_panel="Student")
    ] = _DEFAULT["alpha"],
    unlabeled: Annotated[
        Optional[Path], typer.Option(help="Unlabelled images from the device's camera: the soft loss, and adaptation (--adapt).", rich_help_panel="Student")
    ] = _DEFAULT["unlabeled"],
    adapt: Annotated[
        Adapt, typer.Option(help="Adapt the deployed model to the --unlabeled images: none, bn (batch-norm statistics + int8 calibration on them), camera (a camera fitted to them, then training through it), shot (bn + self-training), auto (the best on --target-val, else camera).", rich_help_panel="Domain adaptation")
    ] = _DEFAULT["adapt"],
    target_val: Annotated[
        Optional[Path], typer.Option(help="A few labelled images from the device (DIR/<class>/*): chooses the adaptation and reports target accuracy.", rich_help_panel="Domain adaptation")
    ] = _DEFAULT["target_val"],
    adapt_epochs: Annotated[int, typer.Option(min=1, help="Self-training epochs of --adapt shot.", rich_help_panel="Domain adaptation")] = _DEFAULT["adapt_epochs"],
    robustness: Annotated[
        bool, typer.Option("--robustness/--no-robustness", help="Score the deployed files on camera corruptions (report: robustness).", rich_help_panel="Domain adaptation")
    ] = _DEFAULT["robustness"],
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also train the student without the teacher (ablation).", rich_help_panel="Student")
    ] = _DEFAULT["baseline"],
    quantize: Annotated[
        Optional[Quantize], typer.Option(help="auto (within the gate, the smallest of the files within 15% of the fastest p50), fp32, fp16, dynamic or int8. \\[default: the target's, else auto]", rich_help_panel="Quantization and pruning")
    ] = _DEFAULT["quantize"],
    io_dtype: Annotated[
        Optional[IoDtype], typer.Option(help="I/O type of int8 files: uint8, int8 or float32. \\[default: the target's, else uint8]", rich_help_panel="Quantization and pruning")
    ] = _DEFAULT["io_dtype"],
    calibration_size: Annotated[int, typer.Option(min=1, help="Class-balanced training images that calibrate int8.", rich_help_panel="Quantization and pruning")] = _DEFAULT["calibration_size"],
    qat: Annotated[bool, typer.Option("--qat", help="Also build a quantization-aware-trained int8 file.", rich_help_panel="Quantization and pruning")] = _DEFAULT["qat"],
    prune: Annotated[float, typer.Option(min=0.0, max=0.95, help="Target sparsity of magnitude pruning, e.g. 0.5 (0: none).", rich_help_panel="Quantization and pruning")] = _DEFAULT["prune"],
    cluster: Annotated[
        int, typer.Option(min=0, help="After --prune, share each kernel's weights among N values (e.g. 16; tfmot clustering, then PCQAT): a smaller gzip. 0: none.", rich_help_panel="Quantization and pruning")
    ] = _DEFAULT["cluster"],
    max_accuracy_drop: Annotated[
        float, typer.Option(min=0.0, help="Accuracy points a quantized file may lose against fp32 (on val, or on the training images under cross-validation); also what a smaller --student-size auto size, or a channel-pruned student, may lose against the student it replaces.", rich_help_panel="Quantization and pruning")
    ] = _DEFAULT["max_accuracy_drop"],
    max_latency_ms: Annotated[
        Optional[float], typer.Option(help="A latency budget, ms of int8 p50 on this machine (> 0). With --quantize auto: deploy only files whose p50 here is at most this; the fastest within the accuracy gate and the budget wins. With --student-size auto it also chooses the size (and, when no size meets it, a channel-pruned student). Otherwise the report only says whether the file meets it.", rich_help_panel="Quantization and pruning")
    ] = _DEFAULT["max_latency_ms"],
    mixed_precision: Annotated[
        MixedPrecision, typer.Option(help="Teacher training in bf16 mixed precision: auto (where the model family gains and the CPU has bf16), bf16, off. Exports stay float32.", rich_help_panel="Teacher")
    ] = _DEFAULT["mixed_precision"],
    threads: Annotated[Optional[int], typer.Option(min=1, max=MAX_THREADS, help="Threads for latency measurement. \\[default: the target's, capped by cores]", rich_help_panel="Quantization and pruning")] = _DEFAULT["threads"],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per training step on each replica (the global batch is this times the replicas).", rich_help_panel="Data")] = _DEFAULT["batch_size"],
    strategy: Annotated[
        Strategy, typer.Option(help="Training devices: auto (every GPU of this machine when there are several), one, mirrored (every GPU here), multi-worker (the machines of TF_CONFIG; README: Scaling out).", rich_help_panel="Data")
    ] = _DEFAULT["strategy"],
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share of images carved out for val.", rich_help_panel="Data")] = _DEFAULT["val_fraction"],
    test_fraction: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share carved out for test.", rich_help_panel="Data")] = _DEFAULT["test_fraction"],
    seed: Annotated[int, typer.Option(help="Seed of splits, folds, initialisation and augmentation.", rich_help_panel="Data")] = _DEFAULT["seed"],
    selection: Annotated[
        Selection, typer.Option(help="How the probe, fine-tuning and epochs are chosen and accuracy estimated: auto (cross-validation below --cv-below images, else a val split), cv or holdout.", rich_help_panel="Data")
    ] = _DEFAULT["selection"],
    cv_below: Annotated[int, typer.Option(min=0, help="With --selection auto: labelled images for training and choosing (a test split the held-out way would carve not counted) below which cross-validation is used and no val/test is carved.", rich_help_panel="Data")] = _DEFAULT["cv_below"],
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds for the training choices (each fold trains).", rich_help_panel="Data")] = _DEFAULT["folds"],
    search: Annotated[
        bool, typer.Option("--search/--no-search", help="Under cross-validation, also choose the recipe: fine-tuning at 1x and 3x its learning rate and one stage deeper, distillation at --temperature/--alpha and as function matching (T 1, teacher only). Each recipe trains once more per fold.", rich_help_panel="Data")
    ] = _DEFAULT["search"],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace edgetl's files in an existing --out.")] = _DEFAULT["overwrite"],
    cache_dir: Annotated[Optional[Path], typer.Option(help="Stage cache folder. \\[default: $EDGETL_CACHE or ~/.cache/edgetl]")] = _DEFAULT["cache_dir"],
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse trained stages whose inputs are unchanged.")] = _DEFAULT["use_cache"],
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Accept a --model, --teacher-weights or --student-weights file that is a full Keras model holding code "
            "(Lambda layers, bytecode). Never read from a recipe.",
        ),
    ] = False,
    model: Annotated[
        Optional[Path], typer.Option(help="A trained Keras classifier (.keras, .h5 or SavedModel folder) to compile as it is: no training; DATA calibrates, gates and scores it.", rich_help_panel="Bring your own model")
    ] = _DEFAULT["model"],
    input_size: Annotated[
        Optional[int], typer.Option(min=16, help="The --model's input px, when its input shape does not fix it.", rich_help_panel="Bring your own model")
    ] = _DEFAULT["input_size"],
    preprocess: Annotated[
        Optional[Preprocess], typer.Option(help="How the --model expects pixels: raw (0..255), tf (-1..1), torch (0..1, ImageNet mean/std), caffe (BGR, ImageNet mean). Put inside the exported graph.", rich_help_panel="Bring your own model")
    ] = _DEFAULT["preprocess"],
    mean: Annotated[
        Optional[str], typer.Option(help="Instead of --preprocess: the --model's input is (pixels x scale - mean) / std; one number or three, e.g. 0.485,0.456,0.406.", rich_help_panel="Bring your own model")
    ] = _DEFAULT["mean"],
    std: Annotated[Optional[str], typer.Option(help="See --mean; one number or three. \\[default: 1]", rich_help_panel="Bring your own model")] = _DEFAULT["std"],
    scale: Annotated[Optional[str], typer.Option(help="See --mean, e.g. 1/255. \\[default: 1]", rich_help_panel="Bring your own model")] = _DEFAULT["scale"],
    channel_order: Annotated[
        Optional[ChannelOrder], typer.Option(help="RGB or BGR: the channel order the --model expects. \\[default: the preset's, else RGB]", rich_help_panel="Bring your own model")
    ] = _DEFAULT["channel_order"],
    labels: Annotated[
        Optional[Path], typer.Option(help="The --model's class names in output order, one per line. \\[default: DATA's class folders, sorted]", rich_help_panel="Bring your own model")
    ] = _DEFAULT["labels"],
    model_output: Annotated[
        ModelOutput, typer.Option(help="auto (a softmax in the model, else measured on DATA), probabilities or logits (a Softmax is appended).", rich_help_panel="Bring your own model")
    ] = _DEFAULT["model_output"],
):
    """Fine-tune a teacher on DATA, distil it into a student, quantize, export checked [bold]model.tflite[/] and [bold]model.onnx[/]. With --model, compile a classifier you trained yourself."""
    from edgetl.compiler.pipeline import compile_model
    from edgetl.compiler.spec.recipe import load_recipe

    if recipe is None and data is None:
        raise EdgetlError("compile needs DATA (a folder of class folders) or --recipe FILE")

    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    # The settings on the line, by their CompileConfig names; beside a recipe, only those typed.
    line = {_FIELD.get(name, name): value for name, value in ctx.params.items()
            if name not in _NOT_SETTINGS and (recipe is None or typed(name))}
    settings = {**load_recipe(recipe), **line} if recipe is not None else line
    settings["overwrite"] = overwrite  # never from a recipe: replacing files is asked for each time
    if settings.get("out") is None and isinstance(settings.get("data"), (str, os.PathLike)):
        settings["out"] = Path("build") / (Path(settings["data"]).resolve().name or "model")
    _state["command"] = "compile"
    # trust_model is an argument, not a setting: a recipe (itself a file someone may hand over)
    # can never grant it. Settings from the line and the recipe alike are checked by CompileConfig.
    compile_model(CompileConfig(**settings), dry_run=dry_run, trust_model=trust_model)


@app.command("targets")
def targets_command():
    """List the device targets: what each one builds and checks."""
    from rich.console import Console
    from rich.table import Table

    from edgetl.compiler.spec.targets import TARGETS

    table = Table(title="edgetl targets (edgetl compile DATA --target NAME)", title_justify="left", show_lines=True)
    for col in ("target", "device file", "precision", "I/O", "checked after conversion", "threads", "student px", "runtime on the device"):
        table.add_column(col)
    for t in TARGETS.values():
        table.add_row(
            f"[bold]{t.name}[/]\n{t.summary}", " or ".join(f"model.{f}" for f in t.formats), t.quantize, t.io_dtype, t.ops, str(t.threads),
            str(t.student_size), f"{t.runtime}\n[dim]{t.notes}[/]",
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    console.print(
        "Every compile writes both model.tflite and model.onnx; 'device file' is the one the target's runtime "
        "takes (the report names it).",
        highlight=False,
    )


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo images and the compiled model.")] = Path(
        "build/demo"
    ),
    teacher: Annotated[str, typer.Option(help="An offline registry model.")] = "efficientnet_lite0",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = False,
):
    """Offline end-to-end run: make a small labelled image set, then compile it."""
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.demo import make_demo_dataset
    from edgetl.compiler.outputs import RUN_MARKER
    from edgetl.compiler.pipeline import compile_model, prepare_output

    # A demo that was interrupted left only its own images and an unfinished compile: the same
    # command resumes it (the images are made again, the same, and finished stages come from the
    # cache), as a compile does. Anything else in --out still needs --overwrite.
    held = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()
    interrupted = held <= {"data", "compiled"} and (out / "compiled" / RUN_MARKER).is_file()
    if interrupted and not overwrite:
        typer.echo(f"resuming the interrupted demo in {out}", err=True)
    prepare_output(out, overwrite or interrupted)
    data = make_demo_dataset(out / "data")
    typer.echo(f"demo images written to {data}/ (4 classes of textures, one truncated JPEG)", err=True)
    compile_model(
        CompileConfig(
            data=data,
            out=out / "compiled",
            teacher=teacher,
            student="efficientnet_lite0",
            student_size=160,
            finetune_epochs=2,
            distill_epochs=2,
            overwrite=True,
        )
    )


@app.command("models")
def models_command(
    all_models: Annotated[bool, typer.Option("--all", help="Include the tiny test models.")] = False,
):
    """List the model registry: input size, preprocessing, size, licence, weights."""
    from rich.console import Console
    from rich.table import Table

    from edgetl.models import get_config, list_models
    from edgetl.models._registry import get_registered

    table = Table(title="edgetl model registry (edgetl compile --teacher NAME)", title_justify="left")
    for col in ("name", "input", "params*", "preprocessing (inside the graph)", "licence", "ImageNet weights from", "offline"):
        table.add_column(col, justify="right" if col == "params*" else "left")
    missing = False
    for name in list_models(include_test=all_models):
        cfg, weights = get_config(name), get_registered(name).weights
        offline = weights is not None and weights.available_offline()
        missing |= weights is not None and not offline
        table.add_row(
            name,
            f"{cfg.input_size} px",
            f"{cfg.params / 1e6:.2f}M",
            cfg.preprocessing,
            cfg.licence,
            cfg.weights_source,
            "[green]yes[/]" if offline else "[yellow]no[/]",
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    console.print(
        "* with the 1000-class ImageNet head; a compiled model has a head for your classes instead, "
        "so its report shows fewer (efficientnet_lite0: 3.42M with 3 classes, 3.43M with 12).",
        highlight=False,
    )
    if missing:
        console.print(
            "Models marked 'no' download their weights on first use; without network, put the file "
            "the error names in ~/.keras/models or pass --teacher-weights FILE.",
            highlight=False,
        )


@app.command("report")
def report_command(
    build: Annotated[Path, typer.Argument(help="A finished build: the --out folder of `edgetl compile`.")],
    other: Annotated[Optional[Path], typer.Argument(help="A second build to compare with the first, side by side: paired image by image on the same test images, or out of fold when both cross-validated one folder.")] = None,
    html: Annotated[bool, typer.Option("--html", help="Rewrite BUILD/report.html from its report.json with this edgetl.")] = False,
):
    """Print a finished build's summary again; with two builds, compare them side by side."""
    from edgetl.compiler.report.compare import load_report, print_comparison

    first = load_report(build)
    if other is None:
        from edgetl.compiler.report.summary import print_summary

        # The folder as given now: a build moved or copied since its compile is where it is.
        print_summary({**first, "out": str(build).rstrip("/")})
    else:
        print_comparison(first, load_report(other), str(build), str(other))
    if html:
        from edgetl.compiler.report.html import write_html_report

        typer.echo(f"wrote {write_html_report(first, build)}", err=True)


def _register_runtime_commands() -> None:
    # Thin commands over edgetl.benchmarks and edgetl.runtime; importing them is cheap.
    from edgetl.benchmarks.commands import bench_command, predict_command

    app.command("predict")(predict_command)
    app.command("bench")(bench_command)


_register_runtime_commands()


def _take_debug_flag(argv: list[str]) -> list[str]:
    """argv without `--debug`, which is accepted anywhere on the line (`edgetl compile DATA --debug`
    as well as `edgetl --debug compile DATA`); the flag is recorded in _state. Arguments after a
    `--` separator are left alone (a file may be named --debug)."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--debug" in argv[:end]:
        _state["debug"] = True
        argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return argv


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 1."""
    _state["debug"] = False
    argv = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=argv, prog_name="edgetl", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130
            _say_interrupted()
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, ...
        # Typer coerces values with pydantic, whose "Value error, " prefix says nothing to a user.
        message = exc.format_message().replace(": Value error, ", ": ")
        typer.echo(f"error: {message} (see --help)", err=True)
        code = 1
    except EdgetlError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        code = 1
    except (KeyboardInterrupt, typer.Abort):
        _say_interrupted()
        code = 130
    except OSError as exc:  # the environment (a full disk, a read-only folder), or a bug
        code = _environment_error(exc)
    except Exception as exc:  # a bug in edgetl or its stack: short by default, full with --debug
        code = _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _say_interrupted() -> None:
    if _state["command"] == "compile":
        typer.echo(
            "interrupted: nothing was deployed; rerun the same command to resume (finished stages come from the cache)",
            err=True,
        )
    else:
        typer.echo("interrupted", err=True)


def _environment_error(exc: OSError) -> int:
    from edgetl.compiler.outputs import ENVIRONMENT_ERRNOS, describe_os_error

    if exc.errno not in ENVIRONMENT_ERRNOS:
        return _internal_error(exc)
    if _state["debug"]:
        traceback.print_exc()
    typer.echo(f"error: {describe_os_error(exc)}", err=True)
    return 1


def _internal_error(exc: Exception) -> int:
    if _state["debug"]:
        traceback.print_exc()
    else:
        typer.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
    return 1


if __name__ == "__main__":
    main()
