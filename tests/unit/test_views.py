import pytest
from django.test import override_settings
from django.urls import reverse

from engine.intake import Intake
from engine.messages import TaskSubmission
from webapp.core.redis import client as web_redis
from webapp.runs.models import Task

pytestmark = pytest.mark.django_db

VALID = {"prompt": "Say hi", "model": "smollm2-135m", "max_tokens": 16, "temperature": 0, "top_p": 1, "seed": 0,
         "mode": "async", "max_calls": 16, "max_wall_s": 300}


def test_it_requires_login(client):
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_it_queues_a_submitted_task(alice_client, alice, redis_client):
    response = alice_client.post(reverse("dashboard"), VALID)
    task = Task.objects.get()
    assert response.status_code == 302 and response.url == reverse("task_detail", args=[task.pk])
    assert (task.owner, task.status, task.prompt, task.max_tokens) == (alice, "queued", "Say hi", 16)
    (claimed,) = Intake(redis_client).claim("engine-test")
    assert claimed.submission == TaskSubmission(
        task.pk, "smollm2-135m", "Say hi", 16, task.created_at.timestamp(), claimed.submission.sampling)


def test_tasks_of_two_users_are_taken_in_turn(client, alice, bob, redis_client):
    for user, count in ((alice, 3), (bob, 1)):
        client.force_login(user)
        for _ in range(count):
            assert client.post(reverse("dashboard"), VALID).status_code == 302
    taken = [Intake(redis_client).claim("engine-test")[0].submission.task_id for _ in range(4)]
    owners = [Task.objects.get(pk=pk).owner for pk in taken]
    assert owners == [alice, bob, alice, alice]  # bob's task did not wait behind all of alice's


@pytest.mark.parametrize("change, message", [
    ({"prompt": "   "}, "Write a prompt for the model."),
    ({"prompt": "x" * 9000}, "the limit is 8000"),
    ({"model": "gpt-17"}, "Select a valid choice"),
    ({"max_tokens": 0}, "greater than or equal to 1"),
    ({"max_tokens": 999999}, "less than or equal to 2048"),
    ({"temperature": "hot"}, "Enter a number"),
])
def test_it_explains_bad_input_and_keeps_it(alice_client, change, message, redis_client):
    response = alice_client.post(reverse("dashboard"), {**VALID, **change})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Task.objects.exists()


def test_it_says_when_redis_is_unreachable_and_keeps_the_task(alice_client):
    web_redis.cache_clear()
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        response = alice_client.post(reverse("dashboard"), VALID)
        web_redis.cache_clear()
    assert response.status_code == 400
    assert "is not reachable" in response.content.decode()
    task = Task.objects.get()
    assert task.status == "failed" and "Could not queue the task" in task.status_reason


def test_it_lists_only_the_users_own_tasks(alice_client, alice, bob, redis_client):
    Task.objects.create(owner=alice, prompt="mine", model="m")
    Task.objects.create(owner=bob, prompt="theirs", model="m")
    body = alice_client.get(reverse("dashboard")).content.decode()
    assert "mine" in body and "theirs" not in body


def test_another_users_task_page_is_404(alice_client, bob, redis_client):
    task = Task.objects.create(owner=bob, prompt="theirs", model="m")
    assert alice_client.get(reverse("task_detail", args=[task.pk])).status_code == 404


def test_a_queued_task_says_when_no_engine_runs(alice_client, alice, redis_client):
    task = Task.objects.create(owner=alice, prompt="p", model="m")
    body = alice_client.get(reverse("task_detail", args=[task.pk])).content.decode()
    assert "No engine is running" in body
    assert "Engines: <strong>none running</strong>" in " ".join(body.split()).replace("> <", "><")


def test_admin_is_staff_only(alice_client, make_user, client):
    assert alice_client.get("/admin/").status_code == 302
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    assert client.get("/admin/").status_code == 200


def test_the_login_page_renders(client):
    assert "Log in" in client.get(reverse("login")).content.decode()


def test_ensure_admin_creates_one_admin_and_keeps_the_password(tmp_path, settings, capsys):
    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    first = capsys.readouterr().out
    password = (tmp_path / "admin-password.txt").read_text().split("password: ")[1].strip()
    assert password in first
    call_command("ensure_admin")
    assert password not in capsys.readouterr().out
    from django.contrib.auth import authenticate

    assert authenticate(username="admin", password=password).is_superuser
    assert (tmp_path / "admin-password.txt").stat().st_mode & 0o777 == 0o600  # private from the start


def test_a_private_file_is_created_0600_and_never_overwritten(tmp_path):
    from webapp.core.files import write_private

    path = tmp_path / "var" / "secret.txt"
    assert write_private(path, "one") and path.read_text() == "one"
    assert path.stat().st_mode & 0o777 == 0o600
    assert not write_private(path, "two") and path.read_text() == "one"


def test_a_task_keeps_a_snapshot_of_its_tools(alice_client, demo_pack, redis_client):
    response = alice_client.post(reverse("dashboard"), {**VALID, "pack": "demo"})
    assert response.status_code == 302
    task = Task.objects.get()
    names = sorted(t["name"] for t in task.tools)
    assert names == sorted(demo_pack.tools.filter(enabled=True).values_list("name", flat=True))
    demo_pack.tools.filter(name="get_weather").update(description="changed later", est_latency_ms=1)
    task.refresh_from_db()
    weather = next(t for t in task.tools if t["name"] == "get_weather")
    assert weather["description"] == "Current weather in a city." and weather["est_latency_ms"] == 300
    (claimed,) = Intake(redis_client).claim("engine-test")
    assert [t["name"] for t in claimed.submission.tools] == [t["name"] for t in task.tools]


def test_tools_with_the_same_name_from_two_packs_are_refused(alice_client, demo_pack, redis_client):
    from webapp.tools.models import Tool, ToolPack

    other = ToolPack.objects.create(name="other")
    clash = Tool.objects.create(pack=other, name="get_weather", description="d",
                                parameters={"type": "object", "properties": {}})
    response = alice_client.post(reverse("dashboard"), {**VALID, "pack": "demo", "tools": [clash.pk]})
    assert response.status_code == 400
    assert "unique names; chosen more than once: get_weather" in response.content.decode()


def test_a_task_page_lists_its_calls(alice_client, alice):
    from webapp.runs.models import ToolCall

    task = Task.objects.create(owner=alice, prompt="p", model="m", status="finished")
    ToolCall.objects.create(task=task, call_id="c1", tool="get_weather", arguments={"city": "Oslo"}, status="done",
                            worker="w1", result={"temp_c": 3}, decoded_ms=10, injected_ms=400)
    body = alice_client.get(reverse("task_detail", args=[task.pk])).content.decode()
    assert "get_weather" in body and "{&quot;city&quot;:&quot;Oslo&quot;}" in body and "400 ms" in body


def test_the_registry_validates_schemas_and_configs(demo_pack):
    from django.core.exceptions import ValidationError

    from webapp.tools.models import Tool

    bad_schema = Tool(pack=demo_pack, name="x", description="d", parameters={"type": "strnig"})
    with pytest.raises(ValidationError, match="parameters"):
        bad_schema.full_clean()
    bad_entry = Tool(pack=demo_pack, name="y", description="d", kind="python",
                     parameters={"type": "object"}, config={"entry_point": "os:system"})
    with pytest.raises(ValidationError, match="allow-listed"):
        bad_entry.full_clean()


def test_a_task_can_hold_two_named_instances_of_a_bfcl_class(alice_client, redis_client):
    import json

    from webapp.runs.submit import submission_for
    from webapp.tools.bfcl import import_bfcl

    import_bfcl([], ["GorillaFileSystem"])
    instances = {"e1": {"class": "GorillaFileSystem"}, "e2": {"class": "GorillaFileSystem",
                                                             "initial_config": {"root": {"w": {"type": "directory"}}}}}
    response = alice_client.post(reverse("dashboard"), {**VALID, "instances": json.dumps(instances)})
    assert response.status_code == 302
    task = Task.objects.get()
    tools = {t["name"]: t for t in task.tools}
    assert tools["e1.cd"]["config"]["instance"] == "e1" and tools["e2.cd"]["config"]["instance"] == "e2"
    # e2's scenario is stored once, for the instance, and travels once in the engine's submission.
    assert not any("initial_config" in t["config"] for t in task.tools)
    assert task.instances == {"e2": instances["e2"]["initial_config"]}
    assert submission_for(task).instances == task.instances


@pytest.mark.parametrize("instances, message", [
    ("{not json", "Enter a valid JSON"),
    ('{"e1": {"class": "Shell"}}', "&#x27;class&#x27; must be one of"),
])
def test_bad_instances_are_explained_on_the_field(alice_client, instances, message, redis_client):
    response = alice_client.post(reverse("dashboard"), {**VALID, "instances": instances})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Task.objects.exists()


def test_model_output_and_tool_results_are_shown_as_text(alice_client, alice):
    from webapp.runs.models import ToolCall

    task = Task.objects.create(owner=alice, prompt="<script>alert('p')</script>", model="m", status="finished",
                               final_text="<script>alert('o')</script>")
    ToolCall.objects.create(task=task, call_id="a", tool="f", arguments={"x": "<b>bold</b>"}, status="done",
                            result={"html": "<script>alert('r')</script>"})
    body = alice_client.get(reverse("task_detail", args=[task.pk])).content.decode()
    assert "<script>alert" not in body and "&lt;script&gt;alert(&#x27;p&#x27;)" in body
    assert "<b>bold</b>" not in body


def test_the_trace_downloads_as_json_for_its_owner_only(alice_client, alice, bob):
    from webapp.runs.models import TraceEvent

    task = Task.objects.create(owner=alice, prompt="p", model="m", status="finished")
    TraceEvent.objects.create(task=task, seq=1, t_ms=1.0, kind="token", payload={"text": "hi"})
    response = alice_client.get(reverse("task_trace", args=[task.pk]))
    assert response["Content-Disposition"] == f'attachment; filename="asynclm-task-{task.pk}-trace.json"'
    assert response.json()["events"][0]["payload"] == {"text": "hi"}
    theirs = Task.objects.create(owner=bob, prompt="p", model="m")
    assert alice_client.get(reverse("task_trace", args=[theirs.pk])).status_code == 404


def test_the_trace_download_holds_the_sub_agents_traces(alice_client, alice):
    from webapp.runs.models import TraceEvent

    parent = Task.objects.create(owner=alice, prompt="p", model="m", status="finished")
    child = Task.objects.create(owner=alice, prompt="c", model="m", status="finished", parent=parent,
                                parent_call_id="c1", depth=1)
    grandchild = Task.objects.create(owner=alice, prompt="g", model="m", status="failed", parent=child,
                                     parent_call_id="c2", depth=2)
    TraceEvent.objects.create(task=grandchild, seq=1, t_ms=3.0, kind="token", payload={"text": "deep"})
    doc = alice_client.get(reverse("task_trace", args=[parent.pk])).json()
    [sub] = doc["sub_agents"]
    assert (sub["id"], sub["parent"], sub["parent_call_id"]) == (child.pk, parent.pk, "c1")
    [deeper] = sub["sub_agents"]
    assert deeper["id"] == grandchild.pk and deeper["events"][0]["payload"] == {"text": "deep"}
    assert "exported_at" in doc and "exported_at" not in sub


def test_a_task_with_sub_agents_shows_them_as_lanes_on_one_clock(alice_client, alice, bob):
    from datetime import timedelta

    from django.utils import timezone

    t0 = timezone.now()
    parent = Task.objects.create(owner=alice, prompt="p", model="m", status="running", started_at=t0)
    Task.objects.create(owner=alice, prompt="c", model="m", status="running", parent=parent, parent_call_id="c1",
                        depth=1, started_at=t0 + timedelta(milliseconds=1500))
    Task.objects.create(owner=alice, prompt="c", model="m", status="queued", parent=parent, parent_call_id="c2",
                        depth=1)
    page = alice_client.get(reverse("task_detail", args=[parent.pk])).content.decode()
    assert 'id="agent-lanes"' in page and "Sub-agents" in page
    lanes = alice_client.get(reverse("task_lanes", args=[parent.pk])).json()["lanes"]
    assert [(lane["label"], lane["offset_ms"], lane["current"]) for lane in lanes] == [
        ("this task", 0.0, True), (f"c1 → task {parent.pk + 1}", 1500.0, False),
        (f"c2 → task {parent.pk + 2}", None, False)]
    assert lanes[1]["ws_path"] == f"/ws/tasks/{parent.pk + 1}/"
    lonely = Task.objects.create(owner=alice, prompt="p", model="m")
    assert 'id="agent-lanes"' not in alice_client.get(reverse("task_detail", args=[lonely.pk])).content.decode()
    theirs = Task.objects.create(owner=bob, prompt="p", model="m")
    assert alice_client.get(reverse("task_lanes", args=[theirs.pk])).status_code == 404


def test_a_team_members_page_draws_every_member(alice_client, alice):
    import uuid

    team = uuid.uuid4()
    ids = [Task.objects.create(owner=alice, prompt="p", model="m", team=team, member=name).pk
           for name in ("planner", "critic")]
    lanes = alice_client.get(reverse("task_lanes", args=[ids[1]])).json()["lanes"]
    assert [(lane["id"], lane["label"], lane["current"]) for lane in lanes] == [
        (ids[0], "planner", False), (ids[1], "critic", True)]


def test_the_message_box_sends_to_the_engine_and_explains_refusals(alice_client, alice, redis_client):
    from engine.keys import inbox_stream

    running = Task.objects.create(owner=alice, prompt="p", model="m", status="running", engine_id="engine-x")
    response = alice_client.post(reverse("task_message", args=[running.pk]), {"text": "Also Paris."}, follow=True)
    assert "message sent" in response.content.decode()
    assert len(redis_client.xrange(inbox_stream("engine-x"))) == 1
    done = Task.objects.create(owner=alice, prompt="p", model="m", status="finished")
    response = alice_client.post(reverse("task_message", args=[done.pk]), {"text": "hi"}, follow=True)
    assert "Not sent: the task is finished" in response.content.decode()
    response = alice_client.post(reverse("task_message", args=[running.pk]), {"text": "x" * 5000}, follow=True)
    assert "the limit is 2000. Nothing was sent." in response.content.decode()


def test_a_comparison_from_the_form_opens_the_compare_view(alice_client, alice, bob, redis_client):
    response = alice_client.post(reverse("dashboard"), {**VALID, "compare": "on"})
    group = Task.objects.first().compare_group
    assert response.status_code == 302 and response.url == reverse("compare", args=[group])
    page = alice_client.get(response.url).content.decode()
    assert page.count('class="timeline"') == 3
    assert [t.mode for t in Task.objects.order_by("pk")] == ["sync", "sync_parallel", "async"]
    bob_client = type(alice_client)()
    bob_client.force_login(bob)
    assert bob_client.get(response.url).status_code == 404


def test_the_next_run_of_a_comparison_starts_when_the_previous_one_ends(alice, redis_client):
    from webapp.runs.store import DjangoTaskStore
    from webapp.runs.submit import on_task_final, submit_comparison

    first, second, third = submit_comparison(alice, prompt="p", model="smollm2-135m", tools=[])
    intake = Intake(redis_client)
    assert [c.submission.task_id for c in intake.claim("e")] == [first.pk]
    assert DjangoTaskStore().finish(first.pk, "finished", "", "text", {})
    on_task_final(first.pk)  # what the engine calls once the end is stored
    assert [c.submission.task_id for c in intake.claim("e")] == [second.pk]
    from webapp.runs.submit import cancel_task

    cancel_task(second)  # a queued run: cancelled here, and the runs after it too
    assert Task.objects.get(pk=third.pk).status == "cancelled"


def test_the_dashboard_filters_and_keeps_filters_across_pages(alice_client, alice):
    for i in range(30):
        Task.objects.create(owner=alice, prompt=f"weather {i}" if i % 2 else f"other {i}", model="m",
                            mode="sync" if i % 2 else "async")
    page = alice_client.get(reverse("dashboard"), {"mode": "sync", "q": "weather"}).content.decode()
    assert "weather 29" in page and "other 28" not in page
    assert alice_client.get(reverse("dashboard"), {"mode": "sync", "q": "nothing"}).content.decode().count(
        "No task matches these filters") == 1
    many = alice_client.get(reverse("dashboard"), {"mode": "async"}).content.decode()
    assert "mode=async&amp;page=2" not in many  # 15 fit on one page
    assert "page=2" in alice_client.get(reverse("dashboard")).content.decode()


def test_purge_deletes_old_finished_tasks_and_their_events(alice, capsys):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from webapp.runs.models import TraceEvent

    old = Task.objects.create(owner=alice, prompt="old", model="m", status="finished")
    old_running = Task.objects.create(owner=alice, prompt="old", model="m", status="running")
    new = Task.objects.create(owner=alice, prompt="new", model="m", status="finished")
    Task.objects.filter(pk__in=[old.pk, old_running.pk]).update(created_at=timezone.now() - timedelta(days=40))
    TraceEvent.objects.create(task=old, seq=1, t_ms=1, kind="token", payload={})
    call_command("purge_tasks", "--dry-run")
    assert "would delete 1 tasks and 1 trace events" in capsys.readouterr().out
    call_command("purge_tasks")
    assert set(Task.objects.values_list("pk", flat=True)) == {old_running.pk, new.pk}
    assert not TraceEvent.objects.exists()


def test_the_trace_download_and_health_keep_configuration_and_hosts_for_staff(alice_client, alice, redis_client):
    from engine import health

    tools = [{"name": "fetch", "description": "", "parameters": {}, "kind": "http",
              "config": {"url": "http://intranet.example:8080/secret"}}]
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="finished", tools=tools)
    doc = alice_client.get(reverse("task_trace", args=[task.pk])).json()
    assert doc["tool_specs"] == [{"name": "fetch", "description": "", "parameters": {}, "kind": "http"}]
    health.beat(redis_client, "engine", "engine-v", 30, models=["m"], active=0, capacity=4)
    (engine,) = [e for e in alice_client.get(reverse("health")).json()["engines"] if e["id"] == "engine-v"]
    assert "host" not in engine and "pid" not in engine and engine["models"] == ["m"]
    alice.is_staff = True
    alice.save()
    doc = alice_client.get(reverse("task_trace", args=[task.pk])).json()
    assert doc["tool_specs"][0]["config"]["url"].startswith("http://intranet")
    (engine,) = [e for e in alice_client.get(reverse("health")).json()["engines"] if e["id"] == "engine-v"]
    assert engine["host"] and engine["pid"]


def test_a_redis_outage_is_a_clear_503_not_a_server_error(alice_client, monkeypatch):
    import redis

    from webapp.runs import views

    def down(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(views, "submit_task", down)
    response = alice_client.post(reverse("dashboard"), VALID)
    assert response.status_code == 503 and "Redis unreachable" in response.content.decode()
    assert response["Retry-After"] == "10"


def test_logins_are_throttled_per_user_name_and_the_message_says_for_how_long(client, alice, bob, settings,
                                                                              redis_client):
    settings.ASYNCLM_LOGIN_FAILURES = 3
    login = reverse("login")
    for _ in range(3):
        page = client.post(login, {"username": "alice", "password": "wrong"}).content.decode()
        assert "Please enter a correct username and password" in page
    page = client.post(login, {"username": "alice", "password": "pw-for-tests-123"}).content.decode()
    assert "Too many failed logins: try again in 15 minute(s)." in page  # the right password, refused
    assert "_auth_user_id" not in client.session
    response = client.post(login, {"username": "bob", "password": "pw-for-tests-123"})  # another user
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(bob.pk)
    redis_client.flushdb()  # the window has passed
    client.logout()
    assert client.post(login, {"username": "alice", "password": "pw-for-tests-123"}).status_code == 302


def test_the_admin_login_is_throttled_too(client, admin_user, settings, redis_client):
    settings.ASYNCLM_LOGIN_FAILURES = 2
    for _ in range(2):
        client.post("/admin/login/", {"username": "admin", "password": "wrong"})
    page = client.post("/admin/login/", {"username": "admin", "password": "password"}).content.decode()
    assert "Too many failed logins" in page


def test_runs_on_a_server_that_ignores_seeds_say_they_are_not_reproducible(alice_client, alice):
    import uuid

    g1, g2 = str(uuid.uuid4()), str(uuid.uuid4())
    plain = Task.objects.create(owner=alice, prompt="p", model="m", status="finished", compare_group=g1,
                                metrics={"reproducible": True})
    unseeded = Task.objects.create(owner=alice, prompt="p", model="m", status="finished", compare_group=g2,
                                   metrics={"reproducible": False})
    assert 'id="not-reproducible"' not in alice_client.get(reverse("task_detail", args=[plain.pk])).content.decode()
    assert 'id="not-reproducible"' not in alice_client.get(reverse("compare", args=[g1])).content.decode()
    page = alice_client.get(reverse("task_detail", args=[unseeded.pk])).content.decode()
    assert 'id="not-reproducible"' in page and "ignores seeds" in page
    assert 'id="not-reproducible"' in alice_client.get(reverse("compare", args=[g2])).content.decode()


def test_runs_decoded_in_shared_batches_say_why_a_rerun_may_differ(alice_client, alice):
    import uuid

    from engine.metrics import BATCHED

    group = str(uuid.uuid4())
    batched = Task.objects.create(owner=alice, prompt="p", model="m", status="finished", compare_group=group,
                                  metrics={"reproducible": False, "not_reproducible_because": BATCHED})
    Task.objects.create(owner=alice, prompt="p", model="m", status="finished", compare_group=group,
                        metrics={"reproducible": True})
    page = alice_client.get(reverse("task_detail", args=[batched.pk])).content.decode()
    assert 'id="not-reproducible"' in page and "decoded in batches with other tasks" in page
    assert "ignores seeds" not in page
    compare = alice_client.get(reverse("compare", args=[group])).content.decode()
    assert "decoded in batches with other tasks" in compare and "ignores seeds" not in compare


def test_the_health_bar_names_a_model_an_engine_refuses_and_why(alice_client, redis_client):
    from engine import health

    health.beat(redis_client, "engine", "engine-p", 30, models=[], active=0, capacity=4,
                problems={"smollm2-135m": "the SGLang server at http://x does not serve smollm2-135m"})
    page = alice_client.get(reverse("dashboard")).content.decode()
    assert "smollm2-135m refused: the SGLang server at http://x does not serve smollm2-135m" in page
