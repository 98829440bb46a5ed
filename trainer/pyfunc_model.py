"""The loader of the MLflow pyfunc model of a trained CLLM4Rec run (`trainer.serving.save_pyfunc`): the
model's MLmodel names this installed module as its `loader_module`, and MLflow calls `_load_pyfunc` with
the model's data, a copy of the saved model folder (safetensors, YAML, JSON), whose checksums are
verified before anything is loaded. The pyfunc model folder itself holds no code.

Request (`mlflow models serve`, POST /invocations, e.g. {"dataframe_records": [...]}): one record per
user with "user" (a raw user id of the training dataset) and, optionally, "history" (raw item ids the
user interacted with beyond the training data: added to the prompt and excluded from the answer).
Params: "top_m" (default: the model config's serving.top_m, 20 unless set).
Answer: one record per (user, rank): user, rank, item, score, item_text — best first, in request order.
Limits (config section `serving`, stated in the MLmodel as model_config; `mlflow.pyfunc.load_model(...,
model_config={...})` overrides them): max_records records, max_history history ids per record, top_m
in [1, max_top_m]; a request past one is refused before any scoring.
Errors: a refused request (an unknown id, a bad field, top_m out of range, a limit passed) is an
INVALID_PARAMETER_VALUE error (HTTP 400) whose message names the field and echoes at most 5 ids; any
other failure is an INTERNAL_ERROR (HTTP 500) without a stack trace, logged in full on the server.
MLflow drops parameters and record fields the signature does not declare (`top_k`, ...) before the
model sees them (parameters with a warning in its log); `cllm4rec serve` refuses them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, MlflowException

from trainer.rest import RequestError, answer
from trainer.serving import Recommender

log = logging.getLogger(__name__)


class PyfuncRecommender:
    """What `mlflow.pyfunc.load_model` wraps: `predict` answers one request of records."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Records (a DataFrame, one row per user) and params → the answer rows, best first per user."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            table = answer(self.recommender, frame.to_dict("records"), params)
        except RequestError as err:
            raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from err
        except Exception as err:
            log.exception("predict failed")
            raise MlflowException("internal error while scoring: see the server log", INTERNAL_ERROR) from err
        return table.to_pandas()


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> PyfuncRecommender:
    """MLflow's entry point: verify and load the saved model folder at `data_path`; `model_config`
    holds the serving limits."""
    return PyfuncRecommender(Recommender.load(Path(data_path), serving=model_config))
