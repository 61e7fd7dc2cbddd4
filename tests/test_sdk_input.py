"""SDK input at the call: whatever a training loop passes (numpy/torch-like scalars, 0-d arrays) is converted
to plain numbers and stored; bad input raises at the call, naming the key and the rule, and spoils nothing
else of the run. End to end against a real `kiseki server`."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

import kiseki
from kiseki import fluent
from kiseki.models import MAX_KEY_LENGTH, MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH


class Index:
    """An integer the way torch and numpy integers look to Python: only `__index__`."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


class Real:
    """A real number the way a torch 0-d tensor looks to Python: `__float__` (and an ndim of 0)."""

    ndim = 0

    def __init__(self, x: float) -> None:
        self.x = x

    def __float__(self) -> float:
        return self.x


class Vector:
    """A tensor of shape (3,): not a scalar."""

    ndim = 1
    shape = (3,)

    def __float__(self) -> float:
        return 1.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sdk(tracking_uri: str):
    kiseki.set_tracking_uri(tracking_uri)
    kiseki.set_experiment(unique("input"))
    yield kiseki
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None


# (value, step) as a training loop produces them -> (stored value, stored step)
GOOD = [
    pytest.param(0.5, 1, 0.5, 1, id="float-int"),
    pytest.param(np.float32(0.25), np.int64(2), 0.25, 2, id="np.float32-np.int64"),
    pytest.param(np.float64(1.5), np.int32(3), 1.5, 3, id="np.float64-np.int32"),
    pytest.param(np.int64(7), np.uint8(4), 7.0, 4, id="np.int64-np.uint8"),
    pytest.param(np.bool_(True), np.bool_(True), 1.0, 1, id="np.bool_"),
    pytest.param(True, True, 1.0, 1, id="bool"),
    pytest.param(np.array(3.0), np.array(6), 3.0, 6, id="0-d arrays"),
    pytest.param(Real(2.5), Index(8), 2.5, 8, id="__float__-__index__"),
    pytest.param(4, 9.0, 4.0, 9, id="int-whole float step"),
    pytest.param(np.float64("nan"), np.float64(10.0), math.nan, 10, id="nan-np.float64 whole step"),
    pytest.param(float("inf"), -(2**63), math.inf, -(2**63), id="inf-int64 min"),
]


@pytest.mark.parametrize(("value", "step", "stored_value", "stored_step"), GOOD)
def test_numbers_from_a_training_loop_are_stored(sdk, value, step, stored_value, stored_step):
    with sdk.start_run() as run:
        sdk.log_metric("loss", value, step=step, timestamp=np.int64(1_700_000_000_000))
        sdk.log_metric("after", 1.0)
    history = sdk.Client().get_metric_history(run.info.run_id, "loss")
    assert len(history) == 1, "the point (and its whole batch) must be stored"
    point = history[0]
    assert point.step == stored_step
    assert point.timestamp == 1_700_000_000_000
    assert point.value == stored_value or (math.isnan(stored_value) and math.isnan(point.value))
    assert sdk.get_run(run.info.run_id).data.metrics["after"] == 1.0


def test_numpy_steps_of_a_long_loop_lose_nothing(sdk):
    """The reported failure: numpy steps made the whole queued body unserialisable."""
    with sdk.start_run() as run:
        for step in np.arange(3000):
            sdk.log_metric("loss", np.float32(step) / 2, step=step)
        sdk.log_metrics({"acc": np.float64(0.9), "f1": np.array(0.8)}, step=np.int64(2999))
    client = sdk.Client()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(3000))
    assert sdk.get_run(run.info.run_id).data.metrics == {"loss": 1499.5, "acc": 0.9, "f1": 0.8}


BAD = [
    # (key, value, step, timestamp), the error type, words the message must contain
    pytest.param("loss", None, 1, None, TypeError, ["'loss'", "must be a number", "None"], id="value None"),
    pytest.param("loss", "abc", 1, None, TypeError, ["'loss'", "must be a number", "abc"], id="value str"),
    pytest.param("loss", 1 + 2j, 1, None, TypeError, ["'loss'", "real number"], id="value complex"),
    pytest.param("loss", np.array([1.0, 2.0]), 1, None, TypeError, ["'loss'", "scalar", "(2,)"], id="array"),
    pytest.param("loss", Vector(), 1, None, TypeError, ["'loss'", "scalar", "(3,)"], id="tensor (3,)"),
    pytest.param("loss", 10**400, 1, None, ValueError, ["'loss'", "too large"], id="value overflow"),
    pytest.param(
        "k" * (MAX_KEY_LENGTH + 1),
        1.0,
        1,
        None,
        ValueError,
        ["kkkk", "251 characters", "at most 250"],
        id="key too long",
    ),
    pytest.param("", 1.0, 1, None, ValueError, ["metric key ''", "at least 1"], id="key empty"),
    pytest.param("a\x00b", 1.0, 1, None, ValueError, ["'a\\x00b'", "NUL"], id="key NUL"),
    pytest.param(5, 1.0, 1, None, TypeError, ["key must be a string", "int 5"], id="key int"),
    pytest.param(None, 1.0, 1, None, TypeError, ["key must be a string", "None"], id="key None"),
    pytest.param(
        "loss", 1.0, 2.5, None, ValueError, ["step", "'loss'", "whole number", "2.5"], id="step 2.5"
    ),
    pytest.param("loss", 1.0, np.float32(0.5), None, ValueError, ["step", "whole number"], id="step np 0.5"),
    pytest.param("loss", 1.0, float("nan"), None, ValueError, ["step", "whole number"], id="step nan"),
    pytest.param(
        "loss", 1.0, 2**63, None, ValueError, ["step", "'loss'", "9223372036854775807"], id="step > int64"
    ),
    pytest.param(
        "loss", 1.0, np.uint64(2**64 - 1), None, ValueError, ["step", "between"], id="step uint64 max"
    ),
    pytest.param("loss", 1.0, "3", None, TypeError, ["step", "must be a number"], id="step str"),
    pytest.param("loss", 1.0, 1, -1, ValueError, ["timestamp", "'loss'", "between 0"], id="timestamp < 0"),
    pytest.param("loss", 1.0, 1, 1.5, ValueError, ["timestamp", "whole number"], id="timestamp 1.5"),
]


@pytest.mark.parametrize(("key", "value", "step", "timestamp", "kind", "words"), BAD)
def test_bad_input_raises_at_the_call_and_spoils_nothing(sdk, key, value, step, timestamp, kind, words):
    with sdk.start_run() as run:
        sdk.log_metric("m", 1.0, step=0)
        with pytest.raises(kiseki.InvalidInput) as info:
            sdk.log_metric(key, value, step=step, timestamp=timestamp)
        sdk.log_metric("m", 2.0, step=1)
    assert isinstance(info.value, kind), f"{type(info.value).__mro__} should include {kind}"
    for word in words:
        assert word in str(info.value), f"{word!r} missing from the message: {info.value}"
    assert "metric_columns" not in str(info.value), "no internal field paths in the message"
    stored = sdk.Client().get_metric_history(run.info.run_id, "m")
    assert [(m.step, m.value) for m in stored] == [(0, 1.0), (1, 2.0)], "points before and after are kept"
    assert sdk.get_run(run.info.run_id).info.status == "FINISHED"


def test_log_metrics_is_all_or_nothing(sdk):
    with sdk.start_run() as run:
        with pytest.raises(kiseki.InvalidInput, match="'bad'"):
            sdk.log_metrics({"good": 1.0, "bad": None}, step=1)
        with pytest.raises(kiseki.InvalidInput, match=r"step of metric 'good'.*whole number"):
            sdk.log_metrics({"good": 1.0, "other": 2.0}, step=0.5)
        with pytest.raises(TypeError, match="mapping"):
            sdk.log_metrics([("good", 1.0)])  # type: ignore[arg-type]
        sdk.log_metrics({"good": 2.0}, step=2)
    assert [(m.step, m.value) for m in sdk.Client().get_metric_history(run.info.run_id, "good")] == [(2, 2.0)]


def test_params_and_tags_are_checked_at_the_call(sdk):
    with sdk.start_run() as run:
        sdk.log_param("lr", np.float32(0.5))
        sdk.log_params({"layers": np.int64(3), "name": None})
        with pytest.raises(kiseki.InvalidInput, match=r"param key 'x{57}'… \(251 characters\).*at most 250"):
            sdk.log_param("x" * (MAX_KEY_LENGTH + 1), 1)
        with pytest.raises(
            kiseki.InvalidInput, match=f"value of param 'big'.*at most {MAX_PARAM_VALUE_LENGTH}"
        ):
            sdk.log_param("big", "v" * (MAX_PARAM_VALUE_LENGTH + 1))
        with pytest.raises(kiseki.InvalidInput, match=r"param key 'b\\x00'.*NUL"):
            sdk.log_params({"a": 1, "b\x00": 2})  # all or nothing: 'a' is not logged either
        with pytest.raises(kiseki.InvalidInput, match="tag key ''"):
            sdk.set_tag("", "x")
        with pytest.raises(kiseki.InvalidInput, match=f"value of tag 'note'.*at most {MAX_TAG_VALUE_LENGTH}"):
            sdk.set_tag("note", "n" * (MAX_TAG_VALUE_LENGTH + 1))
        with pytest.raises(TypeError, match="tag key must be a string"):
            sdk.set_tags({1: "x"})
        sdk.set_tags({"stage": "dev", "epoch": np.int64(2)})
    stored = sdk.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED", "refused input at the call does not fail the run"
    assert stored.data.params == {"lr": "0.5", "layers": "3", "name": "None"}
    assert {k: v for k, v in stored.data.tags.items() if not k.startswith("kiseki.")} == {
        "stage": "dev",
        "epoch": "2",
    }


def test_client_methods_check_and_convert(sdk, tracking_uri):
    client = kiseki.Client(tracking_uri)
    run_id = client.create_run(sdk.set_experiment(unique("client")).experiment_id).info.run_id
    client.log_metric(run_id, "m", np.float32(1.5), step=np.int64(1), timestamp=np.int64(5))
    with pytest.raises(kiseki.InvalidInput, match=r"'m'.*whole number"):
        client.log_metric(run_id, "m", 1.0, step=0.5)
    with pytest.raises(kiseki.InvalidInput, match="param key"):
        client.log_param(run_id, "", 1)
    with pytest.raises(kiseki.InvalidInput, match="tag key"):
        client.set_tag(run_id, "t" * 300, 1)
    client.log_metric(run_id, "m", 2, step=2)
    client.flush()
    history = client.get_metric_history(run_id, "m")
    assert [(m.step, m.value, m.timestamp) for m in history][:1] == [(1, 1.5, 5)]
    assert len(history) == 2
    client.close()


async def test_async_client_methods_check_and_convert(tracking_uri):
    async with kiseki.AsyncClient(tracking_uri) as client:
        experiment = await client.get_or_create_experiment(unique("async-input"))
        run_id = (await client.create_run(experiment.experiment_id)).info.run_id
        await client.log_metric(run_id, "m", np.float32(0.5), step=np.int64(3))
        with pytest.raises(kiseki.InvalidInput, match=r"'m'.*must be a number"):
            await client.log_metric(run_id, "m", None)  # type: ignore[arg-type]
        with pytest.raises(kiseki.InvalidInput, match=r"param key 'p{57}'…"):
            await client.log_param(run_id, "p" * 260, 1)
        with pytest.raises(kiseki.InvalidInput, match="tag key"):
            await client.set_tag(run_id, "", 1)
        await client.log_param(run_id, "ok", np.int64(1))
        await client.flush()
        assert [(m.step, m.value) for m in await client.get_metric_history(run_id, "m")] == [(3, 0.5)]
        assert (await client.get_run(run_id)).data.params == {"ok": "1"}
