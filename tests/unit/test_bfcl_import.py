"""BFCL's function documents as registry packs, from the installed bfcl-eval package."""

import jsonschema
import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from webapp.tools.bfcl import import_bfcl, instance_specs, json_schema
from webapp.tools.imports import ToolImportError
from webapp.tools.models import Tool, ToolPack

pytestmark = pytest.mark.django_db


def registry():
    return list(Tool.objects.filter(pack__name__startswith="bfcl/").order_by("pk").values(
        "pk", "pack__name", "name", "description", "parameters", "kind", "config"))


def test_it_converts_bfcl_types_to_json_schema():
    schema = json_schema({"type": "dict", "required": ["p"], "properties": {
        "p": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "dict", "properties": {}}},
        "x": {"type": "any", "optional": True}, "r": {"type": "string", "required": True}}})
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["properties"]["p"] == {"type": "number"}
    assert schema["properties"]["t"] == {"type": "array", "items": {"type": "object", "properties": {}}}
    assert schema["properties"]["x"] == {} and schema["properties"]["r"] == {"type": "string"}
    jsonschema.validate({"p": 1, "t": [{}], "x": [1, "a"]}, schema)


def test_importing_twice_gives_the_same_registry(capsys):
    call_command("import_bfcl", "--limit", "5")
    first = registry()
    assert ToolPack.objects.get(name="bfcl/parallel_3").description.startswith("BFCL parallel_3: ")
    assert Tool.objects.filter(pack__name="bfcl/GorillaFileSystem", kind="bfcl").count() == 18
    assert Tool.objects.filter(pack__name__startswith="bfcl/live_parallel_multiple_").exists()
    call_command("import_bfcl", "--limit", "5")
    assert "0 changed" in capsys.readouterr().out.splitlines()[-1]
    assert registry() == first


def test_a_reimport_restores_the_source_and_keeps_the_operators_switches():
    import_bfcl(["parallel"], ["MathAPI"], limit=2)
    pack = ToolPack.objects.get(name="bfcl/MathAPI")
    Tool.objects.filter(pack=pack, name="add").delete()
    Tool.objects.filter(pack=pack, name="subtract").update(enabled=False)
    Tool.objects.create(pack=pack, name="stray", description="not in BFCL", parameters={"type": "object"})
    (report, *_) = import_bfcl([], ["MathAPI"])
    assert (report.created, report.deleted) == (1, 1)
    names = set(pack.tools.values_list("name", flat=True))
    assert "add" in names and "stray" not in names
    assert not pack.tools.get(name="subtract").enabled


def test_same_named_functions_live_in_their_own_packs():
    import_bfcl(["parallel", "parallel_multiple"], [], limit=200)
    names = list(Tool.objects.filter(pack__name__startswith="bfcl/").values_list("name", flat=True))
    assert len(names) > len(set(names))  # BFCL reuses names (calculate_bmi, ...) across entries


@pytest.mark.parametrize("config, message", [
    ({"class": "Shell", "method": "run"}, "unknown BFCL class"),
    ({"class": "GorillaFileSystem", "method": "_load_scenario"}, "no public method"),
    ({"class": "GorillaFileSystem", "method": "format_disk"}, "no public method"),
    ({"class": "GorillaFileSystem", "method": "ls", "initial_config": []}, "initial_config must be an object"),
])
def test_a_bfcl_tool_names_only_a_known_class_and_public_method(config, message):
    pack = ToolPack.objects.create(name="p")
    tool = Tool(pack=pack, name="t", description="d", parameters={"type": "object"}, kind="bfcl", config=config)
    with pytest.raises(ValidationError) as exc:
        tool.full_clean()
    assert message in str(exc.value.message_dict["config"])


def test_named_instances_get_namespaced_tools_with_their_own_scenario():
    import_bfcl([], ["GorillaFileSystem"])
    specs, states = instance_specs({"e1": {"class": "GorillaFileSystem"},
                                    "e2": {"class": "GorillaFileSystem", "initial_config": {"root": {}}}})
    by_name = {s["name"]: s for s in specs}
    assert {"e1.cd", "e2.cd", "e1.ls"} <= set(by_name)
    assert by_name["e1.cd"]["config"]["instance"] == "e1" and by_name["e2.cd"]["config"]["instance"] == "e2"
    # The scenario is kept once for the instance, not copied into each of its ~20 tools.
    assert states == {"e2": {"root": {}}}
    assert not any("initial_config" in s["config"] for s in specs)
    plain = Tool.objects.get(pack__name="bfcl/GorillaFileSystem", name="cd").spec()
    assert plain.name == "cd" and plain.instance == "GorillaFileSystem"  # one instance per class by default


@pytest.mark.parametrize("instances, message", [
    ({"1e": {"class": "GorillaFileSystem"}}, "instance name"),
    ({"e1": {"class": "Nope"}}, "'class' must be one of"),
    ({"e1": {"class": "GorillaFileSystem", "initial_config": 3}}, "initial_config must be an object"),
    ({"e1": {"class": "TicketAPI"}}, "run: python manage.py import_bfcl"),
    (["e1"], "instances must be an object"),
    ({f"e{n}": {"class": "GorillaFileSystem"} for n in range(9)}, "9 instances; a task may have at most 8"),
    ({"e1": {"class": "GorillaFileSystem", "initial_config": {"root": "x" * 70000}}},
     "characters of JSON; the limit is 65536"),
])
def test_bad_instances_get_clear_errors(instances, message):
    import_bfcl([], ["GorillaFileSystem"])
    with pytest.raises(ToolImportError, match=message):
        instance_specs(instances)
