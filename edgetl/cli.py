"""The `edgetl` command line. Commands stay thin: they build a config and call the library.

TensorFlow is imported inside commands only, so `edgetl --help` answers at once.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.errors import EdgetlError

app = typer.Typer(
    name="edgetl",
    help="Transfer learning to edge devices: fine-tune, export and check image classifiers.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    _state["debug"] = debug
    if version:
        from edgetl import __version__

        typer.echo(f"edgetl {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:  # `edgetl` alone: show what it can do
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


@app.command("compile")
def compile_command(
    data: Annotated[Path, typer.Argument(help="Image folder: DATA/<class>/* or DATA/train|val|test/<class>/*.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder. [default: build/<DATA's name>]")
    ] = None,
    teacher: Annotated[str, typer.Option(help="Registry model to fine-tune (see `edgetl models`).")] = "resnet50",
    teacher_weights: Annotated[
        str, typer.Option(help="'imagenet' or a weights file (e.g. a Keras no-top .h5 for resnet50).")
    ] = "imagenet",
    head_epochs: Annotated[int, typer.Option(min=1, help="Max epochs of head training on cached features.")] = 40,
    finetune_epochs: Annotated[
        int, typer.Option(min=0, help="Max epochs of fine-tuning the top of the backbone (0 skips it).")
    ] = 8,
    student: Annotated[
        str, typer.Option(help="Registry model distilled from the teacher and deployed; 'none' deploys the teacher.")
    ] = "efficientnet_lite0",
    student_size: Annotated[
        Optional[int], typer.Option(min=32, help="Student input size in px (e.g. 160 or 128 for a slow device).")
    ] = None,
    student_weights: Annotated[str, typer.Option(help="'imagenet', a weights file, or 'none'.")] = "imagenet",
    distill_epochs: Annotated[int, typer.Option(min=0, help="Max epochs of distillation (early stopping on val).")] = 12,
    temperature: Annotated[float, typer.Option(min=1.0, help="Softmax temperature of the soft targets.")] = 4.0,
    alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of the teacher's soft targets in the loss (0: labels only).")
    ] = 0.7,
    unlabeled: Annotated[
        Optional[Path], typer.Option(help="Folder of unlabelled images (e.g. from the device) for the soft loss alone.")
    ] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also train the student without the teacher (ablation).")
    ] = True,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share of images carved out for val.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share carved out for test.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of splits, initialisation and augmentation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace edgetl's files in an existing --out.")] = False,
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Stage cache folder. [default: $EDGETL_CACHE or ~/.cache/edgetl]")
    ] = None,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse trained stages whose inputs are unchanged.")
    ] = True,
):
    """Fine-tune a teacher on DATA, distil it into a student, export checked [bold]model.tflite[/] and [bold]model.onnx[/]."""
    from edgetl.compiler.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model

    config = CompileConfig(
        data=data,
        out=out or Path("build") / (data.resolve().name or "model"),
        teacher=teacher,
        teacher_weights=teacher_weights,
        head_epochs=head_epochs,
        finetune_epochs=finetune_epochs,
        student=student,
        student_size=student_size,
        student_weights=student_weights,
        distill_epochs=distill_epochs,
        temperature=temperature,
        alpha=alpha,
        unlabeled=unlabeled,
        baseline=baseline,
        batch_size=batch_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        overwrite=overwrite,
        cache_dir=cache_dir,
        use_cache=cache,
    )
    compile_model(config)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo images and the compiled model.")] = Path(
        "build/demo"
    ),
    teacher: Annotated[str, typer.Option(help="An offline registry model.")] = "efficientnet_lite0",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = False,
):
    """Offline end-to-end run: make a small labelled image set, then compile it."""
    from edgetl.compiler.config import CompileConfig
    from edgetl.compiler.demo import make_demo_dataset
    from edgetl.compiler.pipeline import compile_model, prepare_output

    prepare_output(out, overwrite)
    data = make_demo_dataset(out / "data")
    typer.echo(f"demo images written to {data}/ (4 classes of textures, one truncated JPEG)", err=True)
    compile_model(
        CompileConfig(
            data=data,
            out=out / "compiled",
            teacher=teacher,
            student="efficientnet_lite0",
            student_size=160,
            head_epochs=20,
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
    for col in ("name", "input", "params", "preprocessing (inside the graph)", "licence", "ImageNet weights from", "offline"):
        table.add_column(col, justify="right" if col == "params" else "left")
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
    if missing:
        console.print(
            "Models marked 'no' download their weights on first use; without network, put the file "
            "the error names in ~/.keras/models or pass --teacher-weights FILE.",
            highlight=False,
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 1."""
    try:
        code = app(args=argv, prog_name="edgetl", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, ...
        typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
        code = 1
    except EdgetlError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        code = 1
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # a bug in edgetl or its stack: short by default, full with --debug
        if _state["debug"]:
            traceback.print_exc()
            code = 1
        else:
            typer.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
            code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
