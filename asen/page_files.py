"""The images folder of a results page (`asen search --html X.html` -> `X_files/`), owned
by asen through a manifest file in it: asen writes into a folder only when the manifest
says asen made it for that page, replaces and deletes only the files listed there, and
refuses anything else (a folder it did not make, a plain file in the folder's place, a
page name that is a folder) with one line. Every file is written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from asen import AsenError
from asen.atomic import atomic_write_text

MANIFEST = "asen-manifest.json"  # marks the folder as asen's own and lists what asen wrote
KIND = "asen search page images"


def assets_folder(page: Path) -> Path:
    """Where the page `X.html` keeps its images: `X_files/` beside it."""
    return page.with_name(f"{page.stem}_files")


def _listed(folder: Path, page: Path) -> set[str]:
    """The files asen wrote into `folder` for `page`, from its manifest; refuses a folder
    without a readable manifest or one made for another page."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AsenError(
            f"{folder}: folder exists and was not made by asen search (no {MANIFEST}); "
            "move it away or choose another --html name"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AsenError(f"{folder / MANIFEST}: unreadable ({e}); move the folder away") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise AsenError(f"{folder / MANIFEST}: not an asen page manifest; move the folder away")
    if manifest.get("page") != page.name:
        raise AsenError(
            f"{folder}: holds the images of {manifest.get('page')}, not {page.name}; "
            "choose another --html name"
        )
    files = manifest.get("files", [])
    return {f for f in files if isinstance(f, str) and Path(f).name == f and f != MANIFEST}


def check_page_path(page: Path) -> set[str]:
    """Refuse, with one line, a page asen must not write (before any work is done);
    returns the files asen wrote for it last time (empty for a new page)."""
    if page.is_dir():
        raise AsenError(f"{page}: is a folder; --html takes a file name such as {page}.html")
    if page.parent.exists() and not page.parent.is_dir():
        raise AsenError(f"{page}: {page.parent} is not a folder")
    folder = assets_folder(page)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise AsenError(
            f"{folder}: exists and is not a folder; the page's images go there "
            "(move it away or choose another --html name)"
        )
    return _listed(folder, page) if folder.exists() else set()


class PageFiles:
    """The images folder of one page being written: `claim` the names, write each file
    (atomically) to `path(name)`, then `finish` with the names actually written."""

    def __init__(self, page: Path, names: list[str]):
        self.page, self.folder = page, assets_folder(page)
        self.before = check_page_path(page)
        taken = [n for n in names if n not in self.before and (self.folder / n).exists()]
        if taken:
            raise AsenError(f"{self.folder / taken[0]}: exists and was not written by asen")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save(self.before | set(names))  # a kill from here on leaves nothing unlisted

    def path(self, name: str) -> Path:
        return self.folder / name

    def finish(self, written: set[str]) -> None:
        """Delete what asen wrote last time and not this time; list what it wrote now."""
        for stale in sorted(self.before - written):
            target = self.folder / stale
            if target.is_file() and not target.is_symlink():
                target.unlink()
        self._save(written)

    def _save(self, names: set[str]) -> None:
        manifest = {"kind": KIND, "page": self.page.name, "files": sorted(names)}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
