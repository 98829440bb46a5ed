"""One recommendation request, checked against the model's serving limits (config section `serving`),
then answered; shared by `cllm4rec serve` (`trainer/http_server.py`) and the MLflow pyfunc model
(`trainer/pyfunc_model.py`).

A request is MLflow's `/invocations` JSON: {"dataframe_records": [{"user": ..., "history": [...]}, ...],
"params": {"top_m": M}}. Every error message names the field at fault and echoes at most a few ids,
each cut short, so an error body stays small whatever the request held.
"""
from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from data_prep.errors import DataPrepError
from trainer.config import ServingConfig

if TYPE_CHECKING:
    from trainer.serving import Recommender

SHOWN = 5  # ids echoed in an error message at most
RECORD_FIELDS = ("user", "history")
PARAMS = ("top_m",)


class RequestError(DataPrepError):
    """A request the server refuses: `status` is its HTTP status (400, or 413 past a limit)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = 40
    short.maxlist = short.maxtuple = short.maxdict = SHOWN
    return short


_SHORT = _short_repr()


def brief(value: Any) -> str:
    """repr of `value` cut to about 40 characters (strings) or 5 elements (lists)."""
    return _SHORT.repr(value)


def echo_ids(ids: list[Any]) -> str:
    """The first few ids, each cut short, then '… and N more': "'a', 'b' … and 99998 more"."""
    shown = ", ".join(brief(i) for i in ids[:SHOWN])
    return shown + (f" … and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def parse_top_m(params: Any, limits: ServingConfig) -> int:
    """The request's top_m (default limits.top_m); unknown parameters and top_m outside
    [1, limits.max_top_m] are RequestErrors naming them."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise RequestError(f"'params' must be an object such as {{\"top_m\": 10}}, got {brief(params)}")
    unknown = [key for key in params if key not in PARAMS]
    if unknown:
        raise RequestError(f"unknown parameter(s) {echo_ids(unknown)}: the parameters are {', '.join(PARAMS)}")
    top_m = params.get("top_m", limits.top_m)
    if isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or not 1 <= top_m <= limits.max_top_m:
        raise RequestError(f"parameter top_m must be an integer in [1, {limits.max_top_m}] "
                           f"(serving.max_top_m), got {brief(top_m)}")
    return int(top_m)


def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int, np.integer)) and not isinstance(value, bool)


def _history(value: Any, index: int, limit: int) -> list[str]:
    """A record's history as raw item ids: a list (or array) of ids; missing, null or NaN means none."""
    if value is None or isinstance(value, float) and value != value:  # NaN: absent from this record in a DataFrame
        return []
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise RequestError(f"record {index}: 'history' must be a list of item ids, got {brief(value)}")
    if len(value) > limit:
        raise RequestError(f"record {index}: {len(value)} history ids, at most {limit} (serving.max_history)", 413)
    bad = [i for i in value if not _is_id(i)]
    if bad:
        raise RequestError(f"record {index}: 'history' must be a list of item ids, got {echo_ids(bad)}")
    return [str(i) for i in value]


def _record(record: Any, index: int, limits: ServingConfig) -> tuple[str, list[str]]:
    """(raw user id, history) of one record."""
    if not isinstance(record, dict):
        raise RequestError(f"record {index} must be an object such as {{\"user\": \"42\"}}, got {brief(record)}")
    unknown = [key for key in record if key not in RECORD_FIELDS]
    if unknown:
        raise RequestError(f"record {index}: unknown field(s) {echo_ids(unknown)}: the fields are "
                           f"{', '.join(RECORD_FIELDS)}")
    if not _is_id(record.get("user")):
        raise RequestError(f"record {index}: 'user' must be a user id, got {brief(record.get('user'))}")
    return str(record["user"]), _history(record.get("history"), index, limits.max_history)


def parse_records(records: Any, limits: ServingConfig) -> tuple[list[str], list[list[str]]]:
    """(raw user ids, histories) of 1 to limits.max_records records, checked before anything is scored."""
    if not isinstance(records, list) or not records:
        raise RequestError(f"'dataframe_records' must be a non-empty list of records, got {brief(records)}")
    if len(records) > limits.max_records:
        raise RequestError(f"{len(records)} records, at most {limits.max_records} per request "
                           f"(serving.max_records)", 413)
    users, histories = zip(*(_record(record, i, limits) for i, record in enumerate(records)))
    return list(users), list(histories)


def answer(recommender: Recommender, records: Any, params: Any) -> pa.Table:
    """The answer table (user, rank, item, score, item_text) of one request; RequestError if refused."""
    limits = recommender.config.serving
    top_m = parse_top_m(params, limits)
    users, histories = parse_records(records, limits)
    return recommender.recommend(users, top_m, histories)
