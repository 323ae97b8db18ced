"""The agent's own version: the name of a complete shipped tree, else the hash of the shipped files it holds."""

import shutil
from pathlib import Path

from runner.agent.server import own_version
from runner.vm.ship import local_version

ROOT = Path(__file__).resolve().parents[2]


def _copy_tree(tmp_path: Path) -> Path:
    """A copy of this checkout's runner package (and one file beside it that is never shipped)."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "runner", root / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_in_place_tree_has_the_hosts_version():
    assert own_version(ROOT) == local_version()


def test_version_follows_shipped_files_only(tmp_path):
    root = _copy_tree(tmp_path)
    base = own_version(root)
    assert base == local_version()  # same files, same version, wherever they lie
    cli = root / "runner" / "cli" / "main.py"  # host-only: not shipped, must not change the version
    cli.write_text(cli.read_text() + "\n# host only\n")
    (root / "runner" / "engine" / "notes.txt").write_text("not python: not shipped")
    assert own_version(root) == base
    engine = root / "runner" / "engine" / "engine.py"  # shipped: any change is another version
    engine.write_text(engine.read_text() + "\n")
    changed = own_version(root)
    assert changed != base
    (root / "runner" / "stdio.py").unlink()  # a shipped file missing is another version too
    assert own_version(root) not in (base, changed)


def test_a_complete_shipped_tree_is_named_by_its_version(tmp_path):
    tree = tmp_path / "0123456789abcdef"
    tree.mkdir()
    assert own_version(tree) != "0123456789abcdef"  # not marked complete: hashed (here: nothing to hash)
    (tree / ".complete").touch()
    assert own_version(tree) == "0123456789abcdef"
    other = tmp_path / "not-a-version"
    other.mkdir()
    (other / ".complete").touch()
    assert own_version(other) != "not-a-version"
