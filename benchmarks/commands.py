"""`edgetl bench` and `edgetl predict`: thin typer commands over the harness and the runtimes.

Registered by edgetl/cli.py with `app.command("bench")(bench_command)` and
`app.command("predict")(predict_command)`. Nothing heavy is imported at module level, so
`edgetl --help` stays instant; no command here imports TensorFlow unless a Keras model is run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from edgetl.runtime import MAX_THREADS


def bench_command(
    models: Annotated[
        list[Path],
        typer.Argument(
            help="Model files (.tflite, .onnx; .keras/SavedModel with --runtime keras) or folders: "
            "every .tflite and .onnx in a folder (and in its variants/, as edgetl compile writes it) is benchmarked.",
            show_default=False,
        ),
    ],
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Also score accuracy on DIR/<class>/* (or DATA/train|val|test/<class>/*: its test "
            "split); folder names are matched to the model's labels.",
        ),
    ] = None,
    threads: Annotated[
        Optional[str],
        typer.Option("--threads", "-t", help="CPU thread counts to run, e.g. 1,2,4. \\[default: every usable core]"),
    ] = None,
    runtime: Annotated[
        Optional[str],
        typer.Option(
            "--runtime",
            "-r",
            help="Only these runtimes, comma-separated: litert, litert-gpu, onnxruntime, onnxruntime-cuda, "
            "onnxruntime-tensorrt, keras; or cpu, gpu, all. \\[default: every runtime but keras]",
        ),
    ] = None,
    cores: Annotated[
        Optional[str],
        typer.Option("--cores", help="Pin every case to these CPU cores (e.g. 0, or 0-3) to approximate a small device."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per call.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls after the first one.")] = 10,
    runs: Annotated[int, typer.Option(min=1, help="Timed calls (at least).")] = 100,
    min_time: Annotated[
        float, typer.Option("--min-time", min=0.0, help="Also keep timing until this many seconds have passed.")
    ] = 0.0,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder for bench.json and bench.png. \\[default: the model's folder/bench]"),
    ] = None,
    chart: Annotated[bool, typer.Option("--chart/--no-chart", help="Write bench.png.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the bench.json and bench.png of an earlier bench in the --out folder.")] = False,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a Keras model (.h5, SavedModel, .keras) even if it holds code (Lambda layers, "
            "bytecode) that runs when it is opened. Only for files whose source you trust.",
        ),
    ] = False,
    corruptions: Annotated[
        bool, typer.Option("--corruptions", help="Also score accuracy under camera corruptions (noise, blur, exposure, colour cast, JPEG, pixelate) of the --data images.")
    ] = False,
):
    """Latency (p50/p90/p99), load time, memory, size and accuracy per file × runtime × threads."""
    from edgetl.benchmarks.harness import BenchConfig, parse_int_list, run_bench
    from edgetl.benchmarks.table import print_table

    from edgetl.errors import ModelFileError

    _warn_incomplete_builds(models)
    config = BenchConfig(
        models=tuple(models),
        data=data,
        threads=parse_int_list(threads, "threads") if threads else None,
        runtimes=tuple(r for r in runtime.split(",") if r.strip()) if runtime else None,
        cores=parse_int_list(cores, "cores") if cores else None,
        batch=batch,
        warmup=warmup,
        runs=runs,
        min_time=min_time,
        out=out,
        chart=chart,
        trust_model=trust_model,
        corruptions=corruptions,
        overwrite=overwrite,
    )
    report = run_bench(config, log=lambda msg: typer.echo(msg, err=True))
    print_table(report)
    for size, section in (report.get("robustness") or {}).items():
        from edgetl.compiler.evaluation.robustness import format_table

        typer.echo(format_table(section))
    written = ", ".join(report["outputs"].values())
    typer.echo(f"wrote {written}", err=True)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    if failed:
        first = failed[0]
        raise ModelFileError(
            f"{len(failed)} of {len(report['results'])} case(s) failed, e.g. {first['file']} on "
            f"{first['runtime']}: {first['reason']}"
        )


def predict_command(
    model: Annotated[Path, typer.Argument(help="A .tflite or .onnx file (or .keras / SavedModel).", show_default=False)],
    images: Annotated[list[Path], typer.Argument(help="Image files to classify, or folders of them (every image under a folder, in name order).", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many labels to print per image.")] = 3,
    runtime: Annotated[
        Optional[str],
        typer.Option("--runtime", "-r", help="Runtime to use (default: litert for .tflite, onnxruntime for .onnx)."),
    ] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, max=MAX_THREADS, help="CPU threads (default: the runtime's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a Keras model (.h5, SavedModel, .keras) even if it holds code (Lambda layers, "
            "bytecode) that runs when it is opened. Only for files whose source you trust.",
        ),
    ] = False,
):
    """Top-k labels and probabilities for each image, read from the model's model_info.json / labels.txt."""
    from edgetl.runtime import RUNTIMES, open_session
    from edgetl.runtime.classify import classify_files

    from edgetl.errors import DataError, ModelFileError

    if runtime is not None and runtime not in RUNTIMES:
        raise ModelFileError(f"--runtime {runtime!r} is not a runtime; one of {', '.join(RUNTIMES)}")
    _warn_incomplete_builds([model])
    session = open_session(model, runtime=runtime, threads=threads, trust_model=trust_model)
    try:
        info = session.info()
        predictions, failures, notes = classify_files(session, images, top_k=top_k)
    finally:
        session.close()
    if info.assumed:
        notes = [f"{model.name} did not come with edgetl's model_info.json; assumed: " + "; ".join(info.assumed)] + notes
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        typer.echo(json.dumps({
            "model": str(model),
            "runtime": session.runtime,
            "labels_from": info.source,
            "assumed": list(info.assumed) + notes[1 if info.assumed else 0:],
            "predictions": [p.to_json() for p in predictions],
            "unreadable": failures,
        }, indent=2))
    else:
        for p in predictions:
            typer.echo(f"{p.path}: " + ", ".join(f"{label} {prob:.4f}" for label, prob in p.top))
    if failures:
        folders = sum("the folder cannot be read" in f for f in failures)  # classify_files' line for one
        images = len(failures) - folders
        total = len(predictions) + images
        said = [f"cannot read {images} of {total} image{'s' if total != 1 else ''}"] if images else []
        said += [f"cannot list {folders} folder{'s' if folders != 1 else ''}"] if folders else []
        raise DataError(" and ".join(said) + ": " + "; ".join(failures))


def _warn_incomplete_builds(paths) -> None:
    """A file from a compile that did not finish may not have passed its checks: say so."""
    from edgetl.compiler.outputs import incomplete_build_warning

    for path in paths:
        warning = incomplete_build_warning(path)
        if warning:
            typer.echo(f"warning: {warning}", err=True)
