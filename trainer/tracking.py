"""MLflow tracking for the training recipes: one parent run per training, nested runs per phase.

Everything goes through an explicit :class:`mlflow.MlflowClient` bound to this tracker's URI, so
several trackers with different stores can live in one process without global MLflow state.
A disabled tracker (MLflow switched off, or a non-zero distributed rank) never imports MLflow and
turns every method into a no-op, so callers never branch.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from trainer.config import flatten

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["Tracker", "mlflow_params", "safe_key"]

logger = logging.getLogger(__name__)

MAX_PARAM_VALUE_CHARS = 6000  # MLflow's limit on a param value
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch call
STEP_FLUSH_SECONDS = 15.0  # queued per-step metrics are written at least this often
TRUNCATION_MARKER = "...[truncated]"
PARENT_TAG = "mlflow.parentRunId"
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def safe_key(name: str) -> str:
    """Make ``name`` a valid MLflow metric/param key: ``recall@20`` becomes ``recall_at_20``."""
    return _INVALID_KEY_CHARS.sub("_", name.replace("@", "_at_"))


def mlflow_params(params: Mapping[str, Any]) -> dict[str, str]:
    """`flatten`ed params with MLflow-safe keys and string values cut to MLflow's value limit."""
    return {safe_key(key): _cut(str(value)) for key, value in flatten(params).items()}


def _cut(text: str) -> str:
    """`text`, or its start and TRUNCATION_MARKER when longer than MAX_PARAM_VALUE_CHARS."""
    if len(text) <= MAX_PARAM_VALUE_CHARS:
        return text
    return text[: MAX_PARAM_VALUE_CHARS - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _sqlite_artifact_root(uri: str) -> Path | None:
    """Return ``<db folder>/mlartifacts`` for a ``sqlite:///`` URI, else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return db_path.parent / "mlartifacts"


class Tracker:
    """A parent MLflow run with nested phase runs; a no-op when ``enabled`` is False."""

    def __init__(
        self, enabled: bool, tracking_uri: str | None, experiment: str, default_store: Path
    ) -> None:
        """Bind to ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<default_store>``.

        When enabled, the store is opened and the experiment created (with a local artifact
        folder next to a SQLite database) right away.
        """
        self.enabled = enabled
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self._uri = tracking_uri or env_uri or f"sqlite:///{Path(default_store).resolve()}"
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        self._phase_id: str | None = None
        self._ended = False
        self._queued: list[Any] = []  # per-step Metric entries not yet written
        self._queued_run: str | None = None
        self._queued_since = 0.0
        if not enabled:
            return
        import mlflow

        if not (tracking_uri or env_uri):
            Path(default_store).resolve().parent.mkdir(parents=True, exist_ok=True)
        self._client = mlflow.MlflowClient(tracking_uri=self._uri)
        self._experiment_id = self._get_or_create_experiment(experiment)

    @classmethod
    def of_config(cls, config: Any, enabled: bool = True) -> Tracker:
        """The tracker a training config names (`config.tracking`; default store `<parent of output_dir>/mlflow.db`)."""
        tracking = config.tracking
        return cls(tracking.mlflow and enabled, tracking.tracking_uri, tracking.experiment,
                   config.resolved_output_dir().parent / "mlflow.db")

    def _get_or_create_experiment(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it (with a local artifact root) if absent.

        Safe when several runs start at once on one store: the one that loses the race to create the
        experiment takes the winner's id.
        """
        import mlflow

        assert self._client is not None
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self._client.restore_experiment(found.experiment_id)
            return found.experiment_id
        root = _sqlite_artifact_root(self._uri)
        location = None
        if root is not None:
            (root / name).mkdir(parents=True, exist_ok=True)
            location = (root / name).as_uri()
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another process (a second run started at the same moment) created it in between.
            raced = self._client.get_experiment_by_name(name)
            if raced is None:
                raise
            return raced.experiment_id

    @property
    def tracking_uri(self) -> str:
        """The resolved tracking URI (resolved even when disabled)."""
        return self._uri

    @property
    def experiment_id(self) -> str | None:
        """The experiment id, or ``None`` when disabled."""
        return self._experiment_id

    @property
    def run_id(self) -> str | None:
        """The parent run id (kept after :meth:`end`), or ``None`` before :meth:`start`/disabled."""
        return self._run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log flattened ``params`` to ``run_id`` in MLflow-sized batches."""
        from mlflow.entities import Param

        assert self._client is not None
        entries = [Param(k, v) for k, v in mlflow_params(params).items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])

    def start(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Create the parent run with flattened ``params``; return its id (``None`` if disabled)."""
        if self._client is None:
            return None
        if self._run_id is not None:
            raise RuntimeError(f"tracker already started parent run {self._run_id}")
        run = self._client.create_run(self._experiment_id, run_name=run_name, tags=dict(tags or {}))
        self._run_id = run.info.run_id
        self._log_params(self._run_id, params)
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened ``params`` to the parent run (after :meth:`start`)."""
        if self._client is not None and self._run_id is not None:
            self._log_params(self._run_id, params)

    def log_input(self, name: str, digest: str, source: str, profile: str, context: str) -> None:
        """Record a local input of the parent run (MLflow's dataset inputs): ``name``, a ``digest`` of its
        content, its path ``source``, a JSON ``profile`` and the ``context`` it was used in."""
        if self._client is None or self._run_id is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name, digest[:36], "local", source, profile=profile)
        self._client.log_inputs(self._run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    @contextmanager
    def phase(self, name: str, params: Mapping[str, Any] | None = None) -> Iterator[str | None]:
        """Run the block inside a child run of the parent (tag ``phase=<name>``); yield its id.

        The child run receives :meth:`log_metrics` calls until the block exits; it ends FINISHED,
        or FAILED when the block raises (the exception propagates).
        """
        if self._client is None:
            yield None
            return
        if self._run_id is None or self._ended:
            raise RuntimeError("Tracker.phase() needs an active parent run (call start() first)")
        run = self._client.create_run(
            self._experiment_id, run_name=name, tags={PARENT_TAG: self._run_id, "phase": name}
        )
        child_id = run.info.run_id
        if params:
            self._log_params(child_id, params)
        previous, self._phase_id = self._phase_id, child_id
        try:
            yield child_id
        except BaseException:
            self.flush()
            self._client.set_terminated(child_id, status="FAILED")
            raise
        else:
            self.flush()
            self._client.set_terminated(child_id, status="FINISHED")
        finally:
            self._phase_id = previous

    def _target(self, phase_run: bool) -> str | None:
        """The run to log to: the active phase if requested and present, else the parent."""
        if self._ended:
            return None
        if phase_run and self._phase_id is not None:
            return self._phase_id
        return self._run_id

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False
    ) -> None:
        """Log ``metrics`` at ``step`` to the active phase (or the parent); skip non-finite values.

        Keys go through :func:`safe_key`, so ``recall@20`` is stored as ``recall_at_20``.
        """
        run_id = self._target(phase_run=not parent)
        if self._client is None or run_id is None:
            return
        self._write(run_id, self._entries(metrics, step))

    def log_step_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue per-step ``metrics`` at ``step`` for the active phase (or the parent), as
        :meth:`log_metrics` would log them. The queue is written in one batch when it holds
        ``MAX_METRICS_PER_BATCH`` entries, ``STEP_FLUSH_SECONDS`` after its first entry, when the
        target run changes, and when the phase or the parent run ends (:meth:`flush`)."""
        run_id = self._target(phase_run=True)
        if self._client is None or run_id is None:
            return
        if self._queued_run != run_id:
            self.flush()
            self._queued_run = run_id
        if not self._queued:
            self._queued_since = time.monotonic()
        self._queued += self._entries(metrics, step)
        if len(self._queued) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._queued_since >= STEP_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the queued per-step metrics."""
        if self._queued and self._queued_run is not None:
            self._write(self._queued_run, self._queued)
        self._queued = []

    def _entries(self, metrics: Mapping[str, float], step: int | None) -> list[Any]:
        """MLflow Metric entries of ``metrics`` at ``step``, keys made safe, non-finite values skipped."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            number = float(value)
            if not math.isfinite(number):
                logger.warning("skipping non-finite metric %s=%s (step %s)", key, number, step)
                continue
            entries.append(Metric(safe_key(key), number, timestamp, int(step or 0)))
        return entries

    def _write(self, run_id: str, entries: list[Any]) -> None:
        assert self._client is not None
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=entries[start : start + MAX_METRICS_PER_BATCH])

    def log_artifact(
        self, path: Path, artifact_path: str | None = None, phase_run: bool = False
    ) -> None:
        """Upload a file or a whole folder to the parent run (or the active phase)."""
        run_id = self._target(phase_run)
        if self._client is None or run_id is None:
            return
        if Path(path).is_dir():
            self._client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], filename: str, phase_run: bool = False) -> None:
        """Store ``obj`` as JSON or YAML (chosen by ``filename``'s extension) as an artifact."""
        run_id = self._target(phase_run)
        if self._client is not None and run_id is not None:
            self._client.log_dict(run_id, dict(obj), filename)

    def log_text(self, text: str, filename: str, phase_run: bool = False) -> None:
        """Store ``text`` as the artifact ``filename``."""
        run_id = self._target(phase_run)
        if self._client is not None and run_id is not None:
            self._client.log_text(run_id, text, filename)

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the parent run with ``status``; idempotent."""
        if self._client is None or self._run_id is None or self._ended:
            return
        self.flush()
        self._client.set_terminated(self._run_id, status=status)
        self._ended = True

    def __enter__(self) -> Tracker:
        """Return self; the parent run is still created by :meth:`start`."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the parent run, FAILED when the block raised."""
        self.end("FAILED" if exc_type is not None else "FINISHED")
