"""edgetl.benchmarks: the harness behind `edgetl bench` and `edgetl predict`, and scripts that print figures.

    harness.run_bench(BenchConfig(...))   every file x runtime x threads in a fresh worker process
    measure.time_calls(fn, ...)           the timing loop and its statistics
    commands.bench_command / predict_command   the typer commands (registered in edgetl/cli.py)
    python -m edgetl.benchmarks.overhead  edgetl's p50 against the raw interpreter's

Importing this package imports neither TensorFlow nor any runtime library.
"""
