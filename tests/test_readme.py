"""README.md, run: its commands and its Python snippet, so the README cannot drift from the code.

The README is read as it is, never by line number: every fenced command block (a block whose
first word is a program, e.g. `edgetl`, `pip`, `python`), every inline `edgetl ...` or
`python -m ...` span, and every ```python block is found and checked, so sections added later are
covered without touching this file.

- Every `edgetl` command line is parsed by the real CLI: an unknown command or option, or a bad
  value, fails here (a renamed option breaks this test).
- Every `--option` the README's code spans name must be an option of some edgetl command.
- Cheap ones run for real, in a folder holding `photos/` (generated colour images in
  train/val/test folders), `photo1.jpg`, `photo2.jpg` and `my_model.keras` (a user's classifier): `models`, `targets`, `--help`,
  every `compile` as `--dry-run` (adding only that flag), `predict` and `bench` on a tiny model
  built first into `build/flowers/` (bench gets `--runs 3 --warmup 0`, and `--threads 1` when it
  names none: options that only shorten it), and the Python snippet with its CompileConfig
  swapped for the tiny test model's settings (its own text is run unchanged).
- Expensive ones are listed in EXPENSIVE with the reason each is skipped (pytest -rs shows them).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, colour_images, write_color_dataset
from edgetl.cli import app, main

README = REPO / "README.md"

# What is not run, and why. Matched on the start of a command (program and subcommand).
EXPENSIVE = {
    "edgetl demo": "trains two EfficientNet-Lite0 models (minutes); tests/test_demo.py runs it (slow)",
    "pip install": "installs packages: needs a package index, and would change this environment",
    "pip uninstall": "changes this environment",
    "python -m pytest": "the test suite itself",
    "edgetl compile ../shared/datasets/flowers12 --model": "needs flowers12 and the model benchmarks/train_own_model.py trains (minutes); "
    "`edgetl compile photos/ --model my_model.keras` runs instead, and tests/test_source_model.py compiles models brought with --model",
}
PYTHON_MODULE_RUNS = "trains or benchmarks real models for minutes; its --help is checked for the options named instead"
SHORTEN_BENCH = ["--runs", "3", "--warmup", "0"]
# The Python snippet compiles the README's photos with EfficientNet-Lite0 (minutes); here it gets
# the tiny test model instead, everything else as written.
TINY_SNIPPET_SETTINGS = dict(
    teacher="tiny_cnn", teacher_weights="none", student="none", finetune_epochs=1, selection="holdout",
)


# --------------------------------------------------------------------------------------------
# Reading the README
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    text: str  # as written, comment stripped (environment assignments included)
    argv: tuple[str, ...]  # the program and its arguments, environment assignments removed
    line: int  # 1-based, for messages only
    inline: bool  # an `inline span` in prose rather than a fenced block line
    env: tuple[str, ...] = ()  # leading `NAME=value` words, e.g. TF_CONFIG for multi-worker

    @property
    def program(self) -> str:
        return " ".join(self.argv[:3]) if self.argv[:2] == ("python", "-m") else " ".join(self.argv[:2])


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each ``` block."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, start, lines = stripped[3:].strip().lower(), number + 1, []
            else:
                blocks.append((lang, start, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _split(text: str) -> list[list[str]]:
    """A shell line as argv lists: `#` comments dropped, `&&` separating commands. Leading
    `NAME=value` words (an environment variable for that command, e.g. TF_CONFIG) are kept in
    argv; `Command.env` and `Command.argv` separate them."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&")
    lexer.whitespace_split, lexer.commenters = True, "#"
    argvs, current = [], []
    for token in lexer:
        if token == "&&":
            argvs.append(current)
            current = []
        else:
            current.append(token)
    return [a for a in argvs + [current] if a]


PROGRAM = re.compile(r"^[a-z][a-z0-9_.-]*$")


def _without_env(words: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(leading NAME=value words, the command itself)."""
    n = 0
    while n < len(words) and ENV_ASSIGNMENT.match(words[n]):
        n += 1
    return tuple(words[:n]), tuple(words[n:])


def readme_commands(text: str) -> list[Command]:
    commands = []
    for lang, start, lines in fenced_blocks(text):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        first_line = next((line for line in lines if line.strip()), "")
        try:
            first = next((_without_env(words)[1][:1] or ("",) for words in _split(first_line)), ("",))[0]
        except ValueError:  # not shell at all (unbalanced quotes in a folder tree, ...)
            continue
        if not PROGRAM.match(first):  # e.g. a folder tree (`photos/ ...`), not commands
            continue
        for offset, line in enumerate(lines):
            for words in _split(line):
                env, argv = _without_env(words)
                if argv:
                    commands.append(Command(" ".join(words), argv, start + offset, inline=False, env=env))
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`([^`]+)`", prose):  # a span may wrap onto the next line
        span = " ".join(match.group(1).split())
        if span.startswith("edgetl ") or span.startswith("python -m "):
            line = prose.count("\n", 0, match.start()) + 1
            for argv in _split(span):
                commands.append(Command(" ".join(argv), tuple(argv), line, inline=True))
    return commands


def readme_python_snippets(text: str) -> list[tuple[int, str]]:
    return [(start, "\n".join(lines)) for lang, start, lines in fenced_blocks(text) if lang in ("python", "py")]


def readme_option_names(text: str) -> set[tuple[int, str]]:
    """(line, --option) named in code spans and command blocks, except other programs' lines."""
    found = set()
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        if not span or span.split()[0] in ("pip", "python"):
            continue  # another program's options (checked with that command, below)
        line = prose.count("\n", 0, match.start()) + 1
        found |= {(line, name) for name in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span)}
    for command in readme_commands(text):
        if command.argv[0] == "edgetl":
            found |= {(command.line, a.split("=")[0]) for a in command.argv if a.startswith("--")}
    return found


TEXT = README.read_text()
COMMANDS = readme_commands(TEXT)
SNIPPETS = readme_python_snippets(TEXT)


def _id(command: Command) -> str:
    return f"L{command.line}:{command.text[:70]}"


# --------------------------------------------------------------------------------------------
# The CLI as click sees it
# --------------------------------------------------------------------------------------------


def _cli():
    import typer

    return typer.main.get_command(app)


def cli_options() -> dict[str, set[str]]:
    """Option names of each command ("" for the global ones)."""
    group = _cli()
    names = {"": {o for p in group.params for o in p.opts + p.secondary_opts} | {"--help"}}
    for name, command in group.commands.items():
        names[name] = {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help"}
    return names


def parse_with_the_cli(argv: tuple[str, ...]) -> None:
    """Parse `edgetl ...` exactly as the CLI would, without running it; raise on any error."""
    import typer

    group = _cli()
    args = [a for a in argv[1:] if a != "--debug"]  # main() takes --debug anywhere
    with group.make_context("edgetl", list(args), resilient_parsing=False) as ctx:
        # The subcommand and its arguments (click keeps them in `_protected_args` since 8.2).
        rest = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])) + ctx.args
        if not rest:
            return
        name, *sub_args = rest
        command = group.get_command(ctx, name)
        if command is None:
            raise typer.BadParameter(f"no such command {name!r}")
        if "--help" not in sub_args:
            command.make_context(name, list(sub_args), parent=ctx)


# --------------------------------------------------------------------------------------------
# Where the commands run
# --------------------------------------------------------------------------------------------


def _write_user_model(path: Path) -> None:
    """`my_model.keras`: a classifier of the user's own (3 colours, -1..1 input), for --model."""
    from edgetl._compat import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(path)


def _write_photos(folder: Path) -> None:
    from PIL import Image

    _write_user_model(folder / "my_model.keras")

    for split, per_class, seed in (("train", 14, 0), ("val", 4, 1), ("test", 4, 2)):
        write_color_dataset(folder / "photos" / split, per_class=per_class, seed=seed)
    for i, name in enumerate(("red", "blue"), 1):
        src = next((folder / "photos" / "test" / name).glob("*.png"))
        Image.open(src).convert("RGB").save(folder / f"photo{i}.jpg")
    # device_photos/: unlabelled images from the device's camera (--unlabeled), darker and JPEG'd.
    from edgetl.compiler.data.corruptions import apply_steps

    (folder / "device_photos").mkdir()
    pixels, _ = colour_images(8, seed=3)
    for i, image in enumerate(apply_steps(pixels, [("brightness", -0.2), ("jpeg", 30)], seed=0)):
        Image.fromarray(image).save(folder / "device_photos" / f"{i}.jpg")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A user's folder: photos/, two photos and build/flowers/ compiled (tiny model)."""
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model

    folder = tmp_path_factory.mktemp("readme")
    _write_photos(folder)
    # int8 pinned: fp32 and int8 files in both formats (bench DIR has variants/ to find), fewer
    # candidates to build and time than auto.
    settings = {**TINY_SNIPPET_SETTINGS, "quantize": "int8"}
    compile_model(CompileConfig(data=folder / "photos", out=folder / "build" / "flowers", **settings))
    return folder


@pytest.fixture
def fresh(tmp_path):
    """A user's folder with photos/ and nothing built yet."""
    _write_photos(tmp_path)
    return tmp_path


def run_edgetl(argv, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _expensive(command: Command) -> str | None:
    for prefix, reason in EXPENSIVE.items():
        if command.text.startswith(prefix):
            return reason
    return None


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_the_readme_has_what_this_test_reads():
    """Guards the reader itself: a README reshaped so that nothing is found must not pass silently."""
    programs = {c.program for c in COMMANDS}
    assert {"edgetl compile", "edgetl predict", "edgetl bench", "edgetl models", "edgetl targets"} <= programs
    assert len(SNIPPETS) >= 1
    assert any(c.text.startswith("edgetl compile --recipe") for c in COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "edgetl"], ids=_id)
def test_every_edgetl_command_parses(command):
    """Each documented edgetl line is accepted by the CLI as written (options, values, arguments).
    Inline spans may be fragments (`edgetl predict`), so they are checked for names only."""
    names = cli_options()
    sub = next((a for a in command.argv[1:] if not a.startswith("-")), None)
    if command.inline:
        assert sub is None or sub in names, f"README line {command.line}: no command {sub!r}"
        unknown = [a for a in command.argv if a.startswith("--") and a.split("=")[0] not in names[""] | names.get(sub, set())]
        assert not unknown, f"README line {command.line}: {command.text!r} names options the CLI lacks: {unknown}"
        return
    try:
        parse_with_the_cli(command.argv)
    except Exception as exc:  # click's usage errors, as a user would meet them
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        pytest.fail(f"README line {command.line}: `{command.text}` is refused by the CLI: {message}")


def test_every_option_the_readme_names_exists():
    names = set().union(*cli_options().values())
    missing = sorted((line, option) for line, option in readme_option_names(TEXT) if option not in names)
    assert not missing, "options in the README that no edgetl command has (line, option): " + repr(missing)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.inline], ids=_id)
def test_readme_command_runs(command, workspace, fresh, monkeypatch, capsys):
    reason = _expensive(command)
    if reason:
        pytest.skip(f"not run: {reason}")
    if command.env:  # parsed by test_every_edgetl_command_parses; running it needs what env names
        pytest.skip(f"not run: {' '.join(e.split('=')[0] for e in command.env)} names other machines (a multi-worker cluster)")
    argv = list(command.argv)
    if argv[0] == "python" and argv[1:2] == ["-m"]:
        _check_python_module(argv, command)
        pytest.skip(f"`{command.text}` not run: {PYTHON_MODULE_RUNS}")
    if argv[0] != "edgetl":
        pytest.skip(f"`{command.text}`: not an edgetl command, not checked")
    sub = next((a for a in argv[1:] if not a.startswith("-")), None)
    if sub == "compile":
        # An input under build/ (a recipe) needs the built workspace; otherwise a folder where
        # nothing is built yet, so the dry-run sees what a first run would.
        inputs = [a for i, a in enumerate(argv) if a.startswith("build/") and argv[i - 1] not in ("--out", "-o")]
        cwd = workspace if inputs else fresh
        code, out, err = run_edgetl(argv[1:] + ["--dry-run"], cwd, monkeypatch, capsys)
        assert code == 0, f"README line {command.line}: `{command.text} --dry-run` failed: {err.strip().splitlines()[-1:]}"
        assert "stages:" in out and not (cwd / _out_of(argv)).exists()
    elif sub in ("predict", "bench"):
        extra = SHORTEN_BENCH + ([] if "--threads" in argv or "-t" in argv else ["--threads", "1"]) if sub == "bench" else []
        if sub == "bench":
            extra += ["--out", str(workspace / "bench-out" / str(command.line))]
        code, out, err = run_edgetl(argv[1:] + extra, workspace, monkeypatch, capsys)
        assert code == 0, f"README line {command.line}: `{command.text}` failed: {err.strip().splitlines()[-1:]}"
        if sub == "predict":  # real class names, one line per photo (a folder: per photo in it)
            photos = [a for a in argv if a.endswith(".jpg")]
            photos += [str(p.relative_to(workspace)) for a in argv[3:] if (workspace / a).is_dir()
                       for p in sorted((workspace / a).rglob("*.jpg"))
                       if not any(part.startswith(".") for part in p.relative_to(workspace / a).parts)]  # hidden: skipped
            assert [line.split(":")[0] for line in out.splitlines()] == photos and photos
            assert "red" in out and "class_0" not in out
    else:
        code, out, err = run_edgetl(argv[1:], workspace, monkeypatch, capsys)
        assert code == 0, f"README line {command.line}: `{command.text}` failed: {err.strip().splitlines()[-1:]}"
        assert out.strip()


def _out_of(argv: list[str]) -> str:
    for flag in ("--out", "-o"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    return "build/photos"  # compile's default: build/<DATA's name>


def _check_python_module(argv: list[str], command: Command) -> None:
    """The module exists and its --help lists every option the README gives it."""
    import importlib.util

    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"README line {command.line}: no module {module}"
    # After a bare `--`, a benchmark passes the rest to `edgetl compile` (benchmarks/fewshot.py).
    own, passed = (argv[3 : argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv[3:], [])
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps option names in a narrow terminal
    for options, program in (([a.split("=")[0] for a in own if a.startswith("--")], [module]),
                             ([a.split("=")[0] for a in passed if a.startswith("--")], ["edgetl.cli", "compile"])):
        if options:
            result = subprocess.run([sys.executable, "-m", *program, "--help"], capture_output=True, text=True, timeout=300, env=env)
            assert result.returncode == 0, result.stderr[-500:]
            missing = [o for o in options if o not in result.stdout]
            assert not missing, f"README line {command.line}: {' '.join(program)} has no option {missing}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.inline and c.argv[:2] == ("python", "-m")], ids=_id)
def test_inline_python_modules_exist(command):
    _check_python_module(list(command.argv), command)


@pytest.mark.parametrize("start, code", SNIPPETS, ids=[f"L{s}" for s, _ in SNIPPETS])
def test_python_snippet_runs(start, code, fresh, monkeypatch, capsys):
    """The "From Python" snippet, as written, in a folder with photos/ and photo1.jpg; only its
    CompileConfig is given the tiny test model (the same settings class, so any field it names
    must still exist)."""
    import edgetl.compiler.spec.config as config_module

    real = config_module.CompileConfig
    tiny = {**TINY_SNIPPET_SETTINGS, "quantize": "fp32"}  # the API path, not quantization, is under test
    monkeypatch.setattr(config_module, "CompileConfig", lambda **kwargs: real(**{**kwargs, **tiny}))
    monkeypatch.chdir(fresh)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{start}", "exec"), namespace)
    out = capsys.readouterr().out
    label = out.strip().splitlines()[-1].split()[0]
    assert label in ("red", "green", "blue"), out[-300:]
    assert label == "red"  # photo1.jpg is a red test photo and the tiny model learnt the colours


def test_python_snippet_imports_as_a_script_from_another_folder(tmp_path):
    """The snippet's imports work in a fresh interpreter started elsewhere (no TensorFlow needed)."""
    (start, code), *_ = SNIPPETS
    imports = "\n".join(line for line in code.splitlines() if line.startswith(("from ", "import ")))
    script = tmp_path / "snippet_imports.py"
    script.write_text(imports + "\nprint('ok')\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-500:]


# Paths the README gives as files of this repository: the top-level folders of the checkout.
REPO_FILE = re.compile(r"(?<![\w./-])((?:edgetl|compiler|models|runtime|benchmarks|tests)/[\w./-]*\.(?:py|sh|fbs|toml|md))\b")


def readme_repository_files(text: str) -> set[tuple[int, str]]:
    """(line, path) of every repository file the README names in a code span or command block."""
    found = set()
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`([^`]+)`", prose):
        line = prose.count("\n", 0, match.start()) + 1
        found |= {(line, path) for path in REPO_FILE.findall(match.group(1))}
    for _lang, start, lines in fenced_blocks(text):
        found |= {(start + i, path) for i, line in enumerate(lines) for path in REPO_FILE.findall(line)}
    return found


def test_every_repository_file_the_readme_names_exists():
    """A file the README points to (`compiler/stages.py`, `tests/test_security.py`) is there, so a
    moved or renamed module cannot leave the README pointing at nothing."""
    named = readme_repository_files(TEXT)
    assert len(named) >= 10, "the reader found almost no file paths: has the README's form changed?"
    missing = sorted((line, path) for line, path in named if not (REPO / path).is_file())
    assert not missing, "files the README names that are not in the repository (line, path): " + repr(missing)
