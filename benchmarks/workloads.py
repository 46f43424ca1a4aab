"""Workloads for the benchmarks: sequences of agent steps applied to a workspace directory.

A workload is a list of steps. Step 0 creates the initial tree in an empty directory; every later
step changes the tree the way one agent step would: it rewrites the files whose bytes change,
creates new ones and deletes what is gone, all written "now" (mtimes are not copied from
anywhere). Two kinds exist today:

- TreeSequence: a series of source trees on disk, applied one after another with sync_tree().
  DjangoReleases is one: consecutive Django sdists from PyPI, downloaded once into the cache.
  Another release series (an npm node_modules tree, say) only needs its own prepare().
- SyntheticEdits: a generated tree plus an edit stream (N files modified, M added, K deleted per
  step) driven by random.Random(seed), so every run and every machine sees the same steps.

Benchmarks check correctness with tree_manifest() and compare_manifests().
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Downloads and extracted trees live here (gitignored); $SNAPD_BENCH_CACHE moves it.
CACHE_DIR = Path(os.environ.get("SNAPD_BENCH_CACHE", BENCH_DIR / ".cache"))
# Directories searched for already-downloaded sdists before asking PyPI ($SNAPD_BENCH_SEED adds
# one; /tmp/exp/dl is where they were first fetched on the development machine).
SEED_DIRS = [Path(p) for p in os.environ.get("SNAPD_BENCH_SEED", "").split(os.pathsep) if p] + [
    Path("/tmp/exp/dl")
]

# Names the snapshot engine creates inside a workspace for a moment (restore temporaries,
# probes). Workload steps and manifests leave them alone.
ENGINE_INTERNAL_PREFIX = b".~snapd-"

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --- steps and workloads --------------------------------------------------------------------------
@dataclass
class ApplyStats:
    """What one step did to a workspace."""

    files_written: int = 0  # existing files whose bytes changed
    files_created: int = 0
    files_deleted: int = 0
    modes_changed: int = 0  # entries whose content was equal but permission bits were not
    dirs_created: int = 0
    dirs_deleted: int = 0
    symlinks_written: int = 0
    bytes_written: int = 0

    @property
    def touched(self) -> int:
        return (
            self.files_written
            + self.files_created
            + self.files_deleted
            + self.modes_changed
            + self.symlinks_written
        )


class Step(ABC):
    label: str
    # A tree the workspace must equal (bytes and modes) after apply(), if the step has one.
    source: Path | None = None

    @abstractmethod
    def apply(self, workspace: Path) -> ApplyStats:
        """Change the workspace from the previous step's state to this step's."""


class Workload(ABC):
    name: str

    def prepare(self, log: Log = _quiet) -> None:  # noqa: B027 - optional hook
        """Fetch or generate whatever the steps need (cached; a no-op when there is nothing)."""

    @abstractmethod
    def steps(self) -> list[Step]:
        """All steps in order; step 0 builds the initial tree in an empty directory."""

    def describe(self) -> str:
        return self.name


# --- tree sequences (release series) --------------------------------------------------------------
class TreeStep(Step):
    def __init__(self, label: str, source: Path) -> None:
        self.label = label
        self.source = source

    def apply(self, workspace: Path) -> ApplyStats:
        return sync_tree(self.source, workspace)


class TreeSequence(Workload):
    """Apply a list of directory trees one after another."""

    def __init__(self, name: str, trees: list[tuple[str, Path]]) -> None:
        self.name = name
        self._trees = trees

    def steps(self) -> list[Step]:
        return [TreeStep(label, path) for label, path in self._trees]


def sync_tree(
    src: Path | str | bytes,
    dst: Path | str | bytes,
    *,
    leave_alone: Callable[[bytes], bool] | None = None,
) -> ApplyStats:
    """Make dst equal to src (bytes, permission bits, symlink targets) touching only what differs.

    Files whose bytes differ are rewritten in place (as an editor or a formatter does), new
    entries are created, entries src lacks are deleted (directories with their contents), and
    permission bits are set from src. Timestamps are not copied: what a step writes is written
    now. Names for which leave_alone(name) is true (the engine's temporaries) are not touched.
    """
    stats = ApplyStats()
    keep = leave_alone or _is_engine_internal
    _sync_dir(os.fsencode(src), os.fsencode(dst), stats, keep)
    return stats


def _is_engine_internal(name: bytes) -> bool:
    return name.startswith(ENGINE_INTERNAL_PREFIX)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISREG(mode):
        return "f"
    return "?"


def _remove(path: bytes, st: os.stat_result, stats: ApplyStats) -> None:
    if stat.S_ISDIR(st.st_mode):
        for _root, dirs, files in os.walk(path):
            stats.files_deleted += len(files)
            stats.dirs_deleted += len(dirs)
        stats.dirs_deleted += 1
        shutil.rmtree(path)
    else:
        os.unlink(path)
        stats.files_deleted += 1


def _sync_dir(src: bytes, dst: bytes, stats: ApplyStats, keep: Callable[[bytes], bool]) -> None:
    wanted: dict[bytes, os.stat_result] = {}
    with os.scandir(src) as it:
        for e in it:
            wanted[e.name] = e.stat(follow_symlinks=False)
    present: dict[bytes, os.stat_result] = {}
    with os.scandir(dst) as it:
        for e in it:
            if not keep(e.name):
                present[e.name] = e.stat(follow_symlinks=False)
    # Deletions first, so that an entry changing type gets its name back.
    for name, st in present.items():
        want = wanted.get(name)
        if want is None or _kind(want.st_mode) != _kind(st.st_mode):
            _remove(os.path.join(dst, name), st, stats)
    for name in sorted(wanted):
        want = wanted[name]
        have = present.get(name)
        if have is not None and _kind(have.st_mode) != _kind(want.st_mode):
            have = None  # deleted above
        s, d = os.path.join(src, name), os.path.join(dst, name)
        mode = stat.S_IMODE(want.st_mode)
        if stat.S_ISDIR(want.st_mode):
            if have is None:
                os.mkdir(d, 0o700)  # the real mode is set after the contents are in place
                stats.dirs_created += 1
            _sync_dir(s, d, stats, keep)
            if have is None or stat.S_IMODE(have.st_mode) != mode:
                os.chmod(d, mode)
                if have is not None:
                    stats.modes_changed += 1
        elif stat.S_ISLNK(want.st_mode):
            target = os.readlink(s)
            if have is not None and os.readlink(d) == target:
                continue
            if have is not None:
                os.unlink(d)
            os.symlink(target, d)
            stats.symlinks_written += 1
        elif stat.S_ISREG(want.st_mode):
            _sync_file(s, d, mode, have, stats)
        else:
            raise ValueError(f"{os.fsdecode(s)}: workload trees hold only files, links, dirs")


def _read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sync_file(
    src: bytes, dst: bytes, mode: int, have: os.stat_result | None, stats: ApplyStats
) -> None:
    data = _read(src)
    if have is not None:
        if have.st_size == len(data) and _read(dst) == data:
            if stat.S_IMODE(have.st_mode) != mode:
                os.chmod(dst, mode)
                stats.modes_changed += 1
            return
        fd = os.open(dst, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        stats.files_written += 1
    else:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        stats.files_created += 1
    try:
        _write_all(fd, data)
        if have is None or stat.S_IMODE(have.st_mode) != mode:
            os.fchmod(fd, mode)  # the umask does not decide the mode
    finally:
        os.close(fd)
    stats.bytes_written += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- Django releases from PyPI --------------------------------------------------------------------
DJANGO_VERSIONS = ["5.0"] + [f"5.0.{i}" for i in range(1, 15)]

# sha256 of the sdists on PyPI (pip checks PyPI's hashes when it downloads; these make a seeded
# or cached file prove it is the same one, so every machine measures the same workload).
DJANGO_SDIST_SHA256 = {
    "5.0": "7d29e14dfbc19cb6a95a4bd669edbde11f5d4c6a71fdaa42c2d40b6846e807f7",
    "5.0.1": "8c8659665bc6e3a44fefe1ab0a291e5a3fb3979f9a8230be29de975e57e8f854",
    "5.0.2": "b5bb1d11b2518a5f91372a282f24662f58f66749666b0a286ab057029f728080",
    "5.0.3": "5fb37580dcf4a262f9258c1f4373819aacca906431f505e4688e37f3a99195df",
    "5.0.4": "4bd01a8c830bb77a8a3b0e7d8b25b887e536ad17a81ba2dce5476135c73312bd",
    "5.0.5": "dc95c9cb2a37ba54599d9d1c8faf81609d36f3e74cd04395ce1300573e57baf9",
    "5.0.6": "ff1b61005004e476e0aeea47c7f79b85864c70124030e95146315396f1e7951f",
    "5.0.7": "bd4505cae0b9bd642313e8fb71810893df5dc2ffcacaa67a33af2d5cd61888f2",
    "5.0.8": "ebe859c9da6fead9c9ee6dbfa4943b04f41342f4cea2c4d8c978ef0d10694f2b",
    "5.0.9": "6333870d342329b60174da3a60dbd302e533f3b0bb0971516750e974a99b5a39",
    "5.0.10": "0f6cbc56cc298b0451d20a5120c6a8731e9073330fb5d84295c23c151a1eb300",
    "5.0.11": "e7d98fa05ce09cb3e8d5ad6472fb602322acd1740bfdadc29c8404182d664f65",
    "5.0.12": "05097ea026cceb2db4db0655ecf77cc96b0753ac6a367280e458e603f6556f53",
    "5.0.13": "f9d4b7b87a9dae248d5f20cec940cf7290e07d508d6d8432e3c2cabf09b3b0ff",
    "5.0.14": "29019a5763dbd48da1720d687c3522ef40d1c61be6fb2fad27ed79e9f655bc11",
}


class DjangoReleases(TreeSequence):
    """Django 5.0 ... 5.0.14 source releases, each extracted once into the cache.

    5.0.5 was yanked from PyPI because its files have CRLF line endings; it stays in the series:
    the step into it and the step out of it rewrite most files, which real repositories see too.
    Files are extracted with tarfile's "data" filter, which clears group/other write bits: the
    release managers' umasks differ (0644, 0664, 0666 between releases) and without it every
    step would chmod every file, which is not what an agent step does. Exec bits are kept.
    """

    def __init__(
        self,
        versions: list[str] | None = None,
        cache_dir: Path | None = None,
        *,
        seed_dirs: Iterable[Path] | None = None,
        parallel_downloads: int = 3,
    ) -> None:
        self.versions = list(versions or DJANGO_VERSIONS)
        self.cache = Path(cache_dir or CACHE_DIR) / "django"
        self.seed_dirs = list(SEED_DIRS if seed_dirs is None else seed_dirs)
        self.parallel_downloads = parallel_downloads
        super().__init__(
            "django-releases", [(f"django {v}", self.tree_dir(v)) for v in self.versions]
        )

    def describe(self) -> str:
        return f"Django sdists {self.versions[0]} .. {self.versions[-1]} ({len(self.versions)})"

    def sdist_path(self, version: str) -> Path:
        return self.cache / "sdist" / f"django-{version}.tar.gz"

    def tree_dir(self, version: str) -> Path:
        return self.cache / "tree" / version

    def prepare(self, log: Log = _quiet) -> None:
        missing = [v for v in self.versions if not self._have_sdist(v, log)]
        if missing:
            log(f"downloading {len(missing)} Django sdists from PyPI into {self.cache} (once)")
            with ThreadPoolExecutor(self.parallel_downloads) as pool:
                for v in pool.map(self._download, missing):
                    log(f"  downloaded django {v}")
        todo = [v for v in self.versions if not self.tree_dir(v).is_dir()]
        if todo:
            log(f"extracting {len(todo)} Django sdists into {self.cache / 'tree'} (once)")
            # Extraction mostly waits on file creation: a few threads overlap those waits.
            with ThreadPoolExecutor(self.parallel_downloads) as pool:
                list(pool.map(self._extract, todo))

    def _have_sdist(self, version: str, log: Log) -> bool:
        path = self.sdist_path(version)
        if path.exists():
            return True
        for d in self.seed_dirs:
            for name in (f"Django-{version}.tar.gz", f"django-{version}.tar.gz"):
                cand = d / name
                if cand.is_file() and _sha256(cand) == DJANGO_SDIST_SHA256.get(version):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".part")
                    shutil.copyfile(cand, tmp)
                    os.replace(tmp, path)
                    log(f"seeded django {version} from {cand}")
                    return True
        return False

    def _download(self, version: str) -> str:
        dest = self.sdist_path(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dl-") as tmp:
            base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            base += ["--disable-pip-version-check", "-q", "-d", tmp, f"django=={version}"]
            # pip prepares the sdist's metadata after downloading it; without build isolation
            # it uses this environment's setuptools instead of installing one (about 2x faster).
            proc = subprocess.run([*base, "--no-build-isolation"], capture_output=True, text=True)
            if proc.returncode != 0:
                proc = subprocess.run(base, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"pip download django=={version} failed:\n{proc.stderr}")
            got = [p for p in Path(tmp).iterdir() if p.name.lower().endswith(".tar.gz")]
            if len(got) != 1:
                raise RuntimeError(f"pip download django=={version} produced {got}")
            want = DJANGO_SDIST_SHA256.get(version)
            if want is not None and _sha256(got[0]) != want:
                raise RuntimeError(f"django {version} sdist from PyPI has an unexpected sha256")
            os.replace(got[0], dest)
        return version

    def _extract(self, version: str) -> None:
        target = self.tree_dir(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".x-") as tmp:
            with tarfile.open(self.sdist_path(version)) as tar:
                tar.extractall(tmp, filter="data")
            (top,) = list(Path(tmp).iterdir())  # django-X.Y.Z/
            os.replace(top, target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- synthetic edit stream ------------------------------------------------------------------------
_WORDS = (
    b"def class return self import from if else elif for while in not and or None True False "
    b"value result data index count items key name path error raise try except with as yield "
    b"lambda async await print len range list dict set tuple int str bytes open read write "
    b"config request response handler buffer offset length status cache lock"
).split()


@dataclass
class SyntheticStep(Step):
    label: str
    writes: list[tuple[str, bytes, int]] = field(default_factory=list)  # (path, bytes, mode)
    deletes: list[str] = field(default_factory=list)
    source: Path | None = None

    def apply(self, workspace: Path) -> ApplyStats:
        stats = ApplyStats()
        root = Path(workspace)
        for rel in self.deletes:
            path = root / rel
            path.unlink()
            stats.files_deleted += 1
            # Remove directories the deletion emptied, as a release diff (or git) would.
            parent = path.parent
            while parent != root and not any(parent.iterdir()):
                parent.rmdir()
                stats.dirs_deleted += 1
                parent = parent.parent
        for rel, data, mode in self.writes:
            path = root / rel
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True)
                stats.dirs_created += 1
            existed = path.exists()
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            stats.bytes_written += len(data)
            if existed:
                stats.files_written += 1
            else:
                stats.files_created += 1
        return stats


class SyntheticEdits(Workload):
    """A generated source-like tree and a fixed-seed edit stream over it.

    Step 0 writes `files` text files (about `mean_size` bytes each, 5% executable) into a tree
    `depth` levels deep with `fanout` subdirectories per level; every later step modifies
    `modify` existing files (a few lines replaced, some appended), adds `add` new files and
    deletes `delete` files. Everything comes from random.Random(seed).
    """

    def __init__(
        self,
        *,
        files: int = 5000,
        steps: int = 15,
        seed: int = 1,
        modify: int = 10,
        add: int = 2,
        delete: int = 1,
        mean_size: int = 4096,
        fanout: int = 6,
        depth: int = 3,
    ) -> None:
        self.name = "synthetic-edits"
        self.files, self.n_steps, self.seed = files, steps, seed
        self.modify, self.add, self.delete = modify, add, delete
        self.mean_size, self.fanout, self.depth = mean_size, fanout, depth
        self._steps: list[Step] | None = None

    def describe(self) -> str:
        return (
            f"synthetic edits: {self.files} files, {self.modify} modified / {self.add} added / "
            f"{self.delete} deleted per step, seed {self.seed}"
        )

    def _text(self, rng: random.Random, size: int) -> bytes:
        lines = []
        total = 0
        while total < size:
            line = b"    " * rng.randrange(3) + b" ".join(rng.choices(_WORDS, k=rng.randint(2, 12)))
            lines.append(line)
            total += len(line) + 1
        return b"\n".join(lines) + b"\n"

    def _size(self, rng: random.Random) -> int:
        return max(1, int(rng.expovariate(1 / self.mean_size)))

    def _dir(self, rng: random.Random) -> str:
        parts = [f"pkg{rng.randrange(self.fanout)}" for _ in range(rng.randint(0, self.depth))]
        return "/".join(parts)

    def steps(self) -> list[Step]:
        if self._steps is None:
            self._steps = self._generate()
        return self._steps

    def _generate(self) -> list[Step]:
        rng = random.Random(self.seed)
        content: dict[str, tuple[bytes, int]] = {}
        counter = 0

        def new_file(prefix: str) -> tuple[str, bytes, int]:
            nonlocal counter
            counter += 1
            d = self._dir(rng)
            rel = f"{d}/{prefix}{counter}.py" if d else f"{prefix}{counter}.py"
            mode = 0o755 if rng.random() < 0.05 else 0o644
            data = self._text(rng, self._size(rng))
            content[rel] = (data, mode)
            return rel, data, mode

        initial = [new_file("m") for _ in range(self.files)]
        steps: list[Step] = [SyntheticStep("initial tree", initial)]
        for n in range(1, self.n_steps):
            step = SyntheticStep(f"edit {n}")
            existing = sorted(content)
            for rel in rng.sample(existing, min(self.modify, len(existing))):
                data, mode = content[rel]
                lines = data.split(b"\n")
                at = rng.randrange(len(lines))
                lines[at : at + rng.randint(0, 3)] = self._text(rng, 120).split(b"\n")[:-1]
                data = b"\n".join(lines) + self._text(rng, rng.randint(0, 200))
                content[rel] = (data, mode)
                step.writes.append((rel, data, mode))
            modified = {w[0] for w in step.writes}
            for _ in range(self.add):
                step.writes.append(new_file("n"))
            candidates = sorted(set(content) - modified - {w[0] for w in step.writes})
            for rel in rng.sample(candidates, min(self.delete, len(candidates))):
                del content[rel]
                step.deletes.append(rel)
            steps.append(step)
        return steps


# --- edits of real files in a real tree -----------------------------------------------------------
# Files an agent edits: source and text. Larger files are left alone (minified bundles, data).
TEXT_SUFFIXES = (
    ".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx", ".json", ".md", ".py",
    ".txt", ".html", ".css", ".scss", ".yml", ".yaml", ".rst", ".d.ts", ".map",
)  # fmt: skip
MAX_EDITED_SIZE = 256 * 1024


@dataclass(frozen=True)
class TreeFile:
    rel: str
    size: int
    mode: int  # permission bits


def list_tree_files(root: Path | str) -> list[TreeFile]:
    """Regular files below root (sorted by path; symlinks and engine temporaries skipped)."""
    out: list[TreeFile] = []
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, base)
        for name in sorted(filenames):
            if os.fsencode(name).startswith(ENGINE_INTERNAL_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                out.append(TreeFile(rel, st.st_size, stat.S_IMODE(st.st_mode)))
    out.sort(key=lambda f: f.rel)
    return out


class CopyTreeStep(Step):
    """Step 0 of a real-tree workload: copy the whole tree into the empty workspace (cp -a)."""

    def __init__(self, label: str, source: Path) -> None:
        self.label = label
        self.source = source

    def apply(self, workspace: Path) -> ApplyStats:
        copy_tree(self.source, workspace)
        return ApplyStats(files_created=len(list_tree_files(workspace)))


def copy_tree(src: Path | str, dst: Path | str) -> None:
    """Copy src's contents into dst (created if missing): bytes, modes, symlinks, mtimes.

    `cp -a` copies a 100k-file tree several times faster than shutil.copytree.
    """
    Path(dst).mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--", f"{os.fspath(src)}/.", os.fspath(dst)], check=True)


def copy_files(src: Path | str, files: Iterable[TreeFile], dst: Path | str) -> None:
    """Copy the given files (relative paths kept, modes kept) from src into dst."""
    made: set[str] = set()
    for f in files:
        parent = os.path.dirname(f.rel)
        if parent not in made:
            os.makedirs(os.path.join(dst, parent), exist_ok=True)
            made.add(parent)
        target = os.path.join(dst, f.rel)
        shutil.copyfile(os.path.join(src, f.rel), target)
        os.chmod(target, f.mode)


class RealFileEdits(Workload):
    """An existing tree, then a fixed-seed edit stream over its real files.

    Step 0 copies `base` into the empty workspace. Every later step modifies `modify` existing
    text files (a few lines replaced, some appended, as an agent's edit), adds `add` new files
    next to existing ones (a real file's text with an edit, so they look like the tree's code)
    and deletes `delete` files (emptied directories go too). All choices come from
    random.Random(seed) over the sorted file list, so every run sees the same steps.

    Files under a prefix in `skip_prefixes` (e.g. "node_modules/") are never modified, added
    next to or deleted: agents edit their project, not its installed dependencies.

    steps() reads `base` once (the file list and the bytes of the files it edits): call it
    before anything changes `base`. With copy_base=False step 0 does nothing (the caller has
    put the tree in place, e.g. the workspace is `base` itself).
    """

    def __init__(
        self,
        base: Path | str,
        *,
        steps: int = 51,
        seed: int = 1,
        modify: int = 10,
        add: int = 2,
        delete: int = 1,
        name: str = "real-file-edits",
        copy_base: bool = True,
        skip_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.base = Path(base)
        self.skip_prefixes = tuple(skip_prefixes)
        self.name = name
        self.n_steps, self.seed = steps, seed
        self.modify, self.add, self.delete = modify, add, delete
        self.copy_base = copy_base
        self._steps: list[Step] | None = None
        self.files: list[TreeFile] | None = None  # the base tree's files (after steps())

    def describe(self) -> str:
        count = f"{len(self.files)} files" if self.files is not None else str(self.base)
        where = f" outside {', '.join(self.skip_prefixes)}" if self.skip_prefixes else ""
        return (
            f"{self.name}: {count}, then {self.modify} modified / {self.add} added / "
            f"{self.delete} deleted per step{where}, seed {self.seed}"
        )

    def steps(self) -> list[Step]:
        if self._steps is None:
            self._steps = self._generate()
        return self._steps

    def _generate(self) -> list[Step]:
        rng = random.Random(self.seed)
        self.files = list_tree_files(self.base)
        modes = {f.rel: f.mode for f in self.files}
        skip = self.skip_prefixes
        # Files a step may delete (the ones under skip_prefixes never change).
        existing = {rel for rel in modes if not (skip and rel.startswith(skip))}
        editable = sorted(
            f.rel
            for f in self.files
            if f.size <= MAX_EDITED_SIZE
            and f.rel.endswith(TEXT_SUFFIXES)
            and not (skip and f.rel.startswith(skip))
        )
        edited: dict[str, bytes] = {}  # current bytes of files a step has written
        counter = 0

        def current(rel: str) -> bytes:
            data = edited.get(rel)
            return data if data is not None else (self.base / rel).read_bytes()

        def edit(data: bytes) -> bytes:
            lines = data.split(b"\n")
            at = rng.randrange(len(lines))
            lines[at : at + rng.randint(0, 3)] = _text_lines(rng, rng.randint(1, 4))
            return b"\n".join(lines) + b"\n".join(_text_lines(rng, rng.randint(0, 3)))

        first: Step = (
            CopyTreeStep("initial tree", self.base)
            if self.copy_base
            else SyntheticStep("initial tree (in place)")
        )
        steps: list[Step] = [first]
        for n in range(1, self.n_steps):
            step = SyntheticStep(f"edit {n}")
            pool = [rel for rel in editable if rel in existing]
            for rel in rng.sample(pool, min(self.modify, len(pool))):
                data = edit(current(rel))
                edited[rel] = data
                step.writes.append((rel, data, modes[rel]))
            touched = {w[0] for w in step.writes}
            for _ in range(self.add):
                counter += 1
                like = rng.choice(pool)
                _stem, dot, suffix = os.path.basename(like).partition(".")
                rel = os.path.join(os.path.dirname(like), f"snapd_bench_{counter}{dot}{suffix}")
                data = edit(current(like))
                edited[rel] = data
                modes[rel] = 0o644
                existing.add(rel)
                touched.add(rel)
                step.writes.append((rel, data, 0o644))
            candidates = sorted(existing - touched)
            for rel in rng.sample(candidates, min(self.delete, len(candidates))):
                existing.discard(rel)
                edited.pop(rel, None)
                step.deletes.append(rel)
            steps.append(step)
        return steps


def _text_lines(rng: random.Random, n: int) -> list[bytes]:
    return [
        b"    " * rng.randrange(3) + b" ".join(rng.choices(_WORDS, k=rng.randint(2, 12)))
        for _ in range(n)
    ]


# --- node_modules of popular npm packages + the Django source tree --------------------------------
# package.json + package-lock.json (exact versions, integrity hashes) of the npm part.
NPM_MANIFEST_DIR = BENCH_DIR / "npm"


class NodeModulesDjango(RealFileEdits):
    """A workspace of an agent on a web project: an npm-installed node_modules plus Django's source.

    The tree (cached in <cache>/node-django/tree after the first run) is
    `package.json`, `package-lock.json`, `node_modules/` from `npm ci --ignore-scripts` of the
    pinned manifests in benchmarks/npm/ (typescript, webpack, babel, eslint, react, next, jest,
    lodash, MUI, the AWS SDKs, angular, ...; about 101k files, 1.1 GB), and `django/`, the Django
    5.0 sdist from DjangoReleases (6.8k files). Then RealFileEdits' steps over its real files:
    edit_scope="tree" draws them from the whole tree, "project" from outside node_modules/ (the
    Django sources and the manifests), where an agent's edits go.

    npm's download cache is kept in <cache>/npm/_cacache, so a rebuild after deleting the tree
    needs no network. The tree is rebuilt when the manifests or the Django version change.
    """

    def __init__(
        self,
        *,
        steps: int = 51,
        seed: int = 1,
        modify: int = 10,
        add: int = 2,
        delete: int = 1,
        cache_dir: Path | None = None,
        django_version: str = "5.0",
        manifest_dir: Path = NPM_MANIFEST_DIR,
        edit_scope: str = "tree",
    ) -> None:
        if edit_scope not in ("tree", "project"):
            raise ValueError("edit_scope is 'tree' (any file) or 'project' (not node_modules/)")
        self.cache = Path(cache_dir or CACHE_DIR)
        self.django = DjangoReleases([django_version], self.cache)
        self.django_version = django_version
        self.manifest_dir = Path(manifest_dir)
        super().__init__(
            self.cache / "node-django" / "tree",
            steps=steps,
            seed=seed,
            modify=modify,
            add=add,
            delete=delete,
            name="node_modules + Django",
            skip_prefixes=("node_modules/",) if edit_scope == "project" else (),
        )

    def _stamp(self) -> str:
        h = hashlib.sha256()
        for name in ("package.json", "package-lock.json"):
            h.update((self.manifest_dir / name).read_bytes())
        h.update(f"django {self.django_version}".encode())
        return h.hexdigest()

    def prepare(self, log: Log = _quiet) -> None:
        stamp_file = self.base.parent / "tree.stamp"
        stamp = self._stamp()
        if self.base.is_dir() and stamp_file.exists() and stamp_file.read_text() == stamp:
            return
        self.django.prepare(log)
        parent = self.base.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.base.exists():
            log(f"the npm manifests or Django version changed: rebuilding {self.base}")
            shutil.rmtree(self.base)
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(self.manifest_dir / name, build / name)
            log(f"npm ci of {self.manifest_dir}/package-lock.json into {build} (once; minutes)")
            cmd = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
            cmd += ["--loglevel=error", "--cache", str(self.cache / "npm" / "_cacache")]
            proc = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
            # npm leaves its own bookkeeping (.package-lock.json) inside node_modules: kept, it
            # is part of a real node_modules.
            log(f"adding Django {self.django_version} as django/")
            copy_tree(self.django.tree_dir(self.django_version), build / "django")
            os.chmod(build, 0o755)
            os.replace(build, self.base)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        stamp_file.write_text(stamp)
        log(f"{self.base}: {len(list_tree_files(self.base))} files")


# --- manifests: what a tree holds, for correctness checks -----------------------------------------
@dataclass(frozen=True)
class Entry:
    kind: str  # "f" file, "l" symlink, "d" directory
    mode: int  # permission bits
    size: int
    content: bytes  # blake2b-128 of a file's bytes, a symlink's target, b"" for a directory
    mtime_ns: int


Manifest = dict[bytes, Entry]


def tree_manifest(root: Path | str | bytes) -> Manifest:
    """Every entry below root (not root itself), by relative path; engine temporaries skipped."""
    out: Manifest = {}
    _manifest_dir(os.fsencode(root), b"", out)
    return out


def _manifest_dir(base: bytes, rel: bytes, out: Manifest) -> None:
    with os.scandir(os.path.join(base, rel) if rel else base) as it:
        entries = list(it)
    for e in entries:
        if _is_engine_internal(e.name):
            continue
        path = rel + b"/" + e.name if rel else e.name
        st = e.stat(follow_symlinks=False)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out[path] = Entry("d", mode, 0, b"", st.st_mtime_ns)
            _manifest_dir(base, path, out)
        elif stat.S_ISLNK(st.st_mode):
            out[path] = Entry("l", mode, st.st_size, os.readlink(e.path), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.blake2b(_read(e.path), digest_size=16).digest()
            out[path] = Entry("f", mode, st.st_size, h, st.st_mtime_ns)
        else:
            out[path] = Entry("?", mode, 0, b"", st.st_mtime_ns)


def compare_manifests(
    expected: Manifest,
    actual: Manifest,
    *,
    mtimes: bool = False,
    modes: str = "all",
    dirs: bool = True,
    limit: int = 10,
) -> list[str]:
    """Differences between two manifests, as readable lines (empty when they agree).

    modes="all" compares all permission bits, "exec" only the owner exec bit (all git keeps),
    "none" ignores them. dirs=False ignores directories (git does not store them).
    """
    problems: list[str] = []

    def report(msg: str) -> bool:
        problems.append(msg)
        return len(problems) >= limit

    for path in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(path), actual.get(path)
        if not dirs and ((e is None or e.kind == "d") and (a is None or a.kind == "d")):
            continue
        name = os.fsdecode(path)
        if e is None:
            msg = f"{name}: unexpected {a.kind!r} entry"
        elif a is None:
            msg = f"{name}: missing (expected {e.kind!r})"
        elif e.kind != a.kind:
            msg = f"{name}: is {a.kind!r}, expected {e.kind!r}"
        elif e.content != a.content or e.size != a.size:
            msg = f"{name}: content differs (size {a.size}, expected {e.size})"
        elif modes == "all" and e.mode != a.mode:
            msg = f"{name}: mode {a.mode:o}, expected {e.mode:o}"
        elif modes == "exec" and e.kind == "f" and (e.mode ^ a.mode) & stat.S_IXUSR:
            msg = f"{name}: exec bit differs (mode {a.mode:o}, expected {e.mode:o})"
        elif mtimes and e.mtime_ns != a.mtime_ns:
            msg = f"{name}: mtime_ns {a.mtime_ns}, expected {e.mtime_ns}"
        else:
            continue
        if report(msg):
            break
    return problems


def dir_size(path: Path | str) -> int:
    """Total size in bytes of the regular files below path."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total
