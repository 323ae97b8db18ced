"""The pure parts of `runner build`: Dockerfile reading for builds, substitution, .dockerignore, the context tar,
options, stage selection, globs and the COPY content hash. No root, no engine (tests/native and tests/contract
build real images)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from runner.errors import BuildError, UsageError
from runner.images import dockerfile as df
from runner.images.builder import Builder, check_options, content_hash, glob_paths
from runner.images.context import Ignore, unpack_context, write_context
from runner.images.fsview import MergedView


# ------------------------------------------------------------------ the Dockerfile

def test_heredocs_directives_and_unknown_instructions():
    text = ("# syntax=docker/dockerfile:1\n# escape=\\\nFROM x\nRUN <<EOF\necho a\n  echo b\nEOF\n"
            "COPY <<-\"DATA\" /f\n\tliteral $X\nDATA\nCMD [\"sh\"]\n")
    instructions, notes = df.parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in instructions] == [("FROM", 3), ("RUN", 4), ("COPY", 8), ("CMD", 11)]
    assert instructions[1].heredocs == [("EOF", "echo a\n  echo b\n", True)]
    assert instructions[2].heredocs == [("DATA", "literal $X\n", False)]  # quoted name: no substitution
    assert "syntax" in notes[0]
    with pytest.raises(UsageError, match=r"^line 3: BOGUS x: unknown instruction: BOGUS"):
        df.parse_dockerfile("FROM x\n\nBOGUS x\n")
    with pytest.raises(UsageError, match="unterminated heredoc EOF"):
        df.parse_dockerfile("FROM x\nRUN <<EOF\necho\n")
    with pytest.raises(UsageError, match="must begin with FROM"):
        df.parse_dockerfile("RUN true\n")
    with pytest.raises(UsageError, match="no instructions"):
        df.parse_dockerfile("# just a comment\n")


def test_flags_are_split_and_unknown_ones_refused():
    inst = df.parse_line("COPY --from=build --chown=1:2 a b", 4)
    assert df.split_flags(inst, ("from", "chown")) == ({"from": "build", "chown": "1:2"}, "a b")
    with pytest.raises(UsageError, match="line 4: .*unknown flag: --chown"):
        df.split_flags(inst, ("from",))


@pytest.mark.parametrize("text,expected", [
    ("$A/${B}", "1/two"),
    ("${MISSING:-fallback} ${A:+set} ${MISSING:+set}x", "fallback set x"),
    ("'$A' \"$A\" \\$A", "$A 1 $A"),
    ("${EMPTY:-d} ${EMPTY-d}", "d "),
    ("cost $5 and $", "cost $5 and $"),
])
def test_substitution_follows_dockers_quoting(text, expected):
    env = {"A": "1", "B": "two", "EMPTY": ""}
    assert df.expand(text, env) == expected


def test_words_keep_quoted_blanks_and_errors_are_clear():
    assert df.words('A="x $B" C=y\\ z D=\'$B\'', {"B": "b"}) == ["A=x b", "C=y z", "D=$B"]
    with pytest.raises(UsageError, match="unmatched double quote"):
        df.words('A="x', {})
    with pytest.raises(UsageError, match="is not set"):
        df.expand("${NEEDED:?}", {})


# ------------------------------------------------------------------ .dockerignore and the context

@pytest.mark.parametrize("patterns,path,ignored", [
    (["*.log"], "a.log", True),
    (["*.log"], "dir/a.log", False),           # * stays in one component
    (["**/*.log"], "dir/sub/a.log", True),
    (["**/*.log"], "a.log", True),             # ** matches zero directories too
    (["build"], "build/out/x", True),          # a matching parent excludes everything below
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md", "README*"], "README.md", True),  # the last match wins
    (["/secret"], "secret", True),             # leading / is relative to the context
    (["dir/?.txt"], "dir/a.txt", True),
    (["dir/?.txt"], "dir/ab.txt", False),
    (["[ab].c"], "b.c", True),
    (["# comment"], "# comment", False),
])
def test_dockerignore_rules_are_dockers(patterns, path, ignored):
    assert Ignore.parse("\n".join(patterns)).ignored(path) is ignored


def test_context_tar_leaves_ignored_files_on_the_host(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.txt").write_text("a")
    (tmp_path / "node_modules" / "deep").mkdir(parents=True)
    (tmp_path / "node_modules" / "deep" / "x.js").write_text("x")
    (tmp_path / "node_modules" / "deep" / "keep.me").write_text("k")
    (tmp_path / "secret.key").write_text("s")
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / ".dockerignore").write_text("*.key\nnode_modules\n!node_modules/**/keep.me\nDockerfile\n")
    os.symlink("keep/a.txt", tmp_path / "link")
    out = io.BytesIO()
    write_context(str(tmp_path), out, extra={".dockerfile.x": b"FROM y\n"})
    names = tarfile.open(fileobj=io.BytesIO(out.getvalue())).getnames()
    assert "secret.key" not in names and "node_modules/deep/x.js" not in names
    assert {"keep", "keep/a.txt", "link", "Dockerfile", ".dockerignore", "node_modules/deep/keep.me",
            ".dockerfile.x"} <= set(names)


def test_context_unpack_refuses_escapes(tmp_path):
    for name in ("../evil", "a/../../evil"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        target = tmp_path / name.replace("/", "_")
        target.mkdir()
        with pytest.raises(BuildError, match="invalid build context: .*'\\.\\.'"):
            unpack_context(io.BytesIO(buf.getvalue()), str(target))
    assert not (tmp_path / "evil").exists()


# ------------------------------------------------------------------ options, stages, sources

def test_options_are_checked():
    assert check_options({"tags": ["a:1"], "nocache": True, "buildargs": {"A": None}}) == {
        "tags": ["a:1"], "nocache": True, "buildargs": {"A": None}}
    for bad, match in (({"tags": ["a@sha256:" + "0" * 64]}, "not by digest"), ({"nocache": "yes"}, "must be a bool"),
                       ({"dockerfile": "../Dockerfile"}, "inside the context"), ({"bogus": 1}, "unknown build option"),
                       ({"labels": {"a": 1}}, "invalid labels"), ({"platform": "linux/s390x-nope"}, "cannot build")):
        with pytest.raises(UsageError, match=match):
            check_options(bad)


def _builder(text: str, **opts) -> Builder:
    from types import SimpleNamespace
    b = Builder(SimpleNamespace(root="/nonexistent"), "/nonexistent", opts, None, None, None, None)
    b._stages(df.parse_dockerfile(text)[0])
    return b


def test_only_the_stages_the_target_needs_are_built():
    text = ("ARG V=1\nFROM x AS a\nRUN a\nFROM x AS unused\nRUN u\nFROM a AS b\nRUN b\n"
            "FROM x\nCOPY --from=b /f /f\nCOPY --from=0 /g /g\n")
    b = _builder(text)
    assert [s.name for s in b._needed(b._target())] == ["a", "b", None]
    b = _builder(text, target="unused")
    assert [s.name for s in b._needed(b._target())] == ["unused"]
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        _builder(text, target="nope")._target()
    assert _builder("ARG IMG=base\nFROM ${IMG}:1\n", buildargs={"IMG": "other"}).stages[0].base == "other:1"
    with pytest.raises(BuildError, match="duplicate stage name"):
        _builder("FROM x AS a\nFROM y AS a\n")


def test_globs_match_dot_files_per_component_and_content_hash_ignores_times(tmp_path):
    for name in ("a.txt", ".hidden.txt", "b.md", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert glob_paths(str(tmp_path), "*.txt") == [".hidden.txt", "a.txt"]
    assert glob_paths(str(tmp_path), "*/c.txt") == ["sub/c.txt"]
    assert glob_paths(str(tmp_path), "missing") == ["missing"]  # no wildcard: the caller reports it
    pairs = [("sub", str(tmp_path / "sub"))]
    before = content_hash(pairs)
    os.utime(tmp_path / "sub" / "c.txt", (1, 1))
    assert content_hash(pairs) == before
    (tmp_path / "sub" / "c.txt").write_text("changed")
    assert content_hash(pairs) != before
    os.chmod(tmp_path / "a.txt", 0o600)
    assert content_hash([("a", str(tmp_path / "a.txt"))]) != content_hash([("b", str(tmp_path / "a.txt"))])


def test_merged_view_resolves_symlinks_inside_the_root(tmp_path):
    top, low = tmp_path / "top", tmp_path / "low"
    (low / "usr" / "bin").mkdir(parents=True)
    (low / "usr" / "bin" / "tool").write_text("low")
    (low / "etc").mkdir()
    (low / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:42:43::/:/bin/sh\n")
    top.mkdir()
    os.symlink("usr/bin", top / "bin")
    os.symlink("/../../../etc", top / "escape")  # absolute and ..: still the image's /etc, never the host's
    (top / "usr").mkdir()
    (top / "usr" / "new").write_text("top")
    view = MergedView([str(top), str(low)])
    assert view.resolve("/bin/tool") == ("usr", "bin", "tool")
    assert view.resolve("/escape/passwd") == ("etc", "passwd")
    assert view.listdir(("usr",)) == ["bin", "new"]
    from runner.images.fsview import lookup_ids
    assert lookup_ids(view, "app") == (42, 43) and lookup_ids(view, "7:8") == (7, 8)
    with pytest.raises(BuildError, match="unable to find user nobody"):
        lookup_ids(view, "nobody")
