"""``lightning-sep tune`` (``make tune``): search spaces, studies, MLflow records, resumption, failures,
pruning and the seeded sampler -- real Optuna studies of real (tiny) trainings on the embedded TIMIT corpus.

Every trial here trains 2 epochs of 4 batches (``limit_train_batches``, a Trainer argument of the space
file's ``trainer`` section), validating on 2 batches: a few seconds a trial on one CPU thread.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch  # noqa: F401 - imported now: its log handler must not hold a test's closed capsys stream
import optuna
import pytest
import yaml
from conftest import EASY_FRONT_END, config_args, easy_datamodule, free_port, one_torch_thread

from lightning_sep.errors import LightningSepError

EXPERIMENT = "lightning-sep-tune"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: each trial's budget: 2 epochs of 4 training batches, 2 validation batches
BUDGET = {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2}
#: the VAE's defaults (conf/model/vae.yaml) lie inside this space: a new study starts with them
VAE_SPACE = {
    "trainer": BUDGET,
    "sampler": {"n_startup_trials": 2},
    "pruner": {"name": "none"},
    "space": {"latent_size": {"low": 16, "high": 128, "log": True}, "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


# -- helpers ------------------------------------------------------------------------------------------------------------
def write_space(path: Path, body) -> Path:
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def tune_error(capsys, *args: str) -> str:
    """``lightning-sep tune ARGS`` must exit 2 with one ``lightning-sep: error:`` line and no traceback."""
    from lightning_sep.cli import main

    capsys.readouterr()
    assert main(["tune", *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lightning-sep: error: ")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return lines[0]


def tune_runs(uri: str, role: str | None = None, study: str | None = None) -> list:
    """The runs of experiment ``lightning-sep-tune`` in the MLflow store ``uri`` (optionally by tags)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    if role:
        runs = [r for r in runs if r.data.tags.get("tune.role") == role]
    if study:
        runs = [r for r in runs if r.data.tags.get("optuna.study_name") == study]
    return runs


def assert_nothing_created(tmp_path: Path) -> None:
    """No study in the test's Optuna storage, no run in its MLflow store, no results folder."""
    optuna_db = tmp_path / "mlruns" / "optuna.db"
    if optuna_db.exists():
        assert optuna.study.get_all_study_names(storage=f"sqlite:///{optuna_db}") == []
    mlflow_db = tmp_path / "mlruns" / "mlflow.db"
    if mlflow_db.exists():
        assert tune_runs(f"sqlite:///{mlflow_db}") == []
    assert not (tmp_path / "mlruns" / "tune").exists()


def use_store(monkeypatch, ns) -> None:
    """Point this test's environment at a module fixture's MLflow store and Optuna storage."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ns.uri)
    monkeypatch.setenv("OPTUNA_STORAGE", ns.storage)


# -- 1. bad input: a clear error before any trial ------------------------------------------------------------------------
VAE_OK = {"latent_size": {"low": 16, "high": 128, "log": True}}
BAD_SPACES = [
    # (id, model, space file body, substrings of the message)
    ("unknown-model-arg", "vae", {"space": {"latent_sizes": {"low": 16, "high": 64}}},
     ["space.latent_sizes", "MODEL=vae (VAE) has no argument 'latent_sizes'", "Its arguments:", "latent_size",
      "segment_frames", "hidden_sizes", "lr"]),
    ("linked-arg", "vae", {"space": {"front_end": {"choices": [1, 2]}}}, ["has no argument 'front_end'"]),
    ("unknown-data-arg", "vae", {"space": {**VAE_OK, "data.batch_sizes": {"choices": [8, 16]}}},
     ["space.data.batch_sizes", "DATA=timit (TIMITDataModule) has no argument 'batch_sizes'", "batch_size"]),
    ("unknown-trainer-arg", "vae", {"space": {"trainer.gradient_clip": {"low": 0.5, "high": 2.0}}},
     ["space.trainer.gradient_clip", "lightning's Trainer has no argument 'gradient_clip'", "gradient_clip_val"]),
    ("unknown-prefix", "vae", {"space": {"foo.x": {"low": 1, "high": 2}}}, ["space.foo.x", "prefix 'foo' unknown"]),
    ("empty-range", "vae", {"space": {"latent_size": {"low": 128, "high": 16}}},
     ["space.latent_size", "[128, 16] is empty (low > high)"]),
    ("empty-choices", "vae", {"space": {"hidden_sizes": {"choices": []}}}, ["space.hidden_sizes", "choices is empty"]),
    ("log-low-zero", "vae", {"space": {"lr": {"low": 0.0, "high": 0.01, "log": True}}},
     ["space.lr", "a log range needs low > 0"]),
    ("missing-high", "vae", {"space": {"latent_size": {"low": 16}}}, ["space.latent_size", "needs both low and high"]),
    ("unknown-key", "vae", {"space": {"latent_size": {"low": 16, "high": 64, "logscale": True}}},
     ["space.latent_size", "unknown key(s) logscale"]),
    ("yaml-1e-4-is-a-string", "vae", "space:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n",
     ["space.lr", "low='1e-4' must be a finite number", "write it with a dot, e.g. 1.0e-4"]),
    ("step-not-dividing-range", "vae", {"space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "step": 1.0e-3}}},
     ["space.lr", "is not a whole number of steps of 0.001"]),
    ("unknown-section", "vae", {"spaces": {"latent_size": {"low": 16, "high": 64}}, "space": VAE_OK},
     ["unknown section(s) spaces"]),
    ("no-space", "vae", {"trainer": {"max_epochs": 2}}, ["the space section is empty"]),
    ("unknown-trainer-budget", "vae", {"trainer": {"max_epoch": 2}, "space": VAE_OK},
     ["trainer.max_epoch is not an argument of lightning's Trainer"]),
    ("unknown-pruner", "vae", {"pruner": {"name": "sometimes"}, "space": VAE_OK}, ["pruner.name must be one of"]),
    ("budget-below-val-interval", "nae", {"trainer": {"max_epochs": 2}, "space": {"rank": {"low": 10, "high": 100}}},
     ["trainer.max_epochs=2 is below check_val_every_n_epoch=5", "Raise max_epochs"]),
]


@pytest.mark.parametrize("name,model,body,expected", BAD_SPACES, ids=[b[0] for b in BAD_SPACES])
def test_bad_space_is_refused_before_any_trial(capsys, tmp_path, name, model, body, expected):
    space = write_space(tmp_path / f"{name}.yaml", body)
    line = tune_error(capsys, "--model", model, "--data", "timit", "--n-trials", "2", "--study", "s", "--space", str(space))
    assert str(space) in line
    for text in expected:
        assert text in line, line
    assert_nothing_created(tmp_path)


def test_load_tune_config_raises_the_same_errors(tmp_path):
    from lightning_sep.tuning.space import load_tune_config

    space = write_space(tmp_path / "bad.yaml", {"space": {"latent_size": {"low": 128, "high": 16}}})
    with pytest.raises(LightningSepError, match=r"low > high"):
        load_tune_config("vae", "timit", path=space)
    with pytest.raises(LightningSepError, match=r"--space .*nope.yaml: no such file"):
        load_tune_config("vae", "timit", path=tmp_path / "nope.yaml")
    with pytest.raises(LightningSepError, match=r"Unknown DATA 'nodata'. Available: .*timit"):
        load_tune_config("vae", "nodata", path=space)


def test_unknown_model_lists_the_models(capsys, tmp_path):
    line = tune_error(capsys, "--model", "nosuchmodel", "--data", "timit", "--n-trials", "2")
    assert "Unknown MODEL 'nosuchmodel'" in line
    for model in ("vae", "skipfilter", "nae", "deep_vae"):
        assert model in line
    # with a space file as well
    space = write_space(tmp_path / "space.yaml", {"space": VAE_OK})
    line = tune_error(capsys, "--model", "nosuchmodel", "--space", str(space))
    assert "Unknown MODEL 'nosuchmodel'" in line and "vae" in line
    # a real model without conf/tune/<model>.yaml: says which have one and what to do
    from lightning_sep.tuning.space import tunable_models
    from lightning_sep.registry import available

    untuned = [m for m in available("model") if m not in tunable_models()]
    if untuned:
        line = tune_error(capsys, "--model", untuned[0], "--n-trials", "2")
        assert f"conf/tune/{untuned[0]}.yaml" in line and "vae" in line and "--space" in line
    assert_nothing_created(tmp_path)


def test_bad_counts_are_refused(capsys, tmp_path):
    space = write_space(tmp_path / "space.yaml", VAE_SPACE)
    line = tune_error(capsys, "--model", "vae", "--n-trials", "0", "--space", str(space))
    assert "N_TRIALS=0" in line
    line = tune_error(capsys, "--model", "vae", "--n-trials", "2", "--timeout", "-5", "--space", str(space))
    assert "--timeout" in line
    assert_nothing_created(tmp_path)


def test_unreachable_storage_is_a_clear_error_without_the_password(capsys, tmp_path):
    import time

    space = write_space(tmp_path / "space.yaml", VAE_SPACE)
    url = f"postgresql://tuner:s3cret@127.0.0.1:{free_port()}/optuna"
    for via_env in (False, True):
        started = time.monotonic()
        with pytest.MonkeyPatch.context() as mp:
            args = ["--model", "vae", "--n-trials", "2", "--study", "s", "--space", str(space)]
            if via_env:
                mp.setenv("OPTUNA_STORAGE", url)
            else:
                args += ["--storage", url]
            line = tune_error(capsys, *args)
        assert time.monotonic() - started < 30
        assert "s3cret" not in line and "postgresql://tuner:***@127.0.0.1" in line
        assert "cannot be reached" in line and "Connection refused" in line, line
        assert_nothing_created(tmp_path)


def test_postgresql_url_error_never_shows_the_password(capsys, tmp_path):
    space = write_space(tmp_path / "space.yaml", VAE_SPACE)
    line = tune_error(capsys, "--model", "vae", "--n-trials", "2", "--space", str(space),
                      "--storage", f"postgresql://tuner:s3cret@127.0.0.1:{free_port()}/optuna")
    assert "s3cret" not in line and "tuner:***@" in line
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("sqlite:///{tmp}/no/such/folder/optuna.db", "does not exist"),
        ("mlruns/optuna.db", "is not a SQLAlchemy URL"),
        ("just some words", "is not a SQLAlchemy URL"),
        ("sqlite:///:memory:", "in-memory database cannot be shared"),
    ],
    ids=["sqlite-missing-folder", "path-not-url", "words", "in-memory"],
)
def test_bad_storage_urls(capsys, tmp_path, url, expected):
    space = write_space(tmp_path / "space.yaml", VAE_SPACE)
    url = url.format(tmp=tmp_path)
    line = tune_error(capsys, "--model", "vae", "--n-trials", "2", "--study", "s", "--space", str(space), "--storage", url)
    assert expected in line, line
    if "folder" in url:
        assert str(tmp_path / "no" / "such" / "folder") in line
        assert not (tmp_path / "no").exists()
    assert_nothing_created(tmp_path)


# -- 8. TuneConfig: overrides and baseline -----------------------------------------------------------------------------
def test_shipped_vae_space_loads_and_its_baseline_is_the_default_configuration():
    from lightning_sep.tuning.space import load_tune_config

    config = load_tune_config("vae", "timit")
    assert config.path.name == "vae.yaml" and config.metric == "val/sdr" and config.direction == "maximize"
    by_name = {p.name: p for p in config.params}
    assert set(by_name) == {"latent_size", "segment_frames", "lr", "hidden_sizes"}
    assert by_name["latent_size"].kind == "int" and by_name["latent_size"].log
    assert by_name["segment_frames"].kind == "int" and by_name["segment_frames"].step == 2
    assert by_name["lr"].kind == "float" and by_name["hidden_sizes"].kind == "categorical"
    # conf/model/vae.yaml's values, categorical lists as Optuna stores them (JSON)
    assert config.baseline() == {"latent_size": 64, "segment_frames": 17, "lr": 1.0e-3, "hidden_sizes": "[128]"}


def test_overrides_and_categorical_lists_round_trip(tmp_path):
    from lightning_sep.tuning.space import load_tune_config

    space = write_space(tmp_path / "space.yaml", {
        "trainer": {"max_epochs": 3},
        "space": {
            "hidden_sizes": {"choices": [[128], [256, 128]]},
            "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "data.batch_size": {"choices": [8, 16]},
            "trainer.gradient_clip_val": {"low": 0.5, "high": 5.0},
        },
    })
    config = load_tune_config("vae", "timit", path=space)
    assert [(p.section, p.arg) for p in config.params] == [
        ("model", "hidden_sizes"), ("model", "lr"), ("data", "batch_size"), ("trainer", "gradient_clip_val")]
    values = {"hidden_sizes": [256, 128], "lr": 3e-3, "data.batch_size": 8, "trainer.gradient_clip_val": 1.5}
    assert config.overrides(values) == {
        "trainer": {"max_epochs": 3, "gradient_clip_val": 1.5},
        "model": {"init_args": {"hidden_sizes": [256, 128], "lr": 3e-3}},
        "data": {"init_args": {"batch_size": 8}},
    }
    assert config.trainer_overrides == {"max_epochs": 3}  # not mutated by overrides()
    assert config.overrides({}) == {"trainer": {"max_epochs": 3}}

    # a categorical list goes to Optuna as JSON and comes back as the list
    fixed = optuna.trial.FixedTrial({"hidden_sizes": "[256, 128]", "lr": 3e-3, "data.batch_size": 8,
                                     "trainer.gradient_clip_val": 1.5})
    assert config.suggest(fixed) == values
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        picked = config.suggest(trial)
        assert isinstance(trial.params["hidden_sizes"], str)  # stored as JSON ...
        assert picked["hidden_sizes"] == json.loads(trial.params["hidden_sizes"])  # ... handed to the model as a list
        assert picked["hidden_sizes"] in ([128], [256, 128])
        assert config.overrides(picked)["model"]["init_args"]["hidden_sizes"] == picked["hidden_sizes"]
        study.tell(trial, 0.0)

    # the baseline: the defaults (gradient_clip_val's default None is not in [0.5, 5]) -> no baseline
    assert config.defaults["hidden_sizes"] == [128] and config.defaults["data.batch_size"] == 16
    assert config.baseline() is None


@pytest.mark.parametrize(
    "space,baseline",
    [
        ({"latent_size": {"low": 16, "high": 128}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}},
         {"latent_size": 64, "lr": 1e-3}),
        ({"latent_size": {"low": 128, "high": 512}}, None),  # default 64 below the range
        ({"latent_size": {"low": 16, "high": 131, "step": 5}}, None),  # 64 is not 16 + 5k
        ({"latent_size": {"low": 16, "high": 128, "step": 16}}, {"latent_size": 64}),
        ({"hidden_sizes": {"choices": [[256], [512]]}}, None),
        ({"hidden_sizes": {"choices": [[256], [128]]}}, {"hidden_sizes": "[128]"}),
        ({"data.regions": {"choices": [["DR1"]]}}, None),  # default null is not a choice
        ({"data.batch_size": {"choices": [8, 16]}}, {"data.batch_size": 16}),
        ({"lr": {"low": 5.0e-4, "high": 2.0e-3, "step": 5.0e-4}}, {"lr": 1e-3}),  # 5e-4 + 1 step
        ({"lr": {"low": 5.0e-4, "high": 3.5e-3, "step": 1.5e-3}}, None),  # 1e-3 is off the grid 5e-4 + k * 1.5e-3
    ],
)
def test_baseline_is_none_when_a_default_is_outside_the_space(tmp_path, space, baseline):
    from lightning_sep.tuning.space import load_tune_config

    config = load_tune_config("vae", "timit", path=write_space(tmp_path / "space.yaml", {"space": space}))
    assert config.baseline() == baseline


# -- 6. the seeded sampler ----------------------------------------------------------------------------------------------
def test_sampler_is_seeded_per_trial(tmp_path):
    from lightning_sep.tuning.space import load_tune_config
    from lightning_sep.tuning.study import make_sampler

    config = load_tune_config("vae", "timit", path=write_space(tmp_path / "space.yaml", VAE_SPACE))
    assert config.sampler == {"n_startup_trials": 2}

    def draws(seed: int, n: int = 4, enqueue=None) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(config, seed))
        if enqueue:
            study.enqueue_trial(enqueue)
        out = []
        for _ in range(n):
            trial = study.ask()
            values = config.suggest(trial)
            out.append(values)
            study.tell(trial, float(values["latent_size"]))  # the same "objective" in every study
        return out

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a, b = draws(42), draws(42)
    assert a == b  # startup (random) and TPE trials alike
    assert a[0] != a[1] and a[1] != a[2]
    assert draws(7)[:2] != a[:2]
    # trial n's random draws depend on (seed, n) only, not on the trials before it: a study that
    # began with an enqueued trial draws the same startup trial 1 as one that did not
    c = draws(42, n=2, enqueue={"latent_size": 64, "lr": 1e-3})
    assert c[0] == {"latent_size": 64, "lr": 1e-3}
    assert c[1] == a[1]
    with pytest.raises(LightningSepError, match="sampler"):
        config.sampler = {"n_startup_trial": 2}
        make_sampler(config, 1)


def test_pruner_choice(tmp_path):
    from optuna import pruners

    from lightning_sep.tuning.space import load_tune_config
    from lightning_sep.tuning.study import make_pruner

    config = load_tune_config("vae", "timit")  # conf/tune/vae.yaml: median, n_startup_trials 4, n_warmup_steps 2
    pruner = make_pruner(config)
    assert isinstance(pruner, pruners.MedianPruner)
    assert pruner._n_startup_trials == 4 and pruner._n_warmup_steps == 2
    assert isinstance(make_pruner(config, "none"), pruners.NopPruner)
    assert isinstance(make_pruner(config, "hyperband"), pruners.HyperbandPruner)  # the file's options are the median's
    with pytest.raises(LightningSepError, match="--pruner 'sometimes'"):
        make_pruner(config, "sometimes")
    bad = load_tune_config("vae", "timit", path=write_space(
        tmp_path / "space.yaml", {"pruner": {"name": "median", "n_startup_trial": 1}, "space": VAE_OK}))
    with pytest.raises(LightningSepError, match=r"pruner \(median\)"):
        make_pruner(bad)


# -- 5. the pruning callback, in a real fit --------------------------------------------------------------------------------
def _fit_with_pruning(tmp_path, trial, prune: bool, epochs: int = 3):
    import lightning as L
    import torch

    from lightning_sep.models import VAE
    from lightning_sep.tuning.pruning import OptunaPruning

    torch.manual_seed(0)
    model = VAE(front_end=EASY_FRONT_END, targets=["male", "female"], latent_size=8, segment_frames=3)
    callback = OptunaPruning(trial, prune=prune)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1, max_epochs=epochs, default_root_dir=str(tmp_path),
                        callbacks=[callback], num_sanity_val_steps=1)
    trainer.fit(model, easy_datamodule(steps=2))
    return callback, trainer


def _study_with_a_great_trial(epochs: int = 3):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.add_trial(optuna.trial.create_trial(
        value=100.0, params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0.0, 2.0)},
        intermediate_values={step: 100.0 for step in range(epochs)},
    ))
    return study


def test_pruning_callback_stops_a_hopeless_fit_after_the_first_validation(tmp_path):
    study = _study_with_a_great_trial()
    trial = study.ask()
    callback, trainer = _fit_with_pruning(tmp_path, trial, prune=True)
    assert callback.pruned_at == 0
    assert list(callback.history) == [0]  # the sanity check is not reported
    assert trainer.current_epoch <= 1 and trainer.global_step == 2  # one epoch of 2 steps, not 3
    value = callback.history[0]
    assert value < 100.0 and callback.best() == value and callback.best("minimize") == value
    frozen = study.get_trials(deepcopy=False)[-1]
    assert frozen.intermediate_values == {0: pytest.approx(value)}


def test_pruning_callback_only_reports_when_prune_is_false(tmp_path):
    study = _study_with_a_great_trial()
    trial = study.ask()
    callback, trainer = _fit_with_pruning(tmp_path, trial, prune=False)
    assert callback.pruned_at is None
    assert sorted(callback.history) == [0, 1, 2] and trainer.current_epoch == 3 and trainer.global_step == 6
    assert trial.should_prune()  # the pruner would have stopped it
    frozen = study.get_trials(deepcopy=False)[-1]
    assert set(frozen.intermediate_values) == {0, 1, 2}
    assert callback.best() == max(callback.history.values())
    assert callback.best("minimize") == min(callback.history.values())


def test_pruning_callback_ignores_other_and_missing_metrics(tmp_path):
    study = _study_with_a_great_trial()
    trial = study.ask()
    from lightning_sep.tuning.pruning import OptunaPruning

    callback = OptunaPruning(trial, monitor="val/no_such_metric")
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, callback_metrics={"val/sdr": 1.0},
                              current_epoch=0, should_stop=False)
    callback.on_validation_end(trainer, None)
    assert callback.history == {} and callback.best() is None and not trainer.should_stop
    callback = OptunaPruning(trial)
    trainer.callback_metrics = {"val/sdr": float("nan")}
    callback.on_validation_end(trainer, None)
    assert callback.history == {} and not trainer.should_stop


# -- 2. a real study, shared by the tests below -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory, data_home):
    """A 3-trial VAE study on the embedded TIMIT corpus, in its own MLflow store and Optuna storage."""
    from lightning_sep.tuning.study import TuneSettings, tune

    base = tmp_path_factory.mktemp("tune_shared")
    (base / "mlruns").mkdir()
    ns = SimpleNamespace(
        base=base, uri=f"sqlite:///{base / 'mlruns' / 'mlflow.db'}", storage=f"sqlite:///{base / 'mlruns' / 'optuna.db'}",
        space=write_space(base / "space.yaml", VAE_SPACE), study="vae-tiny",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTNING_SEP_DATA", str(data_home))
        use_store(mp, ns)
        mp.delenv("MUSDB_ROOT", raising=False)
        mp.chdir(base)
        ns.settings = dict(model="vae", data="timit", n_trials=3, study=ns.study, space=str(ns.space))
        ns.result = tune(TuneSettings(**ns.settings))
    return ns


@pytest.mark.slow
def test_study_runs_its_trials_and_starts_with_the_defaults(shared):
    r = shared.result
    assert r.study_name == shared.study
    assert r.counts == {"COMPLETE": 3} and sum(r.counts.values()) == 3
    study = optuna.load_study(study_name=shared.study, storage=shared.storage)
    trials = study.get_trials()
    assert [t.number for t in trials[:3]] == [0, 1, 2]
    assert {k: study.user_attrs.get(k) for k in ("model", "data", "metric", "direction")} == {
        "model": "vae", "data": "timit", "metric": "val/sdr", "direction": "maximize"}
    assert study.user_attrs.get("mlflow_parent_run_id", r.parent_run_id) == r.parent_run_id
    # trial 0: the default configuration of conf/model/vae.yaml
    assert trials[0].user_attrs.get("baseline") is True
    assert trials[0].params == {"latent_size": 64, "lr": pytest.approx(1e-3)}
    assert not any(t.user_attrs.get("baseline") for t in trials[1:])
    assert trials[1].params != trials[0].params and trials[2].params != trials[1].params
    for t in trials[:3]:
        assert 16 <= t.params["latent_size"] <= 128 and 1e-4 <= t.params["lr"] <= 1e-2
        # the value is the best epoch's val/sdr: the max of the reported epochs
        assert set(t.intermediate_values) == {0, 1}
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        config = t.user_attrs["config"]
        assert config["model"]["init_args"]["latent_size"] == t.params["latent_size"]
        assert config["model"]["init_args"]["lr"] == pytest.approx(t.params["lr"])
    assert r.baseline_value == pytest.approx(trials[0].value)
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert r.best_value == pytest.approx(max(t.value for t in complete)) == pytest.approx(study.best_value)
    assert r.best_trial == study.best_trial.number and r.best_params == study.best_trial.params


@pytest.mark.slow
def test_every_trial_has_an_mlflow_child_run(shared):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(shared.uri)
    study = optuna.load_study(study_name=shared.study, storage=shared.storage)
    trials = study.get_trials()
    parents = tune_runs(shared.uri, role="study")
    assert [p.info.run_id for p in parents] == [shared.result.parent_run_id]
    children = tune_runs(shared.uri, role="trial")
    assert len(children) == len(trials)
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert sorted(by_number) == [t.number for t in trials]
    for t in trials:
        child = by_number[t.number]
        tags = child.data.tags
        assert child.info.run_id == t.user_attrs["mlflow_run_id"]
        assert tags["mlflow.parentRunId"] == shared.result.parent_run_id
        assert tags["optuna.study_name"] == shared.study
        assert tags["optuna.trial_state"] == t.state.name == "COMPLETE"
        assert tags["tune.baseline"] == ("true" if t.number == 0 else "false")
        assert child.info.status == "FINISHED"
        assert child.data.params["latent_size"] == str(t.params["latent_size"])
        assert float(child.data.params["lr"]) == pytest.approx(t.params["lr"])
        assert child.data.metrics["optuna/value"] == pytest.approx(t.value)
        history = client.get_metric_history(child.info.run_id, "val/sdr")
        assert len(history) == 2  # one per epoch, from Lightning's logger
        assert max(m.value for m in history) == pytest.approx(t.value, abs=1e-5)
        assert "train/loss_epoch" in child.data.metrics or "train/loss" in child.data.metrics
        assert "optuna.fail_reason" not in tags
    best_child = by_number[shared.result.best_trial]
    assert best_child.data.metrics["optuna/value"] == pytest.approx(shared.result.best_value)
    assert best_child.data.metrics["optuna/value"] == pytest.approx(max(c.data.metrics["optuna/value"] for c in children))


@pytest.mark.slow
def test_parent_run_has_the_report(shared):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(shared.uri)
    r = shared.result
    best_trial = optuna.load_study(study_name=shared.study, storage=shared.storage).best_trial  # now (after a resume too)
    parent = client.get_run(r.parent_run_id)
    tags = parent.data.tags
    assert tags["tune.role"] == "study" and tags["optuna.study_name"] == shared.study
    assert tags["optuna.storage"] == shared.storage and tags["model.family"] == "vae"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val_sdr"] == pytest.approx(best_trial.value)
    assert parent.data.metrics["baseline/val_sdr"] == pytest.approx(r.baseline_value)
    assert tags["optuna.best_trial"] == str(best_trial.number)
    assert parent.data.params["space.latent_size"] == "int [16, 128] log"
    artifacts = {a.path for a in client.list_artifacts(r.parent_run_id)}
    assert {"best.yaml", "trials.csv", "optimization_history.png", "param_importances.png", "space.yaml"} <= artifacts

    # the files, in mlruns/tune/<study> beside the MLflow store
    assert r.out_dir == shared.base / "mlruns" / "tune" / shared.study
    assert sorted(p.name for p in r.plots) == ["optimization_history.png", "param_importances.png"]
    for png in r.plots:
        assert png.parent == r.out_dir and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    study = optuna.load_study(study_name=shared.study, storage=shared.storage)
    with open(r.out_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(study.trials)
    for row, t in zip(rows, study.trials):
        assert int(row["number"]) == t.number and row["state"] == t.state.name
        assert float(row["value"]) == pytest.approx(t.value, abs=1e-4)
        assert int(row["latent_size"]) == t.params["latent_size"]
        assert row["mlflow_run_id"] == t.user_attrs["mlflow_run_id"]
        assert row["baseline"] == str(t.number == 0) and row["fail_reason"] == ""

    best = yaml.safe_load(r.best_config.read_text())
    assert r.best_config == r.out_dir / "best.yaml"
    assert best["trainer"] == BUDGET
    assert best["data"]["class_path"] == "datamodules.TIMITDataModule"
    assert best["data"]["init_args"]["batch_size"] == 16  # the whole section, defaults included
    assert best["model"]["class_path"] == "lightning_sep.models.VAE"
    assert best["model"]["init_args"]["latent_size"] == best_trial.params["latent_size"]
    assert best["model"]["init_args"]["lr"] == pytest.approx(best_trial.params["lr"])
    assert "front_end" not in best["model"]["init_args"] and "targets" not in best["model"]["init_args"]


@pytest.mark.slow
def test_best_config_retrains_to_the_same_sdr(shared, tmp_path):
    """``make train MODEL=vae DATA=musdb ARGS="--config best.yaml"``: the study's data replaces MUSDB's."""
    from lightning_sep.cli import run

    best = optuna.load_study(study_name=shared.study, storage=shared.storage).best_trial
    cli = run(["fit", *config_args("vae", "musdb"), "--config", str(shared.result.best_config),
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    assert type(cli.datamodule).__name__ == "TIMITDataModule"
    assert cli.trainer.current_epoch == BUDGET["max_epochs"]
    assert cli.model.hparams.latent_size == best.params["latent_size"]
    assert cli.model.hparams.lr == pytest.approx(best.params["lr"])
    score = float(cli.trainer.checkpoint_callback.best_model_score)
    assert abs(score - best.value) < 0.05, (score, best.value)


@pytest.mark.slow
def test_resuming_under_another_model_or_data_is_refused(shared, monkeypatch, capsys, tmp_path):
    use_store(monkeypatch, shared)
    before = len(optuna.load_study(study_name=shared.study, storage=shared.storage).trials)
    runs_before = len(tune_runs(shared.uri))
    space = write_space(tmp_path / "skipfilter.yaml", {
        "trainer": BUDGET, "space": {"lr": {"low": 1e-5, "high": 1e-3, "log": True}}})
    line = tune_error(capsys, "--model", "skipfilter", "--data", "timit", "--n-trials", "5", "--study", shared.study,
                      "--space", str(space))
    assert f"STUDY={shared.study} already exists with model 'vae' (asked: 'skipfilter')" in line
    assert "Pick another STUDY name" in line
    line = tune_error(capsys, "--model", "vae", "--data", "timit_ten_speakers", "--n-trials", "5", "--study", shared.study,
                      "--space", str(shared.space))
    assert f"STUDY={shared.study} already exists with data 'timit' (asked: 'timit_ten_speakers')" in line
    assert "model" not in line.split("already exists with")[1].split("Pick")[0]  # only what differs
    assert len(optuna.load_study(study_name=shared.study, storage=shared.storage).trials) == before
    assert len(tune_runs(shared.uri)) == runs_before
    assert optuna.study.get_all_study_names(storage=shared.storage) == [shared.study]


@pytest.mark.slow
def test_resume_runs_only_the_missing_trials(shared, monkeypatch):
    from lightning_sep.tuning.study import TuneSettings, tune

    use_store(monkeypatch, shared)
    monkeypatch.chdir(shared.base)
    n = len(optuna.load_study(study_name=shared.study, storage=shared.storage).trials)
    assert n == 3
    again = tune(TuneSettings(**{**shared.settings, "n_trials": n}))
    assert again.counts == {"COMPLETE": n}
    assert again.parent_run_id == shared.result.parent_run_id
    assert again.best_value == pytest.approx(shared.result.best_value)
    assert len(tune_runs(shared.uri, role="trial")) == n

    more = tune(TuneSettings(**{**shared.settings, "n_trials": n + 1}))
    assert sum(more.counts.values()) == n + 1 and more.counts.get("COMPLETE") == n + 1
    assert more.parent_run_id == shared.result.parent_run_id
    study = optuna.load_study(study_name=shared.study, storage=shared.storage)
    new = study.trials[-1]
    assert new.number == n and not new.user_attrs.get("baseline")
    assert new.params not in [t.params for t in study.trials[:-1]]  # a resumed study does not repeat its start
    assert len(tune_runs(shared.uri, role="study")) == 1
    children = tune_runs(shared.uri, role="trial")
    assert len(children) == n + 1
    assert all(c.data.tags["mlflow.parentRunId"] == shared.result.parent_run_id for c in children)
    with open(more.out_dir / "trials.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == n + 1
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert more.best_value == pytest.approx(max(t.value for t in complete))


# -- 4. failed trials ---------------------------------------------------------------------------------------------------------
def _failed_study_checks(tmp_path, result, study_name: str, reason: str, n: int) -> None:
    from mlflow.tracking import MlflowClient

    assert result.counts == {"FAIL": n}
    assert result.best_value is None and result.best_config is None and result.plots == []
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert len(study.trials) == n
    for t in study.trials:
        assert t.state.name == "FAIL"
        assert reason in t.user_attrs.get("fail_reason", ""), t.user_attrs
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    children = tune_runs(uri, role="trial")
    assert len(children) == n
    for child in children:
        assert child.info.status == "FAILED"
        assert child.data.tags["optuna.trial_state"] == "FAIL"
        assert reason in child.data.tags["optuna.fail_reason"]
        assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert "optuna/value" not in child.data.metrics
    parent = MlflowClient(uri).get_run(result.parent_run_id)
    assert parent.data.tags["optuna.trials.fail"] == str(n) and "best/val_sdr" not in parent.data.metrics
    with open(result.out_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["FAIL"] * n
    assert [r["baseline"] for r in rows] == ["False"] * n  # the defaults lie outside these spaces
    # the user's error (a LightningSepError), not jsonargparse's "does not validate" wrapper around it
    assert all(reason in r["fail_reason"] for r in rows), rows


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    from lightning_sep.tuning.study import TuneSettings, tune

    space = write_space(tmp_path / "space.yaml", {
        "trainer": BUDGET, "pruner": {"name": "none"}, "space": {"context_frames": {"low": -3, "high": -1}}})
    result = tune(TuneSettings(model="skipfilter", data="timit", n_trials=2, study="refused", space=str(space),
                               out=str(tmp_path / "results")))
    assert result.out_dir == tmp_path / "results" and (tmp_path / "results" / "trials.csv").is_file()
    _failed_study_checks(tmp_path, result, "refused", "context_frames", 2)


@pytest.mark.slow
def test_nan_loss_fails_the_trial(tmp_path, capsys):
    from lightning_sep.tuning.study import TuneSettings, tune

    space = write_space(tmp_path / "space.yaml", {
        "trainer": {**BUDGET, "limit_train_batches": 8}, "pruner": {"name": "none"},
        "space": {"lr": {"low": 1.0e3, "high": 1.0e4, "log": True}}})
    result = tune(TuneSettings(model="vae", n_trials=2, study="nan", space=str(space)))
    assert capsys.readouterr().out.count("trial failed: LightningSepError: The training loss became nan") == 2
    _failed_study_checks(tmp_path, result, "nan", "The training loss became nan", 2)


# -- 5b. pruning in a real study ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_median_pruner_prunes_a_worse_trial_in_a_real_study(tmp_path):
    """The default lr (1e-3) trains for 4 steps; trial 1's lr (~1e-8) hardly moves the untrained VAE: at epoch 0
    it is below the median (trial 0's), so it stops there."""
    from mlflow.tracking import MlflowClient

    from lightning_sep.cli import main

    space = write_space(tmp_path / "space.yaml", {
        "trainer": BUDGET, "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "space": {"lr": {"low": 1.0e-9, "high": 1.0e-3, "log": True}}})
    assert main(["tune", "--model", "vae", "--n-trials", "2", "--study", "pruned", "--space", str(space),
                 "--pruner", "median"]) == 0
    study = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    t0, t1 = study.trials
    assert t0.state.name == "COMPLETE" and t0.user_attrs["baseline"] and set(t0.intermediate_values) == {0, 1}
    assert t1.params["lr"] < 1e-6
    assert t1.state.name == "PRUNED", (t0.intermediate_values, t1.intermediate_values)
    assert list(t1.intermediate_values) == [0] and t1.intermediate_values[0] < t0.intermediate_values[0]
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    child = MlflowClient(uri).get_run(t1.user_attrs["mlflow_run_id"])
    assert child.info.status == "KILLED"
    assert child.data.tags["optuna.trial_state"] == "PRUNED" and child.data.tags["optuna.pruned_at_epoch"] == "0"
    assert len(MlflowClient(uri).get_metric_history(child.info.run_id, "val/sdr")) == 1
    parent = MlflowClient(uri).get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["tune.pruner"] == "median"
    with open(tmp_path / "mlruns" / "tune" / "pruned" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["state"], r["pruned_at_step"]) for r in rows] == [("COMPLETE", ""), ("PRUNED", "0")]


def test_fixed_model_and_data_sections_apply_to_every_trial(tmp_path):
    """``data:`` / ``model:`` in a tuning config fix arguments for every trial (e.g. a held-out
    validation set): checked against the classes, part of each trial's overrides and of the baseline."""
    from lightning_sep.tuning.space import load_tune_config

    body = {"data": {"validation_holdout": 1}, "model": {"min_logvar": -4.0},
            "space": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}}
    config = load_tune_config("vae", "timit", path=write_space(tmp_path / "space.yaml", body))
    assert config.baseline() == {"lr": 1e-3}
    assert config.overrides({"lr": 2e-3}) == {
        "data": {"init_args": {"validation_holdout": 1}},
        "model": {"init_args": {"min_logvar": -4.0, "lr": 2e-3}},
    }
    bad = write_space(tmp_path / "bad.yaml", {"data": {"holdout": 1}, "space": body["space"]})
    with pytest.raises(LightningSepError, match=r"data.holdout: DATA=timit \(TIMITDataModule\) has no argument 'holdout'"):
        load_tune_config("vae", "timit", path=bad)
    bad = write_space(tmp_path / "bad2.yaml", {"model": {"targets": ["x"]}, "space": body["space"]})
    with pytest.raises(LightningSepError, match=r"model.targets"):
        load_tune_config("vae", "timit", path=bad)
