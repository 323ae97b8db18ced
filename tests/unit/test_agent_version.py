"""The agent's own version: the name of a complete shipped tree, else the hash of its files."""

from pathlib import Path

from runner.agent import protocol as P
from runner.agent.server import own_version
from runner.agent.ship import collect_sources

ROOT = Path(__file__).resolve().parents[2]


def test_in_place_tree_is_hashed_like_the_host_does():
    assert own_version(ROOT) == P.version_of(collect_sources(ROOT))


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
