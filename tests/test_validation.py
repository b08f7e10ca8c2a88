"""Bad input is rejected before any work starts, with one line naming the key, the value and what is allowed.

Two tables: SUBPROCESS cases run ``python -m src.main`` end to end (exit code, stderr, empty cache);
IN_PROCESS cases compose the config with Hydra and call ``src.main.prepare`` (validate → load data →
membership → validate_with_data), the same code path without the ~5 s interpreter start-up.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from _main_runner import REPO, TINY, compose, merge, run_main


def _overrides(case: list[str]) -> list[str]:
    """TINY with the case's overrides replacing same-key entries (Hydra rejects duplicates)."""
    return merge(TINY, case)


def _unwritable_dir(tmp: Path) -> Path:
    f = tmp / "a_file"
    f.write_text("x")
    return f / "cache"  # a directory below a regular file can never be created


# (id, overrides, text the message must contain: the key, and for Hydra's own message the option)
# `{tmp}` is replaced by the case's temporary directory.
SUBPROCESS = [
    ("bits_abc", ["bits=abc"], ["bits=abc", "allowed"]),
    ("n_calib_too_large", ["quant=adaround", "quant.n_calib=100000"], ["quant.n_calib=100000", "at most"]),
    ("cifar10_missing", ["dataset=cifar10", "paths.data_dir={tmp}/empty"], ["dataset=cifar10", "paths.data_dir"]),
    ("cache_dir_unwritable", ["paths.cache_dir={tmp}/a_file/cache"], ["paths.cache_dir", "not writable"]),
    ("quant_unknown", ["quant=foo"], ["quant/foo"]),
    ("nonfinite_loss", ["train.lr=1e30"], ["pool model 0", "non-finite loss"]),
]

IN_PROCESS = [
    ("bits_3.5", ["bits=3.5"], ["bits=3.5"]),
    ("bits_0", ["bits=0"], ["bits=0"]),
    ("bits_9", ["bits=9"], ["bits=9"]),
    ("pkeep_0", ["pkeep=0"], ["pkeep=0"]),
    ("pkeep_1.5", ["pkeep=1.5"], ["pkeep=1.5"]),
    ("pkeep_abc", ["pkeep=abc"], ["pkeep=abc"]),
    ("pkeep_unbalanced_for_lira", ["pkeep=0.25"], ["pkeep=0.25", "n_models=4"]),
    ("n_models_1", ["n_models=1", "attack=loss"], ["n_models=1"]),
    ("lira_n_models_3", ["n_models=3", "attack=lira"], ["n_models=3", "≥ 4"]),
    ("n_models_2.5", ["n_models=2.5", "attack=loss"], ["n_models=2.5"]),
    ("rmia_n_models_2", ["n_models=2", "attack=rmia"], ["n_models=2"]),
    ("target_99", ["targets=[99]"], ["targets", "99", "0..3"]),
    ("target_negative", ["targets=[-1]"], ["targets=-1"]),
    ("targets_scalar", ["targets=1"], ["targets=1", "list"]),
    ("attack_names_scalar", ["attack.names=loss"], ["attack.names=loss", "list"]),
    ("queries_scalar", ["dataset.queries=mirror"], ["dataset.queries=mirror", "list"]),
    ("targets_empty", ["targets=[]"], ["targets=[]"]),
    ("n_targets_too_many", ["n_targets=5"], ["targets", "4"]),
    ("attack_name_bogus", ["attack.names=[bogus]"], ["attack.names", "bogus", "allowed"]),
    ("attack_names_empty", ["attack.names=[]"], ["attack.names"]),
    ("adaround_iters_negative", ["quant=adaround", "quant.iters=-5"], ["quant.iters=-5"]),
    ("brecq_iters_abc", ["quant=brecq", "quant.iters=abc"], ["quant.iters=abc"]),
    ("adaround_unfolded_bn", ["quant=adaround", "quant.fold_bn=false"], ["quant.fold_bn=false", "allowed"]),
    ("adaround_lr_zero", ["quant=adaround", "quant.lr=0"], ["quant.lr=0"]),
    ("n_calib_zero", ["quant=brecq", "quant.n_calib=0"], ["quant.n_calib=0"]),
    # the experiment's shared budget is named as the user set it
    ("budget_n_calib_zero", ["quant=gptq", "budget.n_calib=0"], ["budget.n_calib=0"]),
    ("cpu_workers_zero", ["cpu_workers=0"], ["cpu_workers=0", "or auto"]),
    # activation quantization: the allowed bit-widths and first-layer choices are named
    ("act_bits_five", ["quant=obc", "quant.act_bits=5"], ["quant.act_bits=5", "8, 6, 4, 3, 2"]),
    ("act_bits_ternary", ["quant=brecq", "quant.act_bits=1.58"], ["quant.act_bits=1.58", "null"]),
    ("act_input_bad", ["quant=rtn", "quant.act_bits=4", "quant.act_input=16"], ["quant.act_input=16", "fp", "act"]),
    ("qdrop_drop_prob", ["quant=qdrop", "quant.act_bits=4", "quant.drop_prob=1.5"], ["quant.drop_prob=1.5", "[0, 1]"]),
    ("budget_iters_negative", ["quant=brecq", "budget.iters=-5"], ["budget.iters=-5"]),
    ("budget_n_calib_too_large", ["quant=obc", "budget.n_calib=100000"], ["budget.n_calib=100000", "at most"]),
    ("n_calib_too_large_obc", ["quant=obc", "quant.n_calib=100000"], ["quant.n_calib=100000"]),
    # target 3 has 138 members, model 0 only 119: with matched references every model is quantized
    ("n_calib_too_large_matched", ["quant=obc", "targets=[3]", "quant.n_calib=130", "attack.reference=matched"],
     ["quant.n_calib=130", "model 0"]),
    ("calibration_bogus", ["quant=adaround", "quant.calibration=bogus"], ["quant.calibration=bogus", "members"]),
    ("quant_init_bogus", ["quant.init=bogus"], ["quant.init=bogus"]),
    ("imagefolder_no_root", ["dataset=imagefolder"], ["dataset.root"]),
    ("imagefolder_missing_root", ["dataset=imagefolder", "dataset.root=/nonexistent"], ["dataset.root", "/nonexistent"]),
    ("queries_rotate", ["dataset.queries=[rotate]"], ["dataset.queries", "rotate"]),
    ("queries_empty", ["dataset.queries=[]"], ["dataset.queries"]),
    ("synthetic_n_train_0", ["dataset.n_train=0"], ["dataset.n_train=0"]),
    ("epochs_0", ["train.epochs=0"], ["train.epochs=0"]),
    ("lr_negative", ["train.lr=-1"], ["train.lr=-1"]),
    ("lr_abc", ["train.lr=abc"], ["train.lr=abc"]),
    ("batch_size_0", ["train.batch_size=0"], ["train.batch_size=0"]),
    ("seed_negative", ["seed=-1"], ["seed=-1"]),
    ("device_tpu", ["device=tpu"], ["device=tpu"]),
    ("stage_bogus", ["stage=bogus"], ["stage=bogus"]),
    ("model_range_reversed", ["stage=train", "model_range=[3,1]"], ["model_range"]),
    ("reference_bogus", ["attack.reference=bogus"], ["attack.reference=bogus"]),
    ("bootstrap_negative", ["attack.bootstrap=-1"], ["attack.bootstrap=-1"]),
    ("cache_dir_unwritable", ["paths.cache_dir={tmp}/a_file/cache"], ["paths.cache_dir"]),
    ("cache_dir_is_file", ["paths.cache_dir={tmp}/a_file"], ["paths.cache_dir"]),
]

UNKNOWN_GROUP = [("dataset=foo", "dataset/foo"), ("attack=foo", "attack/foo"), ("model=foo", "model/foo"),
                 ("bitwidth=foo", "bitwidth/foo"), ("train=foo", "train/foo")]


def _fill(case: list[str], tmp: Path) -> list[str]:
    return [o.replace("{tmp}", str(tmp)) for o in case]


def _no_artifacts(cache: Path) -> bool:
    return not list(cache.rglob("*.pt")) if cache.exists() else True


def _run_subprocess_case(args):
    name, case, tmp = args
    (tmp / "empty").mkdir(parents=True, exist_ok=True)
    _unwritable_dir(tmp)
    over = _overrides(_fill(case, tmp))
    cache = tmp / "cache"
    p = run_main(over, cache, tmp / "run", timeout=180, check=False)
    if any(o.startswith("paths.cache_dir=") for o in over):  # the case's own cache dir wins (last override)
        cache = Path(next(o for o in over if o.startswith("paths.cache_dir=")).split("=", 1)[1])
    return name, p, cache


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("validation")
    jobs = [(name, case, base / name) for name, case, _ in SUBPROCESS]
    with ThreadPoolExecutor(2) as ex:  # two at a time: the interpreter start-up dominates
        return {name: (p, cache) for name, p, cache in ex.map(_run_subprocess_case, jobs)}


@pytest.mark.parametrize("name,case,needles", SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_bad_input_subprocess(subprocess_results, name, case, needles):
    p, cache = subprocess_results[name]
    err = p.stderr
    assert p.returncode != 0, f"{name}: accepted\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in err, f"{name}: {n!r} not in stderr:\n{err[-2000:]}"
    if "/" in needles[0] and "=" not in needles[0]:  # Hydra's own message for an unknown group option
        assert "Could not find" in err
    else:  # ours: exactly one `error:` line; anything else on stderr is Lightning's INFO chatter
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, err[-2000:]
        assert all(n in errors[0] for n in needles), errors
        noise = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("error:")
                 and not any(s in ln for s in ("GPU available", "TPU available", "Tip:", "litlogger"))]
        assert not noise, noise
        assert p.returncode in (2, 3)
    assert _no_artifacts(cache), list(cache.rglob("*"))


@pytest.mark.parametrize("name,case,needles", IN_PROCESS, ids=[c[0] for c in IN_PROCESS])
def test_bad_input_in_process(tmp_path, name, case, needles):
    from src.data import DataError
    from src.main import prepare
    from src.validate import ConfigError

    _unwritable_dir(tmp_path)
    cfg = compose(_overrides([f"paths.cache_dir={tmp_path}/cache", *_fill(case, tmp_path)]))
    with pytest.raises((ConfigError, DataError)) as ei:
        prepare(cfg)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert _no_artifacts(tmp_path / "cache")


@pytest.mark.parametrize("override,needle", UNKNOWN_GROUP)
def test_unknown_group_option_names_it(override, needle):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as ei:
        compose([override])
    assert needle in str(ei.value)


def test_tiny_config_is_valid(tmp_path):
    """The control: the base of both tables passes, so each failure above is its override's."""
    from src.main import prepare

    data, keep, targets = prepare(compose([*TINY, f"paths.cache_dir={tmp_path}/cache"]))
    assert keep.shape == (4, len(data.y_train)) and targets == [0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_read_only_cache_dir(tmp_path):
    from src.main import prepare
    from src.validate import ConfigError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="paths.cache_dir"):
            prepare(compose([*TINY, f"paths.cache_dir={ro}/cache"]))
    finally:
        ro.chmod(0o755)


BITS = (["bits=4", "bitwidth=uniform"], ["bits=1.58", "bitwidth=paper"], ["bits=2", "bitwidth=8bit_ends"])


PRESETS = sorted(f"experiment={p.stem}" for p in (REPO / "conf" / "experiment").glob("*.yaml")
                 if not p.stem.startswith("_"))
QUANTIZERS = sorted(p.stem for p in (REPO / "conf" / "quant").glob("*.yaml"))


def test_presets_and_quantizers_found():
    assert "experiment=default" in PRESETS and "experiment=paper_cifar10" in PRESETS and "obc" in QUANTIZERS


@pytest.mark.parametrize("preset", PRESETS)
def test_shipped_configs_pass_validation(tmp_path, preset):
    """No false alarms: the shipped presets validate with every quantizer, attack and bit policy."""
    from src.validate import validate

    attacks = ("lira", "rmia", "loss", "all") if preset == "experiment=default" else ("all",)
    for i, quant in enumerate(QUANTIZERS):
        for j, attack in enumerate(attacks):
            validate(compose([preset, f"quant={quant}", f"attack={attack}", *BITS[(i + j) % len(BITS)],
                              f"paths.cache_dir={tmp_path}/cache"]))
