"""The output folder of one compile: checked before any work, locked, staged, published at the end.

What a user sees in --out is either nothing new or a complete, checked build:

- Before any work, `check_location` and `BuildOutput.check` refuse an --out that is a file, lies
  below a file, cannot be written, lies inside DATA (edgetl would train on its own outputs),
  holds someone's files (without --overwrite) or is in use by another compile. They create
  nothing.
- `BuildOutput.open` (after the data check) creates --out, takes its lock (`.edgetl.lock`, an
  flock that dies with its process, holding pid and host) and writes the run marker.
- Every stage writes into the hidden staging folder `.edgetl-staging/`.
- `BuildOutput.publish` moves the staged files into place once every check has passed, after
  removing edgetl's own previous outputs (never the user's other files), then drops the marker.
- On failure, files that failed a check are renamed so that none keeps a deployable name, the
  staging folder stays (hidden) for inspection, and the next compile into --out clears it. A
  failure before any stage wrote a file removes the --out this compile created.

`find_builds` finds edgetl builds inside a data folder, so they are never taken as a class.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
from pathlib import Path

from edgetl.errors import DataError, OutputExistsError, OutputInUseError, OutputLocationError

RUN_MARKER = ".edgetl-incomplete"  # present from the start of a compile until it is published
LOCK_FILE = ".edgetl.lock"
STAGING_DIR = ".edgetl-staging"
# The files of a build (the report, recipe and metadata files are named in their own modules).
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
TEACHER_FILE = "teacher.keras"
STUDENT_FILE = "student.keras"
SOURCE_FILE = "source.keras"  # --model: the user's model wrapped (raw pixels in, preprocessing inside)
VARIANTS_FP32_TFLITE = "variants/model.fp32.tflite"  # the verified float export
# What edgetl writes at the top of --out: replaced as a whole by --overwrite. Anything else in
# --out is the user's and is left alone.
EDGETL_FILES = (
    TFLITE_FILE, ONNX_FILE, TEACHER_FILE, STUDENT_FILE, SOURCE_FILE, "labels.txt", "model_info.json", "report.json",
    "report.html", "confusion_matrix.png", "recipe.yaml", "manifest.json",
)
EDGETL_DIRS = ("variants", "app")
_HIDDEN_OWN = (RUN_MARKER, LOCK_FILE, STAGING_DIR)
# Final names of deployable files: never left in place when a check failed.
DEPLOYABLE = (TFLITE_FILE, ONNX_FILE)
# Errors of the environment, not of edgetl: reported as one line naming the path and the cause.
# Anywhere in a compile: a full disk, a read-only or forbidden place.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# While creating --out itself, an impossible path (under /proc, below a file) too.
CREATE_ERRNOS = ENVIRONMENT_ERRNOS | {errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.EINVAL}


def describe_os_error(exc: OSError, path: Path | str | None = None) -> str:
    """'cannot write /x/y: No space left on device' (what an environment error says). A refused
    permission may come from a read as well as a write, so it says "access"."""
    where = exc.filename or path
    cause = exc.strerror or str(exc)
    verb = "access" if exc.errno in (errno.EACCES, errno.EPERM) else "write"
    return f"cannot {verb} {where}: {cause}" if where else f"cannot {verb} the output: {cause}"


@contextlib.contextmanager
def environment_errors(path: Path, errnos=ENVIRONMENT_ERRNOS):
    """Turn an OSError of the environment (disk full, read-only, permission) into one clear line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in errnos:
            raise OutputLocationError(describe_os_error(exc, path)) from exc
        raise


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_location(out: Path, data: Path, unlabeled: Path | None = None) -> None:
    """Refuse an --out that cannot hold a build, or that lies inside the images it is built from."""
    given = Path(out)
    out = given.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputLocationError(f"--out {given} is a file, not a folder; choose a folder for the build")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise OutputLocationError(f"--out {given} cannot be created: {existing} is a file, not a folder")
    for name, folder in (("DATA", data), ("--unlabeled", unlabeled)):
        if folder is None:
            continue
        folder = Path(folder).expanduser().resolve()
        if _inside(out, folder):
            suggestion = folder.parent / "build" / folder.name
            raise OutputLocationError(
                f"--out {given} is inside {name} {folder}: edgetl would read its own outputs as images; "
                f"choose an --out outside it, e.g. --out {suggestion}"
            )
    fstype = _filesystem_type(existing)
    if fstype in _VIRTUAL_FILESYSTEMS:
        raise OutputLocationError(f"--out {given} cannot be created: {existing} is on the kernel's {fstype} filesystem, not a place for files")
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only_filesystem(existing):
        raise OutputLocationError(f"--out {given} cannot be created: {existing} is not writable")


# Kernel filesystems: writable-looking to root, but no place for a build.
_VIRTUAL_FILESYSTEMS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs", "configfs"}


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem `path` is on, from /proc/self/mounts (None where unknown)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path)
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype


def _read_only_filesystem(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def is_edgetl_build(folder: Path) -> bool:
    """A folder that edgetl wrote a build into (finished, unfinished or in progress)."""
    folder = Path(folder)
    if any((folder / name).exists() for name in _HIDDEN_OWN):
        return True
    if (folder / "model_info.json").is_file():
        return True
    return (folder / "manifest.json").is_file() and (folder / "report.json").is_file()


def find_builds(root: Path, limit: int = 5) -> list[Path]:
    """edgetl builds below `root` (its own outputs: never training data), up to `limit`."""
    root = Path(root)
    if not root.is_dir():
        return []
    found, seen = [], set()
    for folder, dirs, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        if is_edgetl_build(Path(folder)):
            found.append(Path(folder))
            dirs[:] = []
            if len(found) >= limit:
                break
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # hidden folders are never scanned
    return found


def check_data_holds_no_build(data: Path, name: str = "DATA") -> None:
    """Refuse a data folder with an edgetl build inside: its golden images, confusion matrix
    and app files would be trained as a class."""
    builds = find_builds(data)
    if builds:
        shown = ", ".join(str(b) for b in builds[:3])
        raise DataError(
            f"{name} {data} holds an edgetl build ({shown}): its files are edgetl's outputs, not images of a class; "
            "move the build out of the data folder (or delete it)"
        )


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


class OutputLock:
    """One compile at a time per --out: an flock on `.edgetl.lock` (released by the kernel when
    its process dies, so a killed compile never leaves it stuck), holding who took it."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fd: int | None = None

    def holder(self) -> dict | None:
        """Who holds the lock now (None if nobody: no file, or a file left by a dead process)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None  # no lock there (or --out cannot exist: check_location says why)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read(fd) or {}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = self._read(fd)
                os.close(fd)
                raise OutputInUseError(self.describe_holder(info)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and removed the file between open and flock: retry
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def describe_holder(self, info: dict | None) -> str:
        out = self.path.parent
        if not info:
            return f"--out {out} is in use by another edgetl compile; wait for it to finish or choose another --out"
        return (
            f"--out {out} is in use by another edgetl compile (pid {info.get('pid')} on {info.get('host')}, "
            f"started {info.get('started')}); wait for it to finish or choose another --out"
        )

    @staticmethod
    def _read(fd: int) -> dict | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "null")
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------------------------
# One compile's output folder
# --------------------------------------------------------------------------------------------


class BuildOutput:
    """--out during one compile; see the module docstring for the life cycle."""

    def __init__(self, out: Path, overwrite: bool, run_id: str | None = None, announce=print):
        self.out = Path(out)
        self.overwrite = overwrite
        self.run_id = run_id
        self.staging = self.out / STAGING_DIR
        self.lock = OutputLock(self.out)
        self._announce = announce
        self._created = False  # --out did not exist before this compile

    # -- before any work: checks that create nothing -----------------------------------------

    def user_files(self) -> list[str]:
        """Names in --out other than edgetl's hidden bookkeeping."""
        if not self.out.is_dir():
            return []
        return sorted(p.name for p in self.out.iterdir() if p.name not in _HIDDEN_OWN)

    def resuming(self) -> bool:
        marker = self.out / RUN_MARKER
        return self.run_id is not None and marker.is_file() and marker.read_text().strip() == self.run_id

    def check(self, locked_by_us: bool = False) -> None:
        """Refuse a folder in use by another compile, or one holding files, unless asked to."""
        if self.out.exists() and not self.out.is_dir():
            raise OutputLocationError(f"--out {self.out} is a file, not a folder; choose a folder for the build")
        if not locked_by_us:
            holder = self.lock.holder()
            if holder is not None:
                raise OutputInUseError(self.lock.describe_holder(holder))
        held = self.user_files()
        if held and not self.overwrite and not self.resuming():
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise OutputExistsError(
                f"output folder {self.out} already holds files ({shown}); pass --overwrite to replace "
                "edgetl's files there, or choose another --out"
            )

    # -- the compile ------------------------------------------------------------------------

    def open(self) -> Path:
        """Create --out, take its lock, mark the run unfinished, and return an empty staging folder."""
        try:
            self._created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in CREATE_ERRNOS:
                raise
            raise OutputLocationError(f"--out {self.out} cannot be created: {exc.strerror or exc}") from exc
        with environment_errors(self.out, CREATE_ERRNOS):
            self.lock.acquire()
            try:
                self.check(locked_by_us=True)  # again, under the lock: another compile may have finished meanwhile
                if self.resuming():
                    self._announce(f"resuming the interrupted compile in {self.out} (finished stages come from the cache)")
                elif self.staging.exists():
                    self._announce(f"clearing the unfinished compile left in {self.out}")
                if self.run_id is not None:
                    (self.out / RUN_MARKER).write_text(self.run_id + "\n")
                if self.staging.exists():
                    shutil.rmtree(self.staging)
                self.staging.mkdir()
            except BaseException:
                self.lock.release()
                raise
        return self.staging

    def publish(self) -> None:
        """Replace edgetl's previous outputs by the staged build, then mark the run finished."""
        staged = {p.name for p in self.staging.iterdir() if not p.name.startswith(".")}
        with environment_errors(self.out):
            # Everything edgetl wrote before goes, even what this build does not make (an
            # earlier fp16 variant, a student.keras when this build deploys the teacher). The
            # manifest first: with the run marker, a manifest says the files beside it are the
            # previous finished build (incomplete_build_warning), which holds only until here.
            for name in sorted((*EDGETL_FILES, *EDGETL_DIRS), key=lambda n: n != "manifest.json"):
                _remove(self.out / name)
            # The manifest last: a folder with a manifest and no run marker is a finished build.
            for name in sorted(staged, key=lambda n: n == "manifest.json"):
                os.replace(self.staging / name, self.out / name)
            shutil.rmtree(self.staging)
            (self.out / RUN_MARKER).unlink(missing_ok=True)

    def fail(self, failed_files: tuple[str, ...] = DEPLOYABLE) -> None:
        """After an error: no staged file keeps a deployable name (it did not pass every check)."""
        if not self.staging.is_dir():
            return
        for name in failed_files:
            path = self.staging / name
            if path.exists():
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(f"{path.stem}.unchecked{path.suffix}"))

    def close(self) -> None:
        # A compile that failed before any stage wrote a file (missing teacher weights, say) and
        # created --out itself leaves nothing behind: not even an empty folder with hidden files.
        # Its bookkeeping goes while the lock is still held, so no other compile's is touched.
        empty_failure = self._created and self.staging.is_dir() and not any(self.staging.iterdir())
        if empty_failure:
            with contextlib.suppress(OSError):
                self.staging.rmdir()
                (self.out / RUN_MARKER).unlink(missing_ok=True)
        self.lock.release()
        if empty_failure:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty: another compile may have taken it meanwhile


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def incomplete_build_warning(model_path: Path) -> str | None:
    """A warning when `model_path` comes from a build that did not finish (or is unfinished
    staging), for `edgetl predict` and `edgetl bench`; None for a finished or foreign file,
    including a finished build's file while a later compile into its folder is unfinished."""
    path = Path(model_path).expanduser().resolve()
    folders = [path] if path.is_dir() else []
    folders += list(path.parents)[:3]  # model.tflite, variants/x.tflite, app/...
    for folder in folders:
        if folder.name == STAGING_DIR:
            return f"{model_path} is in the staging folder of an unfinished edgetl compile: it has not passed every check"
        if (folder / RUN_MARKER).is_file():
            if (folder / "manifest.json").is_file():
                # A later compile into this folder is unfinished, but it has not begun to publish
                # (publish removes the manifest first and moves the new one in last): the files
                # here are the previous build's, which finished.
                return None
            return (
                f"{model_path} comes from an edgetl compile in {folder} that did not finish (or is still running): "
                "it may not have passed every check; rerun the compile to finish it"
            )
    return None
