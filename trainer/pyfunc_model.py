"""The MLflow pyfunc model of a trained CLLM4Rec run, defined from code ("models from code"): MLflow
runs this file when it loads the model; it builds the recommender from the saved model folder that
was logged with it as the artifact "model" (`trainer.serving.save_pyfunc`).

Request (`mlflow models serve`, POST /invocations, e.g. {"dataframe_records": [...]}): one record per
user with "user" (a raw user id of the training dataset) and, optionally, "history" (raw item ids the
user interacted with beyond the training data: added to the prompt and excluded from the answer).
Params: "top_m" (default: the model config's top_m, else 20).
Answer: one record per (user, rank): user, rank, item, score, item_text — best first, in request order.
An unknown user or item id is an INVALID_PARAMETER_VALUE error (HTTP 400) whose message names it.
"""
from __future__ import annotations

from pathlib import Path
import mlflow
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.pyfunc import PythonModel


class CLLM4RecRecommender(PythonModel):
    def load_context(self, context) -> None:
        from trainer.serving import Recommender

        self.recommender = Recommender.load(Path(context.artifacts["model"]))
        self.top_m = int((context.model_config or {}).get("top_m", 20))

    def predict(self, context, model_input, params=None):  # no type hints: the logged signature says it
        import pandas as pd

        from trainer.serving import UnknownIdError

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "user" not in frame.columns:
            raise MlflowException(f"each record needs a 'user' field (got columns {list(frame.columns)})",
                                  INVALID_PARAMETER_VALUE)
        users = [str(u) for u in frame["user"]]
        histories = None
        if "history" in frame.columns:
            histories = [_history(h, index) for index, h in enumerate(frame["history"])]
        top_m = int((params or {}).get("top_m", self.top_m))
        try:
            table = self.recommender.recommend(users, top_m, histories)
        except UnknownIdError as err:
            raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from err
        return table.to_pandas()


def _history(value, index: int) -> list[str]:
    """A record's history as raw item ids: a list (or array) of ids; missing or null means none."""
    import numpy as np

    if value is None or isinstance(value, float) and value != value:  # absent from this record: NaN
        return []
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(i, (str, int)) for i in value):
        return [str(i) for i in value]
    raise MlflowException(f"record {index}: 'history' must be a list of item ids, got {value!r}", INVALID_PARAMETER_VALUE)


mlflow.models.set_model(CLLM4RecRecommender())
