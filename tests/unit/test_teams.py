"""Teams on the web side: members are tasks of one owner with a built-in send_message; a message
goes to the teammate's engine inbox as a framed message, or comes back to the sender as an error
result; cancelling a member cancels the team."""

import time

import pytest
from django.conf import settings

from engine.keys import inbox_stream
from engine.messages import CallReport, CallRequest, Control
from webapp.runs.models import Task
from webapp.runs.submit import TooManyTasks, cancel_task
from webapp.runs.teams import SEND_MESSAGE, TeamError, deliver_message, submit_team

pytestmark = pytest.mark.django_db

MEMBERS = [{"name": "planner", "role": "You plan.", "model": "smollm2-135m"},
           {"name": "writer", "role": "You write.", "model": "smollm2-135m", "mode": "sync"}]


def inbox(redis_client, engine_id):
    out = []
    for _, fields in redis_client.xrange(inbox_stream(engine_id)):
        out.append(CallReport.from_json(fields[b"r"]) if b"r" in fields else Control.from_json(fields[b"c"]))
    return out


def running(task, engine_id):
    Task.objects.filter(pk=task.pk).update(status="running", engine_id=engine_id)
    task.refresh_from_db()
    return task


def send(task, to, text):
    tool = next(t for t in task.tools if t["name"] == SEND_MESSAGE)
    deliver_message(CallRequest(task.pk, "c1", task.engine_id, tool, {"to": to, "text": text}, time.time()))


def test_it_starts_every_member_with_a_send_message_tool_naming_the_others(alice, redis_client):
    planner, writer = submit_team(alice, "Write a haiku about tea.", MEMBERS, max_tokens=64)
    assert planner.team == writer.team and planner.owner == writer.owner == alice
    assert (planner.member, writer.member, writer.mode) == ("planner", "writer", "sync")
    assert "You are planner, working in a team with writer" in planner.prompt and planner.prompt.endswith("tea.")
    (tool,) = [t for t in planner.tools if t["name"] == SEND_MESSAGE]
    assert tool["parameters"]["properties"]["to"]["enum"] == ["writer"] and tool["kind"] == "team"


@pytest.mark.parametrize("members, words", [
    (MEMBERS[:1], "2 to 8 members"),
    ([MEMBERS[0], {**MEMBERS[1], "name": "planner"}], "must differ"),
    ([MEMBERS[0], {**MEMBERS[1], "name": "no spaces"}], "a letter, then"),
])
def test_a_bad_team_is_refused_and_nothing_is_stored(alice, members, words):
    with pytest.raises(TeamError, match=words):
        submit_team(alice, "goal", members)
    assert not Task.objects.exists()


def test_a_team_counts_against_the_owners_quota(alice, settings):
    settings.ASYNCLM_MAX_OPEN_TASKS_PER_USER = 1
    with pytest.raises(TooManyTasks):
        submit_team(alice, "goal", MEMBERS)
    assert not Task.objects.exists()


def test_a_message_goes_to_the_teammates_engine_framed_with_the_senders_name(alice, redis_client):
    planner, writer = submit_team(alice, "goal", MEMBERS)
    planner, writer = running(planner, "engine-p"), running(writer, "engine-w")
    send(planner, "writer", "Use five syllables first.")
    (control,) = inbox(redis_client, "engine-w")
    assert control.action == "message" and control.task_id == writer.pk
    assert control.text == "Message from planner: Use five syllables first."
    (rep,) = inbox(redis_client, "engine-p")
    assert rep.ok and rep.result == "delivered to writer" and rep.call_id == "c1"


@pytest.mark.parametrize("to, text, state, words", [
    ("nobody", "hi", "running", "no teammate named 'nobody'"),
    ("planner", "hi", "running", "no teammate named 'planner'"),  # itself
    ("writer", "hi", "queued", "has not started yet"),
    ("writer", "hi", "finished", "has ended its part"),
    ("writer", "bad\x00text", "running", "NUL"),
    ("writer", "", "running", "non-empty"),
])
def test_a_message_that_cannot_be_delivered_is_an_error_result(alice, redis_client, to, text, state, words):
    planner, writer = submit_team(alice, "goal", MEMBERS)
    planner = running(planner, "engine-p")
    Task.objects.filter(pk=writer.pk).update(status=state, engine_id="engine-w")
    send(planner, to, text)
    (rep,) = inbox(redis_client, "engine-p")
    assert not rep.ok and words in rep.error
    assert inbox(redis_client, "engine-w") == []


def test_cancelling_a_member_cancels_the_team(alice, redis_client):
    planner, writer = submit_team(alice, "goal", MEMBERS)
    cancel_task(planner)
    assert set(Task.objects.values_list("status", flat=True)) == {"cancelled"}


# -- the team page and the API ------------------------------------------------------------------
def api_client(alice):
    import django.test

    from webapp.api.models import ApiToken

    _, raw = ApiToken.issue(alice, "tests")
    return django.test.Client(headers={"authorization": f"Bearer {raw}"})


def post_json(client, path, body):
    import json

    return client.post(path, json.dumps(body), content_type="application/json")


TEAM = {"goal": "Write a haiku about tea.", "members": [
    {"name": "planner", "role": "You plan.", "model": "smollm2-135m", "pack": "demo"},
    {"name": "writer", "role": "You write.", "model": "smollm2-135m", "mode": "sync"}]}


def test_the_api_starts_a_team_and_explains_a_bad_one(alice, demo_pack, redis_client):
    api = api_client(alice)
    response = post_json(api, "/api/teams", TEAM)
    assert response.status_code == 201, response.content
    body = response.json()
    planner, writer = body["tasks"]
    assert planner["team"] == writer["team"] == body["team"] and (planner["member"], writer["member"]) == (
        "planner", "writer")
    assert "get_weather" in planner["tools"] and planner["tools"][-1] == SEND_MESSAGE and writer["mode"] == "sync"
    bad = {**TEAM, "members": [TEAM["members"][0], {**TEAM["members"][1], "name": "planner", "pack": "nope"}]}
    response = post_json(api, "/api/teams", bad)
    assert response.status_code == 422
    assert "members.1.pack" in response.json()["errors"] and Task.objects.count() == 2
    response = post_json(api, "/api/teams", {**TEAM, "members": TEAM["members"] * 1 + [TEAM["members"][0]]})
    assert response.status_code == 422 and "must differ" in str(response.json()["errors"]["members"])


def test_the_team_page_starts_a_team_and_links_its_members(alice_client, demo_pack, redis_client):
    from django.urls import reverse

    assert alice_client.get(reverse("team_new")).status_code == 200
    data = {"team-goal": "Plan a picnic.", "team-max_tokens": 64, "team-max_wall_s": 60,
            "member-TOTAL_FORMS": 4, "member-INITIAL_FORMS": 0, "member-MIN_NUM_FORMS": 2, "member-MAX_NUM_FORMS": 8}
    for i, name in enumerate(["cook", "shopper"]):
        data |= {f"member-{i}-name": name, f"member-{i}-role": f"You are the {name}.",
                 f"member-{i}-model": "smollm2-135m", f"member-{i}-mode": "async"}
    for i in (2, 3):  # the empty rows stay empty: a browser posts their initial choices
        data |= {f"member-{i}-mode": "async", f"member-{i}-model": settings.ASYNCLM_DEFAULT_MODEL}
    response = alice_client.post(reverse("team_new"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    cook, shopper = Task.objects.order_by("pk")
    page = alice_client.get(response.url).content.decode()
    assert 'id="team-members"' in page and reverse("task_detail", args=[shopper.pk]) in page
    data["member-1-name"] = "cook"
    response = alice_client.post(reverse("team_new"), data)
    assert response.status_code == 400 and "must differ" in response.content.decode()
    assert Task.objects.count() == 2
