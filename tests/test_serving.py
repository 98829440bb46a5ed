"""Serving hardening: the pyfunc model runs the installed code and verifies its weights; `cllm4rec serve`
answers MLflow's /invocations format; refused requests name the field, echo few ids, show no trace;
request limits keep one request's work bounded and the server responsive.

One smallest-schedule run (tiny LLaMA, no MLflow tracking) is shared by the module, and one
`cllm4rec serve` process on it by the HTTP tests; every wait on it has a timeout.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import stop_process_group, tiny_overrides
from trainer import cli
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError
from trainer.config_loading import load_config
from trainer.distributed import free_port
from trainer.pipeline import train
from trainer.serving import recommend_saved

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "finetune.epochs": 1, "data.reviews": False,
    "baselines.mostpop": False, "baselines.multivae": False, "baselines.ease": False, "tracking.mlflow": False,
}
LIMITS = {"max_records": 8, "max_history": 16}  # the served process's overrides (small, so tests stay fast)
ANSWER = ("user", "rank", "item", "score", "item_text")


@pytest.fixture(scope="module")
def run(tmp_path_factory, planted_dataset, tiny_llama) -> Path:
    """A trained run folder with model/ and pyfunc/."""
    out = tmp_path_factory.mktemp("serving") / "run"
    train(load_config(None, tiny_overrides(planted_dataset, tiny_llama, out, **SMALL)), progress=False)
    return out


def _damage(path: Path) -> None:
    """Flip one byte near the end of `path`."""
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _rows(data: dict) -> list[tuple]:
    return [(u, int(r), i, round(float(s), 4), t) for u, r, i, s, t in zip(*(data[k] for k in ANSWER))]


# ---- the pyfunc model: installed code, verified weights ------------------------------------------

def test_pyfunc_folder_holds_no_code_and_loads_the_installed_module(run: Path) -> None:
    import mlflow
    import pandas as pd

    folder = run / "pyfunc"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert all(f.endswith((".safetensors", ".json", ".yaml")) or f in ("MLmodel", "requirements.txt", "data/model/COMPLETE")
               for f in files), files
    assert "data/model/tables.safetensors" in files
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "trainer.pyfunc_model" and not flavor.get("code") and flavor["data"] == "data/model"
    assert flavor["config"] == {"top_m": 20, "max_top_m": 1000, "max_records": 256, "max_history": 512}
    model = mlflow.pyfunc.load_model(str(folder))
    assert Path(inspect.getfile(type(model._model_impl))) == REPO / "trainer" / "pyfunc_model.py"
    got = model.predict(pd.DataFrame({"user": ["u7", "u3"]}), params={"top_m": 3})
    assert _rows({k: got[k].tolist() for k in ANSWER}) == _rows(recommend_saved(run / "model", ["u7", "u3"], 3).to_pydict())


def test_damaged_weights_are_refused_by_both_servers(run: Path, tmp_path: Path, capsys) -> None:
    import mlflow

    folder = shutil.copytree(run / "pyfunc", tmp_path / "pyfunc")
    _damage(folder / "data" / "model" / "tables.safetensors")
    with pytest.raises(CheckpointError, match=r"tables\.safetensors is corrupted: its sha256 does not match"):
        mlflow.pyfunc.load_model(str(folder))
    assert cli.main(["serve", str(folder), "--port", str(free_port())]) == 2  # refused before it listens
    assert "tables.safetensors is corrupted" in capsys.readouterr().err


def test_pyfunc_predict_refuses_bad_requests_by_name(run: Path, monkeypatch) -> None:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(str(run / "pyfunc"), model_config=LIMITS)

    def refused(frame: pd.DataFrame, params: dict | None = None) -> MlflowException:
        with pytest.raises(MlflowException) as caught:
            model.predict(frame, params=params)
        body = json.loads(caught.value.serialize_as_json())
        assert "stack_trace" not in body and len(body["message"]) < 200, body
        return caught.value

    error = refused(pd.DataFrame({"user": ["u7"]}), {"top_m": 0})
    assert error.get_http_status_code() == 400
    assert error.message == "parameter top_m must be an integer in [1, 1000] (serving.max_top_m), got 0"
    assert "9 records, at most 8 per request (serving.max_records)" in refused(pd.DataFrame({"user": ["u7"] * 9})).message
    history = [f"g{i}" for i in range(16)]
    assert "record 0: 17 history ids, at most 16" in refused(pd.DataFrame({"user": ["u7"], "history": [history + ["g"]]})).message
    assert refused(pd.DataFrame({"user": ["u7"], "history": [history]})).message.startswith(
        "unknown item id(s) 'g0', 'g1', 'g2', 'g3', 'g4' … and 11 more: not in dataset")
    monkeypatch.setattr(model._model_impl.recommender, "recommend", lambda *a: 1 / 0)
    error = refused(pd.DataFrame({"user": ["u7"]}))
    assert error.get_http_status_code() == 500 and "division" not in error.message


# ---- cllm4rec serve --------------------------------------------------------------------------------

def _request(url: str, payload: object = None, timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of a GET (no payload) or a JSON POST."""
    data = None if payload is None else payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def served(run: Path, tmp_path_factory) -> str:
    """`cllm4rec serve` on the run's pyfunc folder with small limits; its base URL. Stopped with SIGTERM,
    which it must obey within 30 s."""
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    overrides = [a for key, value in LIMITS.items() for a in ("--set", f"serving.{key}={value}")]
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "trainer.cli", "serve", str(run / "pyfunc"), "--port", str(port),
                                   *overrides], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _request(f"{base}/ping", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "cllm4rec serve did not answer /ping within 120 s"
            time.sleep(0.5)
        yield base
    finally:
        if server.poll() is None and not stop_process_group(server):
            pytest.fail("cllm4rec serve ignored SIGTERM for 30 s")


def test_serve_answers_like_recommend(served: str, run: Path) -> None:
    assert _request(f"{served}/ping")[0] == 200 and _request(f"{served}/health")[0] == 200
    status, body = _request(f"{served}/invocations", {"dataframe_records": [{"user": "u7"}, {"user": "u3"}],
                                                      "params": {"top_m": 3}})
    assert status == 200, body
    records = json.loads(body)["predictions"]
    want = _rows(recommend_saved(run / "model", ["u7", "u3"], 3).to_pydict())
    assert _rows({k: [r[k] for r in records] for k in ANSWER}) == want
    status, body = _request(f"{served}/invocations", {"dataframe_records": [{"user": "u7", "history": [want[0][2]]}]})
    items = [r["item"] for r in json.loads(body)["predictions"]]
    assert status == 200 and len(items) == 20 and want[0][2] not in items  # default top_m: serving.top_m


@pytest.mark.parametrize("payload, status, message", [
    ({"dataframe_records": [{"user": "u7"}], "params": {"top_m": 0}}, 400,
     "parameter top_m must be an integer in [1, 1000] (serving.max_top_m), got 0"),
    ({"dataframe_records": [{"user": "u7"}], "params": {"top_m": -3}}, 400, "parameter top_m must be an integer"),
    ({"dataframe_records": [{"user": "u7"}], "params": {"top_m": "x" * 10_000}}, 400, "got 'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'"),
    ({"dataframe_records": [{"user": "u7"}], "params": {"top_k": 5}}, 400,
     "unknown parameter(s) 'top_k': the parameters are top_m"),
    ({"dataframe_records": [{"user": "u7", "histroy": ["i1"]}]}, 400, "record 0: unknown field(s) 'histroy'"),
    ({"dataframe_records": [{"user": "u7"}], "inputs": []}, 400, "unknown field(s) 'inputs'"),
    ({"dataframe_records": []}, 400, "'dataframe_records' must be a non-empty list of records"),
    (b"{not json", 400, "the body is not JSON"),
    ({"dataframe_records": [{"user": f"ghost{i}"} for i in range(8)]}, 400,
     "unknown user id(s) 'ghost0', 'ghost1', 'ghost2', 'ghost3', 'ghost4' … and 3 more: not in dataset planted (80 users)"),
    ({"dataframe_records": [{"user": "u7", "history": [f"g{i}" for i in range(16)]}]}, 400, "… and 11 more"),
    ({"dataframe_records": [{"user": f"ghost{i}"} for i in range(100_000)]}, 413,
     "100000 records, at most 8 per request (serving.max_records)"),
    ({"dataframe_records": [{"user": "u7", "history": ["i1"] * 100_000}]}, 413,
     "record 0: 100000 history ids, at most 16 (serving.max_history)"),
], ids=["top_m=0", "top_m<0", "top_m-long-string", "top_k", "record-field", "body-field", "no-records", "not-json",
        "8-unknown-users", "16-unknown-items", "1e5-records", "1e5-history"])
def test_serve_refuses_bad_requests_by_name(served: str, payload, status: int, message: str) -> None:
    got, body = _request(f"{served}/invocations", payload)
    error = json.loads(body)
    assert got == status and message in error["message"], error
    assert set(error) == {"error_code", "message"} and len(body) < 300 and "Traceback" not in body.decode()


def test_over_limit_request_leaves_the_server_responsive(served: str) -> None:
    """20,000 records are refused before any scoring; the next request is answered within seconds."""
    start = time.monotonic()
    status, body = _request(f"{served}/invocations", {"dataframe_records": [{"user": "u7"}] * 20_000}, timeout=10)
    assert status == 413 and json.loads(body)["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    status, body = _request(f"{served}/invocations", {"dataframe_records": [{"user": "u3"}], "params": {"top_m": 2}},
                            timeout=10)
    assert status == 200 and len(json.loads(body)["predictions"]) == 2
    assert time.monotonic() - start < 10


def test_serve_refuses_a_body_over_the_cap() -> None:
    from trainer.http_server import MAX_BODY_BYTES, _read_body
    from trainer.rest import RequestError

    class Body:  # a streamed request body one byte over the cap, with no Content-Length
        headers: dict[str, str] = {}

        async def stream(self):
            yield b" " * MAX_BODY_BYTES
            yield b" "

    with pytest.raises(RequestError, match="request body over") as caught:
        asyncio.run(_read_body(Body()))
    assert caught.value.status == 413


def test_serve_takes_only_serving_overrides(run: Path, capsys) -> None:
    assert cli.main(["serve", str(run / "model"), "--set", "eval.batch_size=3"]) == 2
    assert "only serving.* keys may be overridden" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'serving.top_m': must be at most serving.max_top_m = 10, got 20"):
        load_config(None, ["serving.max_top_m=10"])


def test_docs_say_serving_runs_the_loader_and_offer_cllm4rec_serve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tutorial = (REPO / "docs" / "tutorial.md").read_text(encoding="utf-8")
    for text in (readme, tutorial):
        assert "cllm4rec serve" in text and "executes its loader" in text and "trusted" in text
