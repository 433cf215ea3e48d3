"""Webhook decisions (shared/webhooks/logic.py): plain functions, no I/O."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.events import TOPICS
from shared.webhooks import logic
from shared.webhooks.logic import RetrySchedule, Subscription, WebhookInputError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


# -- which endpoints want an event ---------------------------------------------------------

@pytest.mark.parametrize(("subscription", "topic", "model", "stage", "expected"), [
    (Subscription(), "model.promoted", "fraud", "production", True),
    (Subscription(), "registry.dlq", "_unknown", None, True),
    (Subscription(("model.promoted",)), "model.promoted", "fraud", "staging", True),
    (Subscription(("model.promoted",)), "model.demoted", "fraud", "none", False),
    (Subscription(("model.promoted", "model.demoted")), "model.demoted", "fraud", "none", True),
    (Subscription(models=("fraud-*",)), "model.promoted", "fraud-eu", "production", True),
    (Subscription(models=("fraud-*",)), "model.promoted", "fraud", "production", False),
    (Subscription(models=("fraud-*",)), "model.promoted", "churn-eu", "production", False),
    (Subscription(models=("fraud-?",)), "model.promoted", "fraud-1", "production", True),
    (Subscription(models=("fraud-?",)), "model.promoted", "fraud-12", "production", False),
    (Subscription(models=("a*", "b*")), "model.promoted", "b1", "production", True),
    (Subscription(models=("fraud-[ab]",)), "model.promoted", "fraud-c", "production", False),
    (Subscription(stages=("production",)), "model.promoted", "fraud", "production", True),
    (Subscription(stages=("production",)), "model.promoted", "fraud", "staging", False),
    (Subscription(stages=("production",)), "model.ingested", "fraud", None, False),  # no stage: no match
    (Subscription(stages=("archived",)), "model.archived", "fraud", "archived", True),
    (Subscription(("model.promoted",), ("fraud-*",), ("production",)), "model.promoted", "fraud-x", "production",
     True),
    (Subscription(("model.promoted",), ("fraud-*",), ("production",)), "model.promoted", "fraud-x", "staging",
     False),
])
def test_wants(subscription, topic, model, stage, expected):
    assert logic.wants(subscription, topic, model, stage) is expected


def test_globs_are_case_sensitive_like_model_names():
    assert not logic.wants(Subscription(models=("Fraud*",)), "model.promoted", "fraud", None)


@pytest.mark.parametrize(("topic", "data", "stage"), [
    ("model.promoted", {"to_stage": "production"}, "production"),
    ("model.demoted", {"to_stage": "none", "from_stage": "production"}, "none"),
    ("promotion.requested", {"to_stage": "staging"}, "staging"),
    ("model.archived", {"from_stage": "none"}, "archived"),
    ("model.ingested", {"name": "x"}, None),
    ("registry.audit", {"to_stage": None}, None),
])
def test_event_stage(topic, data, stage):
    assert logic.event_stage(topic, data) == stage


def test_a_subscription_is_checked_and_normalised():
    assert logic.check_subscription([], [], []) == Subscription(("*",), ("*",), ())
    assert logic.check_subscription(["model.promoted", " model.promoted ", ""], ["fraud-*"], ["production"]) == \
        Subscription(("model.promoted",), ("fraud-*",), ("production",))
    assert logic.check_subscription(["model.promoted", "*"], [], []).topics == ("*",)
    assert set(TOPICS) == {t for t in TOPICS if logic.check_subscription([t], [], []).topics == (t,)}


@pytest.mark.parametrize(("topics", "models", "stages", "says"), [
    (["model.promote"], [], [], "unknown event type(s) model.promote"),
    ([], ["Fraud*"], [], "model glob(s) 'Fraud*'"),
    ([], ["fraud/*"], [], "model glob(s)"),
    ([], [], ["prod"], "unknown stage(s) prod"),
])
def test_a_wrong_subscription_says_what_is_wrong(topics, models, stages, says):
    with pytest.raises(WebhookInputError, match=None) as caught:
        logic.check_subscription(topics, models, stages)
    assert says in str(caught.value)


# -- retries -------------------------------------------------------------------------------

SCHEDULE = RetrySchedule(first=timedelta(seconds=5), cap=timedelta(minutes=1))


@pytest.mark.parametrize(("failures", "seconds"), [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (6, 60), (500, 60),
                                                   (10**6, 60)])
def test_the_delay_doubles_up_to_the_cap(failures, seconds):
    assert logic.retry_delay(failures, SCHEDULE) == timedelta(seconds=seconds)


def test_jitter_stretches_by_at_most_a_quarter():
    assert logic.retry_delay(2, SCHEDULE, jitter=0.5) == timedelta(seconds=11.25)
    assert logic.retry_delay(2, SCHEDULE, jitter=0.999) < timedelta(seconds=12.5)


def test_retry_after_is_honoured_when_longer_and_bounded():
    assert logic.retry_delay(1, SCHEDULE, retry_after=timedelta(seconds=30)) == timedelta(seconds=30)
    assert logic.retry_delay(3, SCHEDULE, retry_after=timedelta(seconds=1)) == timedelta(seconds=20)
    assert logic.retry_delay(1, SCHEDULE, retry_after=timedelta(days=365)) == logic.RETRY_AFTER_CEILING


def _deployed_schedule() -> RetrySchedule:
    """The schedule the services run with unless told otherwise (Settings' defaults, which
    docker-compose.yml and infra/k8s/config.yaml repeat)."""
    from shared.settings import Settings

    fields = Settings.model_fields
    return RetrySchedule(timedelta(seconds=fields["webhooks_retry_first_seconds"].default),
                         timedelta(seconds=fields["webhooks_retry_max_seconds"].default))


def test_a_receiver_back_after_a_minute_gets_the_next_attempt_within_seconds():
    # attempts 5, 15, 35 and 75 s after the first failure (each stretched by up to a quarter)
    schedule = _deployed_schedule()
    assert logic.wait_after_outage(timedelta(minutes=1), schedule, jitter=0.0) == timedelta(seconds=15)
    assert logic.wait_after_outage(timedelta(minutes=1), schedule) < timedelta(seconds=35)


@pytest.mark.parametrize("outage", [timedelta(seconds=1), timedelta(minutes=1), timedelta(minutes=17),
                                    timedelta(hours=2), timedelta(hours=23)])
def test_after_any_outage_the_wait_is_at_most_one_stretched_cap(outage):
    schedule = _deployed_schedule()
    assert schedule.cap <= timedelta(minutes=5)  # not an hour: a receiver back is served within minutes
    assert logic.wait_after_outage(outage, schedule) <= schedule.cap * 1.25


@pytest.mark.parametrize(("failures", "jitter"), [(0, 0.0), (-1, 0.0), (1, 1.0), (1, -0.1)])
def test_retry_delay_refuses_nonsense(failures, jitter):
    with pytest.raises(ValueError):
        logic.retry_delay(failures, SCHEDULE, jitter=jitter)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("120", timedelta(seconds=120)),
    (" 0 ", timedelta(0)),
    ("Mon, 30 Nov 2026 12:01:30 GMT", timedelta(seconds=90)),
    ("Mon, 30 Nov 2026 11:00:00 GMT", timedelta(0)),  # in the past: now
    ("soon", None),
    ("-5", None),
    ("1.5", None),
    ("", None),
])
def test_parse_retry_after(header, expected):
    assert logic.parse_retry_after(header, NOW) == expected


# -- disabling -----------------------------------------------------------------------------

DAY = timedelta(days=1)


def test_a_success_stops_the_failure_clock():
    assert logic.after_attempt(True, NOW - 2 * DAY, NOW, DAY) == logic.EndpointHealth(None, False)


def test_the_first_failure_starts_the_clock():
    assert logic.after_attempt(False, None, NOW, DAY) == logic.EndpointHealth(NOW, False)


def test_failures_short_of_the_limit_keep_it_enabled():
    since = NOW - DAY + timedelta(seconds=1)
    assert logic.after_attempt(False, since, NOW, DAY) == logic.EndpointHealth(since, False)


def test_a_day_of_failures_disables_it():
    assert logic.after_attempt(False, NOW - DAY, NOW, DAY) == logic.EndpointHealth(NOW - DAY, True)
    assert logic.after_attempt(False, NOW - 3 * DAY, NOW, DAY).disable


def test_the_limit_is_configurable():
    assert logic.after_attempt(False, NOW - timedelta(seconds=10), NOW, timedelta(seconds=10)).disable
    assert not logic.after_attempt(False, NOW - timedelta(seconds=9), NOW, timedelta(seconds=10)).disable


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (299, True), (199, False), (301, False),
                                            (404, False), (429, False), (503, False), (None, False)])
def test_only_2xx_is_delivered(status, ok):
    assert logic.succeeded(status) is ok


# -- secrets and signatures ----------------------------------------------------------------

def test_a_new_secret_is_a_standard_webhooks_secret():
    secret = logic.new_secret()
    assert secret.startswith("whsec_") and len(logic.secret_key(secret)) == 32
    assert logic.new_secret() != secret


@pytest.mark.parametrize("secret", ["nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode(),
                                    "whsec_" + base64.b64encode(bytes(65)).decode()])
def test_a_bad_secret_is_refused(secret):
    with pytest.raises(WebhookInputError):
        logic.check_secret(secret, "standard")


def test_check_secret_generates_one_when_none_is_given_and_keeps_a_good_one():
    assert logic.check_secret(None, "standard").startswith("whsec_")
    assert logic.check_secret(SECRET, "standard") == SECRET
    assert logic.check_secret("a-plain-mlflow-secret", "mlflow") == "a-plain-mlflow-secret"
    with pytest.raises(WebhookInputError):
        logic.check_secret("short", "mlflow")


def test_standard_signature_verifies_with_the_reference_library():
    body = b'{"type":"model.promoted","data":{"name":"fraud"}}'
    timestamp = int(datetime.now(UTC).timestamp())
    headers = logic.signed_headers("standard", SECRET, "0b1e4f5e-0000-4000-8000-000000000001", timestamp, body)
    assert headers["content-type"] == "application/json"
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_mlflow_signature_is_mlflows_construction():
    import hashlib
    import hmac

    body = b'{"entity":"model_version","action":"created"}'
    headers = logic.signed_headers("mlflow", "an-mlflow-secret-1", "d1", 1700000000, body)
    expected = base64.b64encode(hmac.new(b"an-mlflow-secret-1", b"d1.1700000000." + body, hashlib.sha256)
                                .digest()).decode()
    assert headers["X-MLflow-Signature"] == f"v1,{expected}"
    assert headers["X-MLflow-Delivery-Id"] == "d1" and headers["X-MLflow-Timestamp"] == "1700000000"
    assert "webhook-signature" not in headers


# -- bodies --------------------------------------------------------------------------------

EVENT_ID = uuid.UUID("6f1c8e2a-3b4d-4c5e-8f60-718293a4b5c6")


def test_a_standard_endpoint_gets_the_cloudevent_as_published():
    raw = '{"id":"x","type":"model.promoted","signature":"abc"}'
    assert logic.messages_for("standard", (), "model.promoted", EVENT_ID, raw, {}, NOW) == \
        [logic.Message(EVENT_ID, raw)]


def _mlflow(topic, data, wanted=logic.MLFLOW_EVENTS):
    return [(json.loads(m.body), m.message_id)
            for m in logic.messages_for("mlflow", wanted, topic, EVENT_ID, "{}", {"data": data}, NOW)]


def test_a_first_version_is_a_registered_model_and_a_model_version():
    out = _mlflow("model.ingested", {"name": "fraud", "version": 1, "run_id": "r1",
                                     "artifact": {"uri": "s3://b/fraud/1/abc"}})
    assert [(b["entity"], b["action"]) for b, _ in out] == [("registered_model", "created"),
                                                           ("model_version", "created")]
    assert out[1][0]["data"] == {"name": "fraud", "version": "1", "source": "s3://b/fraud/1/abc", "run_id": "r1",
                                 "tags": {}, "description": None}
    assert out[0][0]["timestamp"] == NOW.isoformat()
    assert out[0][1] == EVENT_ID and out[1][1] != EVENT_ID  # each message its own stable id
    assert _mlflow("model.ingested", {"name": "fraud", "version": 1, "artifact": {}})[1][1] == out[1][1]


def test_a_later_version_is_only_a_model_version():
    out = _mlflow("model.ingested", {"name": "fraud", "version": 2, "artifact": {"uri": "s3://b/k"}})
    assert [(b["entity"], b["action"]) for b, _ in out] == [("model_version", "created")]
    assert out[0][1] == EVENT_ID


def test_production_is_the_champion_alias():
    created = _mlflow("model.promoted", {"name": "fraud", "version": 3, "to_stage": "production"})
    assert [b for b, _ in created] == [{"entity": "model_version_alias", "action": "created",
                                        "timestamp": NOW.isoformat(),
                                        "data": {"name": "fraud", "alias": "champion", "version": "3"}}]
    assert _mlflow("model.promoted", {"name": "fraud", "version": 3, "to_stage": "staging"}) == []
    deleted = _mlflow("model.demoted", {"name": "fraud", "version": 3, "from_stage": "production"})
    assert deleted[0][0]["data"] == {"name": "fraud", "alias": "champion"}
    assert _mlflow("model.demoted", {"name": "fraud", "version": 3, "from_stage": "staging"}) == []


def test_only_the_wanted_mlflow_events_are_sent():
    assert _mlflow("model.ingested", {"name": "f", "version": 1, "artifact": {}}, ["model_version.created"])[0][0][
        "entity"] == "model_version"
    assert _mlflow("model.promoted", {"name": "f", "version": 1, "to_stage": "production"},
                   ["model_version.created"]) == []
    assert _mlflow("registry.audit", {"name": "f"}) == []


@pytest.mark.parametrize(("given", "name"), [
    ({"entity": "MODEL_VERSION", "action": "CREATED"}, "model_version.created"),
    ({"entity": "model_version_alias", "action": "deleted"}, "model_version_alias.deleted"),
    ("registered_model.created", "registered_model.created"),
])
def test_mlflow_event_names(given, name):
    assert logic.mlflow_event_name(given) == name


@pytest.mark.parametrize("given", [{"entity": "prompt", "action": "created"}, {"entity": 1, "action": "x"}, 5,
                                   "model_version.updated"])
def test_unsupported_mlflow_events_are_refused(given):
    with pytest.raises(WebhookInputError):
        logic.mlflow_event_name(given)


def test_mlflow_events_map_to_the_topics_that_carry_them():
    assert logic.mlflow_topics(["model_version.created", "registered_model.created"]) == ("model.ingested",)
    assert logic.mlflow_topics(list(logic.MLFLOW_EVENTS)) == ("model.demoted", "model.ingested", "model.promoted")


def test_a_probe_says_it_is_one():
    standard = logic.probe_message("standard", NOW)
    assert json.loads(standard.body)["type"] == "webhook.test"
    assert json.loads(logic.probe_message("mlflow", NOW).body)["entity"] == "model_version"
    assert logic.probe_message("standard", NOW).message_id != standard.message_id
