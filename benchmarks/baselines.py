"""Baselines the engine is measured against.

ShadowGit is how most coding agents checkpoint today: a git directory kept outside the workspace,
with the workspace as its work tree. A checkpoint is `git add -A && git commit`; a restore is
`git read-tree -u --reset C` followed by `git clean -fd` (a plain checkout would leave files that
were added after C). Size is measured after `git gc`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .workloads import dir_size

# A fixed identity and date so commits are reproducible and git never asks for a name.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "snapd bench",
    "GIT_AUTHOR_EMAIL": "bench@snapd.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+00:00",
    "GIT_COMMITTER_NAME": "snapd bench",
    "GIT_COMMITTER_EMAIL": "bench@snapd.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+00:00",
}


class GitError(RuntimeError):
    pass


class ShadowGit:
    """A shadow git repository: git dir `git_dir`, work tree `work_tree`."""

    def __init__(self, git_dir: Path | str, work_tree: Path | str) -> None:
        self.git_dir = Path(git_dir)
        self.work_tree = Path(work_tree)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(_IDENTITY)
        # No user or system configuration: every machine runs the same git setup.
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, LC_ALL="C")
        self.env = env

    def git(self, *args: str) -> str:
        cmd = [
            "git",
            "-c",
            "safe.directory=*",  # runs as root on directories it did not create
            "-c",
            "gc.auto=0",  # no automatic gc inside a timed step; gc() runs it once at the end
            f"--git-dir={self.git_dir}",
            f"--work-tree={self.work_tree}",
            *args,
        ]
        proc = subprocess.run(cmd, env=self.env, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            raise GitError(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
        return proc.stdout.decode(errors="replace")

    def init(self) -> None:
        self.git("init", "-q")

    def snapshot(self, message: str) -> None:
        """One checkpoint, as an agent tool takes it (commit id: head())."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "--no-verify", "--no-gpg-sign", "-m", message)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def restore(self, commit: str) -> None:
        """Put the work tree back to `commit`, removing files added since."""
        self.git("read-tree", "-u", "--reset", commit)
        self.git("clean", "-fd", "-q")

    def gc(self) -> None:
        self.git("gc", "-q")

    def size_bytes(self) -> int:
        return dir_size(self.git_dir)

    def version(self) -> str:
        return self.git("--version").strip()
