"""A dataset on disk: ``train/<class>/*``, ``test/<class>/*`` and, optionally,
``val/<class>/*`` (the validation split; without it a job holds some of train out), put in
place all at once.

Writers build the tree in a temporary sibling folder and rename it into place, so a crash
never leaves half a dataset under the final name.
"""

from __future__ import annotations

from pathlib import Path

from app.engine.errors import DatasetError

SPLITS: tuple[str, str] = ("train", "test")  # every dataset has these
OPTIONAL_SPLITS: tuple[str] = ("val",)
ALL_SPLITS: tuple[str, ...] = ("train", "val", "test")  # in this order, where present


def present_splits(root: Path) -> list[str]:
    """The splits ``root`` has folders for, of :data:`ALL_SPLITS`."""
    return [s for s in ALL_SPLITS if s in SPLITS or (root / s).is_dir()]
MAX_LISTED = 10  # names quoted in one error or warning


def is_hidden(parts: tuple[str, ...]) -> bool:
    """A dot file or anything in a dot folder (``.DS_Store``, ``._x.jpg``, ``.git/``)."""
    return any(p.startswith(".") for p in parts)


def refuse_non_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; "
            "remove it or choose another destination"
        )


def move_into_place(tmp: Path, out: Path) -> None:
    refuse_non_empty(out)
    # mkdtemp() makes the folder private (0700); the dataset should be readable like any other.
    tmp.chmod(0o755)
    if out.is_dir():
        # rename() cannot replace a directory on every platform, even an empty one.
        out.rmdir()
    tmp.rename(out)


def find_root(extracted: Path) -> Path:
    """The folder holding ``train/`` and ``test/``: the zip's top level or its one folder."""
    if (extracted / "train").is_dir() or (extracted / "test").is_dir():
        return extracted
    top = [p for p in extracted.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in top if p.is_dir()]
    if len(dirs) == 1 and ((dirs[0] / "train").is_dir() or (dirs[0] / "test").is_dir()):
        return dirs[0]
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in top)[:MAX_LISTED])
    raise DatasetError(
        "the zip must hold train/<class>/ and test/<class>/ folders, at its top level or "
        f"inside one folder; found: {found or 'nothing'}"
    )
