import json

import pytest
from django.core.management import CommandError, call_command

from webapp.tools.models import Tool

pytestmark = pytest.mark.django_db

DOC = {"tools": [
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone.",
                                      "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}},
    {"name": "ping", "description": "Bare function object."},
]}


def test_importing_twice_gives_the_same_registry(tmp_path, capsys):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(DOC))
    call_command("import_openai_tools", str(path), "--pack", "ext")
    first = list(Tool.objects.filter(pack__name="ext").values("name", "parameters", "kind"))
    DOC["tools"][0]["function"]["description"] = "Current time in a zone."
    path.write_text(json.dumps(DOC))
    call_command("import_openai_tools", str(path), "--pack", "ext")
    assert "0 tools created, 2 updated" in capsys.readouterr().out
    assert list(Tool.objects.filter(pack__name="ext").values("name", "parameters", "kind")) == first
    assert Tool.objects.get(pack__name="ext", name="get_time").description == "Current time in a zone."


@pytest.mark.parametrize("document, message", [
    ({"tools": "nope"}, "expected a list of tools"),
    ([{"function": {}}], "tool #1 has no function name"),
    ([{"name": "x", "parameters": {"type": "strnig"}}], "not a valid JSON Schema"),
    ([{"name": "x"}, {"name": "x"}], "duplicate tool names"),
])
def test_bad_documents_are_refused_clearly(tmp_path, document, message):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CommandError, match=message):
        call_command("import_openai_tools", str(path), "--pack", "bad")
    assert not Tool.objects.filter(pack__name="bad").exists()
