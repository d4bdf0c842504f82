"""The tool registry in the Django admin (pytest-django admin client)."""

import pytest
from django.urls import reverse

from webapp.tools.demo import install_demo_pack
from webapp.tools.models import Tool, ToolPack

pytestmark = pytest.mark.django_db


@pytest.fixture
def pack():
    install_demo_pack(ToolPack, Tool)
    return ToolPack.objects.get(name="demo")


def test_the_list_searches_and_filters(admin_client, pack):
    response = admin_client.get(reverse("admin:tools_tool_changelist"), {"q": "weather", "kind__exact": "simulated"})
    body = response.content.decode()
    assert response.status_code == 200 and "get_weather" in body and "search_flights" not in body


def test_an_invalid_schema_is_shown_on_the_field(admin_client, pack):
    tool = pack.tools.get(name="get_weather")
    url = reverse("admin:tools_tool_change", args=[tool.pk])
    data = {"pack": pack.pk, "name": tool.name, "description": tool.description,
            "parameters": '{"type": "strnig"}', "est_latency_ms": 300, "timeout_s": 5, "kind": "simulated",
            "config": "{}", "enabled": "on"}
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "not a valid JSON Schema" in response.content.decode()
    tool.refresh_from_db()
    assert tool.parameters["type"] == "object"


def test_bulk_disable_and_enable(admin_client, pack):
    ids = list(pack.tools.values_list("pk", flat=True))
    url = reverse("admin:tools_tool_changelist")
    admin_client.post(url, {"action": "disable", "_selected_action": ids})
    assert not pack.tools.filter(enabled=True).exists()
    admin_client.post(url, {"action": "enable", "_selected_action": ids})
    assert not pack.tools.filter(enabled=False).exists()


def test_the_test_call_page_refuses_bad_arguments_without_running(admin_client, pack):
    tool = pack.tools.get(name="get_weather")
    response = admin_client.post(reverse("admin:tools_tool_test_call", args=[tool.pk]), {"arguments": '{"town": 1}'})
    assert "&#x27;city&#x27; is a required property" in response.content.decode()


def test_the_admin_is_for_staff_only(client, django_user_model, pack):
    user = django_user_model.objects.create_user("carol", password="pw-for-tests-123")
    client.force_login(user)
    assert client.get(reverse("admin:tools_tool_changelist")).status_code == 302
