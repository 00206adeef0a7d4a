"""Each protocol's status table, keyed on RegistryError.kind: the statuses every error class
gets, and a kind no table lists taking its parent class's status."""

from __future__ import annotations

from app import errors
from app.openai import errors as openai_errors
from app.v2 import errors as v2_errors
from registry import errors as core


def test_the_native_statuses_of_every_registry_error() -> None:
    expected = {
        core.RegistryError: 500,
        core.ConfigError: 422,
        core.UnknownModel: 404,
        core.BadInput: 422,
        core.UnsupportedInput: 415,
        core.ModelTooLarge: 507,
        core.InferenceError: 500,
        core.InferenceTimeout: 504,
        core.GenerationTimeout: 504,
        core.WorkerDied: 502,
        core.Unavailable: 503,
        core.ModelFailed: 503,
        core.LoadPending: 503,
        core.QueueFull: 503,
        core.LoadQueueFull: 503,
        core.BusyQueueFull: 503,
        core.CapacityExceeded: 503,
        core.ShuttingDown: 503,
    }
    assert {cls: errors.status_of(cls) for cls in expected} == expected


def test_a_kind_no_table_lists_takes_its_parents_status() -> None:
    class Throttled(core.Unavailable):
        kind = "throttled"

    assert errors.status_of(Throttled("slow down")) == 503
    assert errors.status_of(Throttled, v2_errors.STATUS) == 503


def test_each_protocol_refuses_a_malformed_request_with_its_own_status() -> None:
    tensor = v2_errors.TensorError("bad shape")
    request = openai_errors.RequestError("bad field", "model")
    assert errors.status_of(tensor, v2_errors.STATUS) == 400
    assert errors.status_of(request, openai_errors.STATUS) == 400
    assert errors.status_of(tensor) == 422  # a BadInput to the native API
    assert errors.status_of(core.BadInput("x"), v2_errors.STATUS) == 422
    assert errors.status_of(core.UnknownModel("m", []), openai_errors.STATUS) == 404
