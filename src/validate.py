"""One place that checks the composed config before any work starts.

Each problem raises ``ConfigError`` with one line naming the key, the value and what is allowed;
``src.main`` prints it and exits with status 2. Unknown group options (``quant=foo``) are already
rejected by Hydra with the list of available options.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path

from src.data.augment import check_query
from src.errors import ConfigError  # noqa: F401 (also imported from here)
from src.data.datasets import DATASETS
from src.models import MODELS
from src.quant import CONTROLS, FULL_PRECISION, METHODS, NEEDS_CALIBRATION
from src.quant.activation import check_act_bits, check_act_input
from src.quant.qdrop import check_drop_prob
from src.quant.grid import INIT_METHODS, check_bits
from src.quant.policy import POLICIES, Overrides, check_names
from src.training.precision import PRECISIONS


CONF = Path(__file__).resolve().parents[1] / "conf"
# nodes whose keys are checked against the selected option's own yaml: a key the option does not
# define would be read by nothing (a typo, or a budget key of another method) and silently ignored
CHECKED_GROUPS = ("quant", "attack", "dataset", "model", "train", "target")
# keys the code reads as optional extras of a node though no shipped option file sets them
OPTIONAL_KEYS = {"dataset": ("max_train", "max_test", "query_augment"),
                 "train": ("fast", "bf16", "models_per_step", "compile", "channels_last", "cuda_graphs", "precision",
                           "schedule")}


def external_target(cfg) -> bool:
    """``target=external``: the attacked model is a checkpoint trained outside the project."""
    return (cfg.get("target") or {}).get("name", "pool") == "external"


def describe_model(cfg) -> str:
    """``model=smallcnn (width=32)``: the configured architecture, for error lines."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.model, resolve=True) if OmegaConf.is_config(cfg.model) else dict(cfg.model)
    extra = ", ".join(f"{k}={v}" for k, v in node.items() if k != "name" and v is not None)
    return f"model={cfg.model.name}" + (f" ({extra})" if extra else "")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _quant_key(cfg, key: str) -> str:
    """How the user set ``quant.<key>``: ``budget.<key>`` where the quantizer reads the experiment's
    shared budget (conf/quant/*.yaml: ``${oc.select:budget.<key>,...}``), else ``quant.<key>``."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg.quant, resolve=False).get(key) if OmegaConf.is_config(cfg.quant) else None
    if isinstance(raw, str) and f"budget.{key}" in raw and OmegaConf.select(cfg, f"budget.{key}") is not None:
        return f"budget.{key}"
    return f"quant.{key}"


def _int(cfg, key: str, value, minimum: int, why: str = "") -> int:
    try:
        v = int(value)
        ok = float(value) == v
    except (TypeError, ValueError):
        ok = False
    _need(ok and v >= minimum, f"{key}={value}: must be an integer ≥ {minimum}{why}")
    return v


def _float(key: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """``value`` as a finite float within [lo, hi] (``*_open``: the bound itself is excluded)."""
    try:
        v = float(value)
        ok = v == v and abs(v) != float("inf")
    except (TypeError, ValueError):
        v, ok = float("nan"), False
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else f"{'>' if lo_open else '≥'} {lo:g}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '≤'} {hi:g}"
        raise ConfigError(f"{key}={value}: must be a number {' and '.join(x for x in (lo_s, hi_s) if x)}".rstrip())
    return v


def _as_list(key: str, value) -> list:
    """A config value that must be a list (``targets=3`` would be iterated character by character or fail)."""
    from omegaconf import ListConfig

    _need(isinstance(value, (list, tuple, ListConfig)), f"{key}={value}: must be a list, e.g. {key}=[{value}]")
    return list(value)


def option_keys(group: str, option: str) -> set[str] | None:
    """Keys of ``conf/<group>/<option>.yaml`` with its defaults list merged in (``attack/lira`` →
    ``_params``); None if there is no such file (an option added from another search path)."""
    from omegaconf import OmegaConf

    path = CONF / group / f"{option}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    keys = set(node) - {"defaults"}
    for d in node.get("defaults") or []:
        if isinstance(d, str) and d != "_self_":
            keys |= option_keys(group, d) or set()
    return keys


def _choice(cfg, group: str) -> str | None:
    """The option selected for ``group``: Hydra's record of the choice inside a job, else the
    option file whose ``name`` is the node's name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    except Exception:
        pass
    name = str(cfg[group].get("name", ""))
    return name if (CONF / group / f"{name}.yaml").is_file() else None


def check_node_keys(cfg) -> None:
    """Every key of the quant, attack, dataset, model and train nodes is one its option defines."""
    for group in CHECKED_GROUPS:
        if group not in cfg or cfg[group] is None:
            continue
        option = _choice(cfg, group)
        allowed = option_keys(group, option) if option else None
        if allowed is None:
            continue
        allowed |= set(OPTIONAL_KEYS.get(group, ()))
        unknown = sorted(set(cfg[group]) - allowed)
        _need(not unknown, f"{group}.{unknown[0] if unknown else ''}: not a key of {group}={option}; "
                           f"allowed: {', '.join(sorted(allowed))}")


# config groups (each a conf/<group>/ folder) and folders of global presets (``# @package _global_``)
GROUPS = ("dataset", "model", "train", "quant", "bitwidth", "attack", "logger", "target")
GLOBAL_PRESETS = ("experiment", "protocol")
_ANY = None  # a schema leaf: its value may be anything (a list, or a free-form dict like bitwidth.layers)


def _merge_schema(into: dict, node) -> None:
    """Add the keys of a yaml node to a schema tree: nested dicts recurse, anything else is a leaf."""
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k in ("defaults", "hydra"):
            continue
        if not (isinstance(v, dict) and v):
            into[k] = _ANY  # a leaf in any file: free-form there
        elif k not in into:
            into[k] = {}
        if isinstance(v, dict) and isinstance(into[k], dict):
            _merge_schema(into[k], v)


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """Every key a job config may hold, as a tree: conf/config.yaml, the keys of every option of each
    group, everything a preset (conf/experiment, conf/protocol) sets, the optional keys the code reads,
    and the ``budget.<key>`` that the quantizers' yaml files look up."""
    from omegaconf import OmegaConf

    def load(path: Path):
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}

    tree: dict = {}
    _merge_schema(tree, load(CONF / "config.yaml"))
    for group in GROUPS:
        node = tree.setdefault(group, {})
        for f in sorted((CONF / group).glob("*.yaml")):
            _merge_schema(node, load(f))
        for k in OPTIONAL_KEYS.get(group, ()):
            node.setdefault(k, _ANY)
    for folder in GLOBAL_PRESETS:
        for f in sorted((CONF / folder).glob("*.yaml")):
            _merge_schema(tree, load(f))
    budget = tree.setdefault("budget", {})
    for f in (CONF / "quant").glob("*.yaml"):
        for k in re.findall(r"budget\.(\w+)", f.read_text()):
            budget.setdefault(k, _ANY)
    return tree


def check_schema_keys(cfg) -> None:
    """Every key of the job config, at every level, is one the configuration defines somewhere: a key
    added with ``+key=value`` (``+bit=2`` for ``bits=2``) would be read by nothing and silently ignored."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    def walk(node, tree: dict, prefix: str) -> None:
        for key in node:
            path = f"{prefix}{key}"
            if key not in tree:
                close = difflib.get_close_matches(str(key), [str(k) for k in tree], n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                where = f"keys of {prefix.rstrip('.')}" if prefix else "top-level keys"
                raise ConfigError(f"{path}: not a config key{hint}; allowed {where}: {', '.join(sorted(tree))}")
            sub = tree[key]
            value = node._get_node(key) if isinstance(node, DictConfig) else None
            if isinstance(sub, dict) and isinstance(value, DictConfig) and not OmegaConf.is_missing(node, key):
                walk(value, sub, f"{path}.")

    walk(cfg, schema(), "")


def check_image_size(cfg, size: int, in_channels: int, source: str) -> None:
    """The model's strides and poolings leave a feature map at ``size`` px (src.models.min_image_size)."""
    from src.models import min_image_size

    need = min_image_size(cfg.model, in_channels)
    if need is not None and size >= need:
        return
    fits = [n for n in MODELS if (min_image_size({"name": n}, in_channels) or size + 1) <= size]
    raise ConfigError(f"model={cfg.model.name}: needs images of at least {need} px, but {source} gives {size} px; "
                      f"allowed: {'a larger dataset.image_size or ' if 'image_size' in cfg.dataset else ''}"
                      f"model={', '.join(fits) or '(none)'}")


PATH_KEYS = ("paths.cache_dir", "paths.data_dir", "dataset.root", "dataset.decode_cache", "target.checkpoint",
             "target.members")


def expand_paths(cfg) -> None:
    """``~`` at the start of a path key is the user's home (an interpolation is left to resolve)."""
    from omegaconf import OmegaConf

    for key in PATH_KEYS:
        group, _, leaf = key.partition(".")
        node = cfg.get(group)
        if node is None or leaf not in node:
            continue
        raw = OmegaConf.to_container(node, resolve=False).get(leaf)
        if isinstance(raw, str) and raw.startswith("~"):
            node[leaf] = os.path.expanduser(raw)


def check_override_keys(args: list[str]) -> None:
    """Command-line overrides Hydra would reject with misleading advice, checked before it runs:
    ``quant.iters=100`` where the selected quantizer has no ``iters`` (Hydra suggests
    ``+quant.iters=100``, which would be ignored), and a bare ``~`` its override parser cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for a in args:
        if a.startswith("-"):
            continue
        try:
            parsed.extend(parser.parse_overrides([a]))
        except OverrideParseException:
            key, _, value = a.partition("=")
            if "~" in value:
                raise ConfigError(f"{a}: Hydra cannot read a bare '~'; write \"{key}='{value}'\" (quoted, as one "
                                  f"shell word) or {key}=$HOME{value.lstrip('~')}") from None
            return  # Hydra's own message
    candidates = [o for o in parsed if o.type == OverrideType.CHANGE and "." in o.key_or_group
                  and o.key_or_group.split(".")[0] in CHECKED_GROUPS and o.package is None]
    if not candidates:
        return
    groups = [o for o in parsed if "." not in o.key_or_group and o.package is None
              and not o.key_or_group.startswith("hydra")]
    if any(o.is_sweep_override() for o in groups):
        return  # several options per group: Hydra checks each job
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            cfg = compose("config", overrides=[o.input_line for o in groups], return_hydra_config=True)
        except Exception:
            return  # Hydra reports it
    for o in candidates:
        group, key = o.key_or_group.split(".")[:2]
        if cfg.get(group) is not None and key not in cfg[group]:
            option = cfg.hydra.runtime.choices.get(group)
            raise ConfigError(f"{group}.{key}: not a key of {group}={option}; allowed: {', '.join(sorted(cfg[group]))}")


# flags after which `python -m src.main` runs no job, or reads another config than conf/config.yaml
_NO_SWEEP_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                   "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p")


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The override lists of the jobs of ``python -m src.main -m <args>``, in launch order: the basic
    sweeper's expansion (the cartesian product of comma lists, after ``hydra.sweeper.params`` of the
    composed config). [] for a single run or a command line it cannot expand."""
    if not ({"-m", "--multirun"} & set(args)) or set(args) & set(_NO_SWEEP_FLAGS):
        return []
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            base = compose("config", overrides=fixed, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
        batches = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)
    except Exception:
        return []  # Hydra reports it when it parses the same command line
    return [job for batch in batches for job in batch]


def check_sweep(args: list[str]) -> int:
    """Compose and validate every job of a multirun before the first one starts, so a bad value in a
    later job (``bits=4,5.5``) is refused before hours of earlier jobs; raises ConfigError naming the
    job. Checks that need the dataset (calibration sizes, image size) still run at each job's start.
    Returns the number of jobs checked (0: not a multirun)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    jobs = sweep_jobs(args)
    if not jobs:
        return 0
    before = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for num, job in enumerate(jobs):
                try:
                    cfg = compose("config", overrides=job, return_hydra_config=True)
                except Exception:
                    return 0  # a composition error: Hydra's own message, from the first job it hits
                HydraConfig.instance().set_config(cfg)  # the job's group choices, as inside the job
                with open_dict(cfg):
                    cfg.pop("hydra")
                try:
                    expand_paths(cfg)
                    validate(cfg)
                except ConfigError as e:
                    swept = " ".join(o for o in job if sum(o in j for j in jobs) < len(jobs)) or " ".join(job)
                    raise ConfigError(f"job {num} of {len(jobs)} ({swept}): {e}; no job was started") from None
    finally:
        HydraConfig.instance().cfg = before  # the process's own Hydra state, as it was
    return len(jobs)


def check_cache_dir(path: str) -> None:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"paths.cache_dir={path}: not writable ({e.strerror or e})") from None


def validate(cfg) -> None:
    """Raise ConfigError for the first problem found in the composed job config."""
    try:
        check_bits(cfg.bits)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(cfg.dataset.name in DATASETS, f"dataset.name={cfg.dataset.name}: allowed: {', '.join(DATASETS)}")
    _need(cfg.model.name in MODELS, f"model.name={cfg.model.name}: allowed: {', '.join(MODELS)}")
    for key in ("width", "depth", "widen"):
        if cfg.model.get(key) is not None:
            _int(cfg, f"model.{key}", cfg.model[key], 1)
    if cfg.model.name == "wrn28_2":
        d = int(cfg.model.get("depth", 28))
        _need(d >= 10 and (d - 4) % 6 == 0,
              f"model.depth={d}: a Wide ResNet has depth 6n + 4 with n ≥ 1; allowed: 10, 16, 22, 28, ...")
    qnames = FULL_PRECISION + tuple(METHODS)
    _need(cfg.quant.name in qnames, f"quant.name={cfg.quant.name}: allowed: {', '.join(qnames)}")
    _need(cfg.bitwidth.policy in POLICIES, f"bitwidth.policy={cfg.bitwidth.policy}: allowed: {', '.join(POLICIES)}")
    try:
        overrides = Overrides.of(cfg.bitwidth)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(not (overrides.active() and cfg.quant.name in CONTROLS),
          f"bitwidth: quant={cfg.quant.name} perturbs float weights and has no bit-widths; per-layer overrides "
          f"({overrides.describe()}) apply only to the quantizers: {', '.join(m for m in METHODS if m not in CONTROLS)}")
    try:
        pkeep = float(cfg.pkeep)
    except (TypeError, ValueError):
        pkeep = -1.0
    _need(0.0 < pkeep < 1.0, f"pkeep={cfg.pkeep}: must lie strictly between 0 and 1")
    m = _n_models(cfg)
    _int(cfg, "seed", cfg.seed, 0)
    _check_device(str(cfg.get("device", "auto")))
    _int(cfg, "num_workers", cfg.get("num_workers", 0), 0)
    if cfg.get("num_threads") is not None:
        _int(cfg, "num_threads", cfg.num_threads, 1)
    if str(cfg.get("cpu_workers", 1)) != "auto":
        _int(cfg, "cpu_workers", cfg.get("cpu_workers", 1), 1, " or auto")
    _validate_dataset(cfg)
    if cfg.dataset.get("image_size") is not None and cfg.dataset.name in ("cifar10", "cifar100", "synthetic",
                                                                           "imagefolder"):
        check_image_size(cfg, int(cfg.dataset.image_size), int(cfg.dataset.get("channels", 3)),
                         f"dataset.image_size={cfg.dataset.image_size}")
    _need(cfg.stage in ("all", "train"), f"stage={cfg.stage}: allowed: all, train")
    queries = _as_list("dataset.queries", cfg.dataset.get("queries", ["identity"]))
    for q in queries:
        try:
            check_query(str(q))
        except ValueError as e:
            raise ConfigError(f"dataset.queries: {e}") from None
    _need(len(queries) > 0, "dataset.queries=[]: need at least one query view")
    for k in ("epochs", "batch_size"):
        _int(cfg, f"train.{k}", cfg.train[k], 1)
    _float("train.lr", cfg.train.lr, 0.0, lo_open=True)
    for k in ("momentum", "weight_decay"):
        if k in cfg.train:
            _float(f"train.{k}", cfg.train[k], 0.0)
    prec = str(cfg.train.get("precision", "32-true")).strip().lower()
    _need(prec in PRECISIONS, f"train.precision={cfg.train.get('precision')}: allowed: {', '.join(PRECISIONS)}")
    mode = (cfg.get("membership") or {}).get("target", "pool")
    _need(mode in ("pool", "independent"), f"membership.target={mode}: allowed: pool, independent")
    every = [k for k in ("n_targets", "targets") if str(cfg.get(k)) == "all"]
    if every:  # leave-one-out over the whole pool: every pool model a target, the others its references
        _need(mode == "pool", f"{every[0]}=all: every pool model becomes a target, which needs "
                              f"membership.target=pool (independent targets are trained outside the pool)")
        targets = list(range(m))
    elif cfg.get("n_targets") is not None:
        _int(cfg, "n_targets", cfg.n_targets, 1)
        targets = list(range(int(cfg.n_targets)))
    else:
        _need(not isinstance(cfg.targets, str), f"targets={cfg.targets}: allowed: a list of pool indices, or all")
        targets = _as_list("targets", cfg.targets)
        _need(len(targets) > 0, "targets=[]: name at least one pool model to attack")
    mode = (cfg.get("membership") or {}).get("target", "pool")
    _need(mode in ("pool", "independent"), f"membership.target={mode}: allowed: pool, independent")
    _validate_target(cfg, m, mode)
    for t in targets:
        ti = _int(cfg, "targets", t, 0)
        # independent targets are numbered 0.. after the pool; pool targets are pool indices
        _need(mode == "independent" or ti < m,
              f"targets: index {t} is outside the pool; allowed: 0..{m - 1} (n_models={m})")
    if cfg.get("model_range") is not None:
        r = _as_list("model_range", cfg.model_range)
        _need(len(r) == 2 and 0 <= int(r[0]) < int(r[1]) <= m,
              f"model_range={r}: need [start, stop) with 0 ≤ start < stop ≤ n_models={m}")
    q = cfg.quant
    if "iters" in q:
        _int(cfg, _quant_key(cfg, "iters"), q.iters, 0)
    for k in ("batch_size", "block", "block_size", "calib_batch", "fisher_samples"):
        if k in q:
            _int(cfg, f"quant.{k}", q[k], 1)
    if "lr" in q:
        _float("quant.lr", q.lr, 0.0, lo_open=True)
    if "warmup" in q:
        _float("quant.warmup", q.warmup, 0.0, 1.0)
    if "settle" in q:  # the settling phase follows the warm-up and the β annealing
        _float("quant.settle", q.settle, 0.0, 1.0 - float(q.get("warmup", 0.2)))
    if "settle_gain" in q:
        _float("quant.settle_gain", q.settle_gain, 1.0)
    for k in ("reg_lambda", "damp"):
        if k in q:
            _float(f"quant.{k}", q[k], 0.0)
    if "sigma" in q:
        _float("quant.sigma", q.sigma, 0.0)
    if "sparsity" in q:
        _float("quant.sparsity", q.sparsity, 0.0, 1.0, hi_open=True)
    if "scope" in q:
        _need(q.scope in ("layer", "global"), f"quant.scope={q.scope}: allowed: layer, global")
    if q.name not in FULL_PRECISION:
        _need(not (q.name == "adaround" and q.get("fold_bn", True) is False and q.get("activation_in_loss", True)),
              "quant.fold_bn=false: AdaRound reconstructs each layer with its activation (conv → ReLU), "
              "which is only its real output with BatchNorm folded; allowed: true, or "
              "quant.activation_in_loss=false (reconstruct the raw conv output, as the study's code)")
        aug = q.get("calib_augment", "none")
        _need(aug in ("none", "crop_flip"), f"quant.calib_augment={aug}: allowed: none, crop_flip")
        _need(aug == "none" or q.name in NEEDS_CALIBRATION,
              f"quant.calib_augment={aug}: quant={q.name} uses no calibration images; allowed: none")
        _need(not (aug != "none" and q.get("loss", "mse") != "mse"),
              f"quant.loss={q.get('loss')}: its Fisher weights belong to fixed calibration images; "
              f"with quant.calib_augment={aug} allowed: mse")
        passes = _int(cfg, "quant.calib_passes", q.get("calib_passes", 1), 1)
        _need(passes == 1 or aug != "none",
              f"quant.calib_passes={passes}: repeated passes only differ with quant.calib_augment=crop_flip; allowed: 1")
        tune = q.get("bn_tune", "none")
        _need(tune in ("none", "members", "train"), f"quant.bn_tune={tune}: allowed: none, members, train")
        _need(tune == "none" or q.get("fold_bn", True) is False,
              f"quant.bn_tune={tune}: needs BatchNorm left in the model; set quant.fold_bn=false")
        for k in ("bn_tune_images", "bn_tune_batches", "bn_tune_batch_size"):
            if k in q:
                _int(cfg, f"quant.{k}", q[k], 1)
        tern = q.get("ternary", "symmetric")
        _need(tern in ("symmetric", "affine"), f"quant.ternary={tern}: allowed: symmetric, affine")
        _need(not (tern == "affine" and q.get("init", "lp") in ("absmean", "twn")),
              f"quant.init={q.get('init')}: a symmetric ternary baseline; with quant.ternary=affine allowed: lp, minmax")
        if "init" in q:
            _need(q.init in INIT_METHODS, f"quant.init={q.init}: allowed: {', '.join(INIT_METHODS)}")
        cal = q.get("calibration", "members")
        _need(cal in ("members", "nonmembers", "test"),
              f"quant.calibration={cal}: allowed: members, nonmembers, test")
        _int(cfg, _quant_key(cfg, "n_calib"), q.get("n_calib", 1024), 1)
        try:
            check_act_bits(q.get("act_bits"))
            check_act_input(q.get("act_input", 8))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if "act_lr" in q:
            _float("quant.act_lr", q.act_lr, 0.0)
        if "drop_prob" in q:
            try:
                check_drop_prob(q.drop_prob)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    _validate_attack(cfg, m)
    _validate_logger(cfg)
    check_node_keys(cfg)  # after the checks above, whose messages are more specific where they apply
    check_schema_keys(cfg)  # every other level: top-level keys, paths, membership, budget, logger, ...
    check_cache_dir(str(cfg.paths.cache_dir))


TARGETS = ("pool", "external")


def _validate_target(cfg, m: int, membership_mode: str) -> None:
    """``target``: pool models, or an external checkpoint with its members file (files checked here;
    their contents by :func:`validate_external` and the membership split, before any training)."""
    t = cfg.get("target") or {}
    name = t.get("name", "pool")
    _need(name in TARGETS, f"target.name={name}: allowed: {', '.join(TARGETS)}")
    if name != "external":
        return
    for key, what in (("checkpoint", "the model's state_dict (torch.save(model.state_dict(), PATH))"),
                      ("members", "its training examples (docs/audit.md)")):
        path = t.get(key)
        _need(path not in (None, ""), f"target.{key}: required with target=external; set target.{key}=PATH to "
                                      f"{what}")
        _need(Path(str(path)).is_file(), f"target.{key}={path}: no such file")
    _need(membership_mode == "pool", f"membership.target={membership_mode}: the external target brings its own "
                                     f"membership; allowed with target=external: pool")
    left = _as_list("target.leave_out", t.get("leave_out") or [])
    for i in left:
        _need(0 <= _int(cfg, "target.leave_out", i, 0) < m,
              f"target.leave_out: index {i} is outside the pool; allowed: 0..{m - 1} (n_models={m})")
    _need(len(set(int(i) for i in left)) < m - 1, f"target.leave_out={list(left)}: leaves fewer than 2 of the "
                                                  f"n_models={m} pool models as references")


def validate_external(cfg, num_classes: int, in_channels: int) -> None:
    """The external checkpoint loads strictly into the configured model (run before any training)."""
    from src.models import build_model
    from src.models.checkpoint import CheckpointError, load_strict

    if not external_target(cfg):
        return
    try:
        load_strict(build_model(cfg.model, num_classes, in_channels), cfg.target.checkpoint, describe_model(cfg))
    except CheckpointError as e:
        raise ConfigError(str(e)) from None


def config_warnings(cfg, overrides: list[str] | None = None) -> list[str]:
    """One line per setting that runs but does not do what it says. ``overrides``: the command
    line's (``bits`` only counts when the user set it; the default 4 is not a choice)."""
    from src.attacks import MIN_MODELS_PER_EXAMPLE_VARIANCE, PER_EXAMPLE_VARIANCE
    from src.quant import CONTROLS

    out = []
    set_keys = {str(o).split("=", 1)[0].lstrip("+~") for o in overrides or []}
    q = cfg.quant.name
    if q in FULL_PRECISION + tuple(CONTROLS) and ({"bits", "bitwidth"} & set_keys):
        what = "full precision" if q in FULL_PRECISION else f"a float control ({CONTROLS[q]} sets its strength)"
        out.append(f"bits={cfg.bits}: has no effect with quant={q}, {what}; its results are reported as 32-bit")
    if q == "qdrop" and cfg.quant.get("act_bits") is None:
        out.append("quant=qdrop without quant.act_bits: no activation is quantized, so there is nothing to drop; "
                   "this runs BRECQ's weight-only reconstruction")
    if q == "qdrop" and "quant.p" in set_keys:
        out.append(f"quant.p={cfg.quant.p}: the L_p norm of the weight clipping-range search; QDrop's drop "
                   f"probability is quant.drop_prob (now {cfg.quant.get('drop_prob')})")
    if (cfg.get("target") or {}).get("name", "pool") == "external" and {"targets", "n_targets"} & set_keys:
        out.append("targets: has no effect with target=external; the external checkpoint is the one target")
    m = int(cfg.n_models)
    for name in cfg.attack.names:
        if name in PER_EXAMPLE_VARIANCE and m < MIN_MODELS_PER_EXAMPLE_VARIANCE:
            out.append(f"{name}: per-example variance is unreliable with n_models={m} < "
                       f"{MIN_MODELS_PER_EXAMPLE_VARIANCE}; use {PER_EXAMPLE_VARIANCE[name]} "
                       f"(fixed variance) or n_models ≥ {MIN_MODELS_PER_EXAMPLE_VARIANCE}")
    return out


def validate_layers(cfg, num_classes: int, in_channels: int) -> None:
    """``bitwidth.layers`` / ``bitwidth.only`` name layers or blocks the model has (needs the data's
    class and channel counts to build the model; run before any training)."""
    overrides = Overrides.of(cfg.bitwidth)
    if not overrides.active() or cfg.quant.name in FULL_PRECISION:
        return
    from src.models import build_model

    try:
        check_names(build_model(cfg.model, num_classes, in_channels), overrides)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate_with_data(cfg, keep, n_test: int, indices) -> None:
    """Checks that need the dataset and membership split (run after loading, before any training)."""
    q = cfg.quant
    if q.name not in NEEDS_CALIBRATION and q.get("act_bits") is None:  # RTN calibrates activations only
        return
    if cfg.attack.get("reference", "fp") in ("matched", "both"):  # every pool model gets quantized
        indices = range(keep.shape[0])
    cal = q.get("calibration", "members")
    n_calib = int(q.get("n_calib", 1024))
    for t in indices:
        avail = {"members": int(keep[t].sum()), "nonmembers": int((~keep[t]).sum()), "test": n_test}[cal]
        _need(n_calib <= avail, f"{_quant_key(cfg, 'n_calib')}={n_calib}: larger than the {avail} {cal} images of model {t} "
                                f"available for calibration (quant.calibration={cal}); use at most {avail}")


def _n_models(cfg) -> int:
    """``n_models`` against the one minimum of the attacks (src.attacks.min_models)."""
    from src.attacks import ATTACKS, min_models

    names = _as_list("attack.names", cfg.attack.names)
    _need(len(names) > 0, "attack.names=[]: name at least one attack")
    for n in names:
        _need(n in ATTACKS, f"attack.names: unknown attack {n!r}; allowed: {', '.join(ATTACKS)}")
    need = min_models(names)
    from src.attacks import ONLINE_ATTACKS

    why = ("the target left out, every example needs " +
           ("an IN and an OUT reference model" if set(names) & set(ONLINE_ATTACKS) else "an OUT reference model")
           if need > 2 else "the membership split needs two models")
    return _int(cfg, "n_models", cfg.n_models, need, f" for attack.names=[{', '.join(names)}] ({why})")


def _validate_attack(cfg, m: int) -> None:
    from src.attacks import ATTACKS, OFFLINE_ATTACKS, ONLINE_ATTACKS, min_models

    names = _as_list("attack.names", cfg.attack.names)
    _need(len(names) > 0, "attack.names=[]: name at least one attack")
    for n in names:
        _need(n in ATTACKS, f"attack.names: unknown attack {n!r}; allowed: {', '.join(ATTACKS)}")
    need = min_models(names)
    # every example is IN for exactly k = round(M·pkeep) models (src/data/membership.py); leaving the
    # target out, online attacks need k-1 ≥ 1 IN and M-1-k ≥ 1 OUT references, offline ones M-1-k ≥ 1
    k = int(round(m * float(cfg.pkeep)))
    online = [n for n in names if n in ONLINE_ATTACKS]
    offline = [n for n in names if n in OFFLINE_ATTACKS]
    # pool models that are not references: the target (leave-one-out), or target.leave_out of an
    # external target; each may take away one IN or one OUT reference of an example
    t = cfg.get("target") or {}
    left = len({int(i) for i in t.get("leave_out") or []}) if t.get("name", "pool") == "external" else 1
    lo, hi, why = 1, m - 1, "each model needs members and non-members"
    if offline:
        hi, why = min(hi, m - 1 - left), f"{offline[0]} needs an OUT reference for every example"
    if online:
        lo, hi = 1 + left, min(hi, m - 1 - left)
        why = f"{online[0]} needs IN and OUT references for every example"
    _need(lo <= k <= hi, f"pkeep={cfg.pkeep}: with n_models={m} every example is IN for round(n_models·pkeep)={k} "
                         f"models, but {why}; need {lo} ≤ round(n_models·pkeep) ≤ {hi} (e.g. pkeep=0.5 with "
                         f"n_models ≥ {max(need, 2 * lo)})")
    _int(cfg, "attack.bootstrap", cfg.attack.get("bootstrap", 0), 0)
    _float("attack.threshold_fpr", cfg.attack.get("threshold_fpr", 0.01), 0.0, 1.0, lo_open=True, hi_open=True)
    _int(cfg, "attack.threshold_refs", cfg.attack.get("threshold_refs", 4), 1)
    for f in _as_list("attack.fprs", cfg.attack.get("fprs", [])):
        _float("attack.fprs", f, 0.0, 1.0, lo_open=True, hi_open=True)
    ref = cfg.attack.get("reference", "fp")
    _need(ref in ("fp", "matched", "both"), f"attack.reference={ref}: allowed: fp, matched, both")
    from src.attacks.release_list import parse_releases

    try:
        parse_releases(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_logger(cfg) -> None:
    from src.report.wandb_sink import BACKENDS, LOGGER_MODES

    lg = cfg.get("logger") or {}
    backend = str(lg.get("backend", "none"))
    _need(backend in BACKENDS, f"logger.backend={backend}: allowed: {', '.join(BACKENDS)} (or logger=wandb|none)")
    if backend == "wandb":
        mode = str(lg.get("mode", "auto"))
        _need(mode in LOGGER_MODES, f"logger.mode={mode}: allowed: {', '.join(LOGGER_MODES)}")


def _check_device(device: str) -> None:
    import torch

    _need(device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:"),
          f"device={device}: allowed: auto, cpu, cuda, cuda:<index>")
    if device.startswith("cuda"):
        _need(torch.cuda.is_available(), f"device={device}: CUDA is not available on this machine; use device=auto or cpu")


def _validate_dataset(cfg) -> None:
    """Sizes of the generated dataset and optional truncations (the files themselves are checked on load)."""
    d = cfg.dataset
    if d.name == "synthetic":
        for k, lo in (("n_train", 2), ("n_test", 1), ("num_classes", 2), ("image_size", 1), ("channels", 1)):
            if k in d:
                _int(cfg, f"dataset.{k}", d[k], lo)
        if "noise" in d:
            _float("dataset.noise", d.noise, 0.0)
    if d.name == "digits" and "n_test" in d:
        _int(cfg, "dataset.n_test", d.n_test, 1)
        _need(int(d.n_test) <= 1795, f"dataset.n_test={d.n_test}: digits has 1797 images; allowed: 1..1795")
    for k in ("max_train", "max_test", "image_size"):
        if d.get(k) is not None and d.name != "synthetic":
            _int(cfg, f"dataset.{k}", d[k], 1)
    aug = d.get("augment") or {}
    if "pad" in aug:
        _int(cfg, "dataset.augment.pad", aug.pad, 0)
