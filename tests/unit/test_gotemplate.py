"""The Go template subset of --format / inspect -f (runner.cli.gotemplate): output as docker's would be."""

import pytest

from runner.cli import gotemplate as gt
from runner.errors import UsageError

INFO = {"Name": "/web", "State": {"Running": True, "ExitCode": 0, "Status": "running"},
        "Config": {"Labels": {"com.example.app": "shop", "tier": "db"}, "Env": ["A=1", "B=2"]},
        "Mounts": [{"Name": "v1", "Destination": "/d"}, {"Name": "v2", "Destination": "/e"}],
        "HostConfig": {"Binds": None}, "RestartCount": 2}


@pytest.mark.parametrize("template, expected", [
    ("{{.Name}}", "/web"),
    ("{{.State.Running}} {{.State.ExitCode}}", "true 0"),
    ("{{.RestartCount}}", "2"),
    ('{{index .Config.Labels "com.example.app"}}', "shop"),
    ('{{index .Config.Labels "missing"}}', "<no value>"),
    ("{{.Nope}}", "<no value>"),
    ("{{.HostConfig.Binds}}", "<nil>"),
    ("{{json .State}}", '{"Running":true,"ExitCode":0,"Status":"running"}'),
    ("{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}", "v1:/d v2:/e "),
    ("{{range .Nope}}x{{else}}none{{end}}", "none"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if not .State.Running}}up{{else}}down{{end}}", "down"),
    ("{{with .State}}{{.Status}}{{end}}", "running"),
    ("{{.Name | upper}}", "/WEB"),
    ('{{join .Config.Env ","}}', "A=1,B=2"),
    ("{{len .Mounts}}", "2"),
    ('{{printf "%s-%d" .Name .RestartCount}}', "/web-2"),
    ('{{if eq .State.Status "running"}}yes{{end}}', "yes"),
    ("{{.Config.Labels}}", "map[com.example.app:shop tier:db]"),
    ("a {{- .RestartCount -}} b", "a2b"),
    ("{{$.Name}}", "/web"),
    ('{{range .Mounts}}{{$.Name}}{{end}}', "/web/web"),
    ('{{(index .Mounts 1)}}', "map[Destination:/e Name:v2]"),
])
def test_templates(template, expected):
    assert gt.execute(template, INFO) == expected


@pytest.mark.parametrize("bad", ["{{.Name", "{{if .X}}", "{{end}}", "{{nosuch .X}}", "{{$x := 1}}",
                                 '{{template "x"}}', "{{.Name.Deeper.Still}}x{{else}}", "{{ }}"])
def test_bad_templates_are_usage_errors(bad):
    with pytest.raises(UsageError) as info:
        gt.execute(bad, INFO)
    assert info.value.message.startswith("template parsing error")


def test_field_of_a_scalar_is_an_error():
    with pytest.raises(UsageError):
        gt.execute("{{.Name.Deeper}}", INFO)


def test_method_fields_and_tables():
    rows = [{"ID": "abc", "Names": "web", "Label": lambda k: {"tier": "db"}.get(k, "")},
            {"ID": "defghij", "Names": "cache", "Label": lambda k: ""}]
    assert gt.format_rows('{{.Names}} {{.Label "tier"}}', rows, {}) == ["web db", "cache "]
    assert gt.format_rows(r"table {{.ID}}\t{{.Names}}", rows, {"ID": "CONTAINER ID", "Names": "NAMES"}) == [
        "CONTAINER ID   NAMES", "abc            web", "defghij        cache"]
    assert gt.format_rows("json", [{"a": 1}], {}) == ['{"a":1}']
    # docker prints each row as a map (keys sorted); helper methods such as .Label are not fields
    assert gt.format_rows("json", rows, {}) == ['{"ID":"abc","Names":"web"}', '{"ID":"defghij","Names":"cache"}']
    assert gt.format_rows("{{json .}}", rows[:1], {}) == ['{"ID":"abc","Names":"web"}']
