"""The `tlstudy` command line (tlstudy.cli): its parsers, the light path before the heavy imports,
the settings it hands the runner, the trial command's round trip, and the secrets it keeps out of its output."""

import argparse
import base64
import io
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import pytest

from tlstudy import cli, settings, spaces
from tlstudy.analysis import export
from tlstudy.cli import command_line, commands, parsers, submit, trial_flags
from tlstudy.errors import UserError
from tlstudy.settings import DataSettings, TrialConfig
from tlstudy.study import storage

ROOT = Path(__file__).parents[1]
SECRET = "s3cr3t-PW"
HEAVY = ("torch", "torchvision", "ray", "optuna", "sqlalchemy", "pandas", "sklearn")


def options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", list(parsers.COMMANDS))
def test_every_flag_has_a_help_line(name):
    missing = [a.option_strings[0] for a in options(parsers.subparser(name)) if not (a.help or "").strip()]
    assert not missing


def test_closed_sets_are_choices():
    trial = {a.dest: a for a in options(parsers.subparser("trial"))}
    run = {a.dest: a for a in options(parsers.subparser("run"))}
    for key, allowed in settings.CHOICES.items():
        assert tuple(trial[key].choices) == allowed, key
    for key in ("weights_policy", "frozen_bn"):
        assert tuple(run[key].choices) == settings.CHOICES[key]
    assert tuple(run["pruner"].choices) == settings.PRUNERS
    assert tuple(run["profile"].choices) == tuple(trial["profile"].choices) == tuple(settings.PROFILES)


def test_run_flags():
    run = {a.dest for a in options(parsers.subparser("run"))}
    assert {"budget", "seeds", "frozen_bn", "allow_failures", "verbose", "show_config", "margin", "alpha"} <= run
    assert not {"samples_per_cell", "extra_samples"} & run
    args = parsers.subparser("run").parse_args(["--space", "taskE"])
    assert (args.budget, args.seeds, args.frozen_bn, args.margin, args.alpha) == (None, None, None, 0.02, 0.05)


def test_the_light_path_imports_nothing_heavy(tmp_path):
    """--help and a user's mistake answer before torch, Ray or Optuna are imported."""
    code = textwrap.dedent(f"""
        import sys
        from tlstudy import cli
        for argv in (["--help"], ["run", "--help"], ["trial", "--help"], ["analyze", "--help"],
                     ["dashboard", "--help"], ["submit", "--help"], ["run", "--list-spaces"],
                     ["run", "--space", "taskZ"], ["run", "--space", "taskE", "--data", "/no/such"],
                     ["run", "--space", "taskE", "--epochs", "0"], ["trial", "--optimizer", "rmsprop"],
                     ["trial", "--data", "/no/such"], ["analyze", "--space", "taskE", "--results", {str(tmp_path)!r}],
                     ["dashboard", "--storage", {str(tmp_path / "missing.log")!r}],
                     ["submit", "--space", "taskZ", "--cluster-address", "http://127.0.0.1:1"],
                     ["predict", "--help"], ["export-model", "--help"], ["predict", "model.safetensors", "/no/such"],
                     ["export-model", "--space", "taskE", "--results", {str(tmp_path)!r}]):
            try:
                cli.main(argv)
            except SystemExit:
                pass
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-2000:] + r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, env, local",
    [
        (["--space", "taskE"], {}, True),
        (["--space", "taskE", "--address", "10.0.0.1:6379"], {}, False),
        (["--space", "taskE", "--address=10.0.0.1:6379"], {}, False),
        (["--space", "taskE", "--addr=10.0.0.1:6379"], {}, False),  # argparse's prefix of --address
        (["--space", "taskE"], {"RAY_ADDRESS": "auto"}, False),
    ],
)
def test_ray_stays_on_loopback_unless_joining_a_cluster(argv, env, local):
    args = parsers.subparser("run").parse_args(argv)
    assert commands.keep_ray_local(args.address, env) is local
    assert env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == ("0" if local else None)


@pytest.fixture
def fake_runner(monkeypatch):
    """tlstudy.study.runner and the report replaced by recorders, and a cluster without GPUs: the
    settings the command line hands the runner, without running it."""
    import tlstudy.analysis
    import tlstudy.study

    calls = []
    fake = types.ModuleType("tlstudy.study.runner")
    fake.result = 0
    fake.run_study = lambda s, space, judge=None: (
        calls.append((s, space)) or types.SimpleNamespace(code=fake.result, study=None, incomplete=[])
    )
    report = types.ModuleType("tlstudy.analysis.report")
    report.report_run = lambda *args: None
    export = types.ModuleType("tlstudy.analysis.export")
    export.write = lambda *args: (None, {})
    for name, module, package in (
        ("runner", fake, tlstudy.study),
        ("report", report, tlstudy.analysis),
        ("export", export, tlstudy.analysis),
    ):
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setattr(package, name, module, raising=False)
    # A cluster without GPUs: a new study's profile is quick (tests/test_placement.py has real clusters).
    monkeypatch.setattr(commands, "cluster_profile", lambda flags: "quick")
    fake.calls = calls
    return fake


def test_run_hands_the_runner_resolved_settings(tmp_path, fake_runner, capsys):
    url = f"postgresql://tl:{SECRET}@db.example/tl"
    argv = [
        "run",
        "--space",
        "taskE",
        "--results",
        str(tmp_path / "r"),
        f"--storage={url}",
        "--seeds",
        "2",
        "--new-study",
    ]  # --new-study: nothing stored is read (the server does not exist)
    assert cli.main(argv) == 0
    [(s, space)] = fake_runner.calls
    assert isinstance(s, settings.StudySettings) and space.name == "taskE" and s.storage == url  # the real URL ...
    assert SECRET not in s.command and s.command.startswith("tlstudy run --space taskE")  # ... nobody else
    assert "--storage=postgresql://tl:***@db.example/tl" in s.command
    # The GPUs per trial are the runner's to resolve, from the cluster (tlstudy.study.placement).
    assert (s.profile, s.gpus_per_trial, s.seeds, s.budget) == ("quick", None, 2, settings.PROFILES["quick"]["budget"])
    assert s.shared == {"epochs": 3, "step_size": 3, "weights_policy": "auto", "frozen_bn": "eval", **space.fixed}
    assert not (tmp_path / "r").exists()  # checked, not created

    fake_runner.result = 1
    assert cli.main(argv) == 1  # the runner's exit status is the command's
    assert (
        cli.main(
            [
                "run",
                "--space",
                "taskE",
                "--results",
                str(tmp_path),
                "--show-config",
                "--profile",
                "full",
                "--gpus-per-trial",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "profile full: image_size=224, epochs=30" in out and "gpus per trial 0.5" in out
    assert len(fake_runner.calls) == 2  # --show-config runs nothing


def test_trial_profile_defaults_are_the_studys():
    for name, profile in settings.PROFILES.items():
        args = parsers.subparser("trial").parse_args(["--profile", name])
        cfg, data = trial_flags.resolve(vars(args))
        assert (data.image_size, data.phantom_sizes, data.max_train) == (
            profile["image_size"],
            profile["phantom_sizes"],
            profile["max_train"],
        )
        assert (cfg.epochs, cfg.step_size, cfg.weights_policy) == (
            profile["epochs"],
            profile["step_size"],
            profile["weights_policy"],
        )
        assert cfg.train_seed == TrialConfig().train_seed and data.seed == 0


def _study(base, params, data_args):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study()
    study.set_user_attr("base_config", base)
    dists = {
        k: CategoricalDistribution([v]) if not isinstance(v, float) else FloatDistribution(v / 2, v * 2)
        for k, v in params.items()
    }
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5))
    return export.best_config(study, types.SimpleNamespace(name="taskX"), data_args)


@pytest.mark.parametrize("profile", list(settings.PROFILES))
def test_best_config_command_round_trips_through_the_trial_parser(profile):
    base = dict(
        epochs=7,
        step_size=3,
        weights_policy="strict",
        arch="resnet18",
        weights="IMAGENET1K_V1",
        mode="frozen",
        frozen_bn="train",
        augment=True,
        amp=True,
        channels_last="off",
        train_seed=4,
        feature_cache="off",
        device="cpu",
    )
    params = dict(
        lr=0.0031,
        optimizer="adamw",
        batch_size=16,
        out_features=6,
        train_repeat="1,3,3,1",
        eval_repeat="1,3,1,1",
        schedule="cosine",
        momentum=0.85,
        weight_decay=0.0002,
    )
    data_args = dict(
        profile=profile, data="phantom", image_size=48, phantom_sizes="60,50,40", max_train=None, data_seed=9
    )
    best = _study(base, params, data_args)
    argv = shlex.split(best["command"])
    assert argv[:2] == ["tlstudy", "trial"] and "--augment" in argv and "--amp" in argv
    cfg, data = trial_flags.resolve(vars(parsers.subparser("trial").parse_args(argv[2:])))
    assert cfg == TrialConfig(**{**base, **params, "amp": "on"})
    assert data == DataSettings(source="phantom", image_size=48, phantom_sizes=(60, 50, 40), max_train=0, seed=9)


def test_best_config_of_a_study_from_before_train_seed():
    best = _study(
        dict(epochs=2, seed=5, augment=False), dict(lr=0.001), dict(data="phantom", image_size=16, max_train=48)
    )
    args = parsers.subparser("trial").parse_args(shlex.split(best["command"])[2:])
    cfg, data = trial_flags.resolve({**vars(args), "profile": args.profile or "quick"})
    assert cfg.train_seed == 5 and data.seed == 5 and cfg.augment is False and data.max_train == 48
    assert "--no-augment" in best["command"]


@pytest.mark.parametrize("argv", [["--space", "a.py"], ["--space=a.py"], ["--spa", "a.py"], ["--spac=a.py"]])
def test_replace_option_finds_every_spelling(argv):
    parser = parsers.subparser("run")
    out = command_line.replace_option(parser, ["--seed", "1", *argv, "--epochs", "2"], "--space", lambda v: "X/" + v)
    assert "X/a.py" in " ".join(out) and out[:2] == ["--seed", "1"] and out[-2:] == ["--epochs", "2"]
    assert parser.parse_args(out).space == "X/a.py"


# ---------------------------------------------------------------- spaces


def test_a_space_in_the_working_folder_shadows_the_shipped_one(tmp_path, monkeypatch):
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "taskE.py").write_text('"""My own task E."""\n')
    (tmp_path / "search_spaces" / "mine.py").write_text('"""Mine."""\nopen("ran", "w")\n')
    (tmp_path / "search_spaces" / "broken.py").write_text("PARAM_SPACE = {\n")
    monkeypatch.chdir(tmp_path)
    listed = dict(spaces.available())
    assert listed["taskE"] == "My own task E." and listed["mine"] == "Mine." and "taskA" in listed
    assert listed["broken"].startswith("(broken: space file") and "syntax error at line" in listed["broken"]
    assert not (tmp_path / "ran").exists()  # listed without being run
    assert spaces.find("taskE") == tmp_path / "search_spaces" / "taskE.py"
    assert spaces.find("taskA").parent == spaces.shipped("search_spaces", "search_spaces")


# ---------------------------------------------------------------- secrets


def test_display_url_hides_passwords():
    assert storage.display_url(f"postgresql://tl:{SECRET}@h:5/db") == "postgresql://tl:***@h:5/db"
    assert storage.display_url("sqlite:///results/optuna.db") == "sqlite:///results/optuna.db"
    assert storage.display_url("results/journal.log") == "results/journal.log"
    assert SECRET not in storage.display_url(f"bad:/x://u:{SECRET}@h")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--space", "taskE", "--storage", f"postgresql://tl:{SECRET}@127.0.0.1:1/tl"],
        ["run", "--space", "taskE", "--storage", f"nosuchdb://tl:{SECRET}@x/tl"],
        ["analyze", "--space", "taskE", "--storage", f"postgresql://tl:{SECRET}@127.0.0.1:1/tl"],
        ["dashboard", "--space", "taskE", "--storage", f"postgresql://tl:{SECRET}@127.0.0.1:1/tl"],
        [
            "submit",
            "--cluster-address",
            "http://127.0.0.1:1",
            "--space",
            "taskE",
            "--storage",
            f"postgresql://tl:{SECRET}@db/tl",
        ],
    ],
)
def test_no_password_in_any_output_of_an_error(tmp_path, capfd, argv):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--results", str(tmp_path)])
    out, err = capfd.readouterr()
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert SECRET not in out + err and "tl:***@" in err


# ---------------------------------------------------------------- submit


def test_submit_falls_back_to_ray_address(tmp_path, capfd, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["submit", "--space", "taskE"])
    err = capfd.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port} (from $RAY_ADDRESS)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["--space={}", "--space {}", "--spa {}"])
def test_submit_ships_a_space_file_given_any_way(tmp_path, monkeypatch, spelling):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "small.py").write_text((ROOT / "search_spaces" / "taskE.py").read_text())
    monkeypatch.chdir(tmp_path)
    run_argv = [*spelling.format(tmp_path / "mine" / "small.py").split(" "), "--epochs", "2"]
    parser = parsers.subparser("run")
    run_argv, results, names = submit.job_plan(parser, run_argv, parser.parse_args(run_argv), tmp_path)
    assert parser.parse_args(run_argv).space == "mine/small.py" and names == ["small", "artifacts"]

    outside = tmp_path.parent / f"{tmp_path.name}-outside.py"
    outside.write_text((ROOT / "search_spaces" / "taskE.py").read_text())
    with pytest.raises(UserError, match="outside the folder the job ships"):
        submit.job_plan(parser, [f"--space={outside}"], parser.parse_args([f"--space={outside}"]), tmp_path)


def test_submit_ships_the_spaces_inside_the_package(tmp_path):
    pkg = submit.stage_package(tmp_path)
    assert (pkg / "cli" / "commands.py").is_file() and (pkg / "search_spaces" / "taskE.py").is_file()
    assert (pkg / "reference" / "homework4.csv").is_file() and not list(pkg.rglob("__pycache__"))


def test_rayignore_is_submits_excludes():
    lines = [ln for ln in (ROOT / ".rayignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == submit.EXCLUDES


def _log(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return f"before\n{submit.BEGIN}\n{base64.encodebytes(buf.getvalue()).decode()}{submit.END}\nafter\n"


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("python_filter", [True, False])
def test_exports_unpack_safely_with_or_without_pythons_filter(tmp_path, monkeypatch, python_filter):
    if not python_filter:  # Python 3.10.0-3.10.11, 3.11.0-3.11.3
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    dest = tmp_path / "dest"
    good = _log(
        [_file("taskE/trials.csv", b"number\n0\n"), _file("artifacts/abc", b"png"), _link("taskE/link", "trials.csv")]
    )
    assert submit.unpack_exports(good, dest) == [dest / "artifacts", dest / "taskE"]
    assert (dest / "taskE" / "trials.csv").read_bytes() == b"number\n0\n" and (dest / "artifacts" / "abc").is_file()
    for bad in (
        [_file("../escape")],
        [_file("/tmp/absolute-escape")],
        [_link("taskE/out", "../../escape")],
        [_link("taskE/abs", "/etc/passwd")],
        [_link("taskE/hard", "/etc/passwd", tarfile.LNKTYPE)],
        [_link("taskE/up", ".."), _link("taskE/up/up2", ".."), _file("taskE/up/up2/escape")],
    ):
        # Refused, or (Python's filter strips a leading /) unpacked inside dest; never written outside.
        try:
            submit.unpack_exports(_log(bad), dest)
        except UserError as e:
            assert "refusing to unpack" in str(e)
        else:
            assert python_filter and bad[0][0].name.startswith("/")
    assert not (tmp_path / "escape").exists() and not Path("/tmp/absolute-escape").exists()
    for p in dest.rglob("*"):
        assert p.resolve() == dest.resolve() or dest.resolve() in p.resolve().parents, p


def test_emit_exports_packs_the_study_and_its_artifacts(tmp_path, capsys):
    (tmp_path / "r" / "taskE").mkdir(parents=True)
    (tmp_path / "r" / "taskE" / "trials.csv").write_text("number\n")
    (tmp_path / "r" / "artifacts").mkdir()
    (tmp_path / "r" / "artifacts" / "id1").write_bytes(b"\x89PNG")
    submit.emit_exports(tmp_path / "r", ["taskE", "taskB", "artifacts"])  # taskB: not there, skipped
    got = submit.unpack_exports(capsys.readouterr().out, tmp_path / "back")
    assert got == [tmp_path / "back" / "artifacts", tmp_path / "back" / "taskE"]
    assert (tmp_path / "back" / "artifacts" / "id1").read_bytes() == b"\x89PNG"


def test_python_dash_m_tlstudy_is_the_command(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "tlstudy", "run", "--space", "taskZ"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: unknown space 'taskZ'") and r.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []
