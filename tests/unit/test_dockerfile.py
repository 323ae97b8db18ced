"""runner.images.dockerfile: the one Dockerfile instruction parser (import --change now, build next)."""

import pytest

from runner.errors import UsageError
from runner.images.dockerfile import Instruction, apply_changes, check_changes, command_form, parse, parse_line
from runner.images.rootfs import DEFAULT_PATH


def test_changes_as_docker_import_applies_them():
    # Formerly the CLI's own parser (parse_changes): same instructions, same results, now merged into the
    # image's config as Docker does (ENV adds to the default PATH instead of replacing the whole Env).
    config = apply_changes({"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]},
                           ['CMD ["echo", "hi"]', "ENV A=1", "WORKDIR /w", "USER nobody", "ENTRYPOINT run me"])
    assert config == {"Cmd": ["echo", "hi"], "Env": [DEFAULT_PATH, "A=1"], "WorkingDir": "/w", "User": "nobody",
                      "Entrypoint": ["/bin/sh", "-c", "run me"]}


def test_env_merges_and_replaces_only_the_names_it_sets():
    config = apply_changes({"Env": ["PATH=/bin", "KEEP=1"]}, ["ENV PATH=/x B=\"two words\"", "env C some value"])
    assert config["Env"] == ["PATH=/x", "KEEP=1", "B=two words", "C=some value"]
    assert apply_changes({"Labels": {"a": "1"}}, ["LABEL b=2"])["Labels"] == {"a": "1", "b": "2"}


def test_entrypoint_resets_only_an_inherited_cmd():
    assert "Cmd" not in apply_changes({"Cmd": ["/bin/sh"]}, ['ENTRYPOINT ["/e"]'])
    assert apply_changes({"Cmd": ["/bin/sh"]}, ['CMD ["x"]', 'ENTRYPOINT ["/e"]'])["Cmd"] == ["x"]


def test_exec_and_shell_forms():
    assert command_form(parse_line('CMD ["a", "b c"]')) == (["a", "b c"], True)
    assert command_form(parse_line("CMD [broken")) == (["[broken"], False)  # not JSON: shell form, as Docker
    assert command_form(parse_line('CMD ["a", 1]')) == (['["a", 1]'], False)
    assert apply_changes({}, ["CMD [broken"])["Cmd"] == ["/bin/sh", "-c", "[broken"]


def test_parse_a_dockerfile():
    text = ("# escape=\\\n# comment\nFROM busybox\nENV A=1 \\\n    B=2\n\n# comment inside\n"
            "RUN echo a \\\n# dropped\n  && echo b\ncmd [\"sh\"]\nLABEL\tx=y\n")
    got = parse(text)
    assert [(i.keyword, i.rest, i.line) for i in got] == [
        ("FROM", "busybox", 3), ("ENV", "A=1     B=2", 4), ("RUN", "echo a   && echo b", 8),
        ("CMD", '["sh"]', 11), ("LABEL", "x=y", 12)]
    assert apply_changes({}, got[1:2])["Env"] == ["A=1", "B=2"]


def test_escape_directive_backtick():
    got = parse("# escape=`\nRUN dir c:\\ `\n  /w\n")
    assert got == [Instruction("RUN", "dir c:\\   /w")]
    with pytest.raises(UsageError, match="escape"):
        parse("# escape=x\nRUN a\n")


@pytest.mark.parametrize("change", ["RUN make", "CMD", "ENV =x", "LABEL a", "ENV A=\"open", "9LIVES x", ""])
def test_bad_changes_are_usage_errors(change):
    with pytest.raises(UsageError):
        check_changes([change])


def test_expose_and_volume_are_supported_for_import():
    config = apply_changes({}, ["EXPOSE 80 53/udp", 'VOLUME ["/data"]', "VOLUME /a /b", "STOPSIGNAL SIGINT"])
    assert config == {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Volumes": {"/data": {}, "/a": {}, "/b": {}},
                      "StopSignal": "SIGINT"}
