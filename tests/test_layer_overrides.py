"""Per-layer precision overrides (``bitwidth.only|first|last|layers``, src/quant/policy.py).

Every quantizer gets each layer's own grid; ``fp`` layers stay bit-identical to the BN-folded FP
model; BRECQ reconstructs a block with an ``fp`` layer through its quantized layers only; bad values
and unknown layer names stop a job in one line before any training; jobs that differ only in their
overrides never share a cache entry or a summary label.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from _helpers import digits_resnet
from _main_runner import TINY, merge, run_main
from src.models import SmallResNet
from src.quant import quantize
from src.quant.bn_fold import fold_batchnorm
from src.quant.grid import n_levels
from src.quant.policy import FP, POLICIES, Overrides, layer_bits, quantizable_layers

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
          "layer2.0.downsample.0", "fc"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SmallResNet trained for a few seconds on the embedded digits."""
    model, x, _, _ = digits_resnet(str(tmp_path_factory.mktemp("data")), epochs=4)
    # BN statistics away from their init, so folding changes the weights (a folded copy is not a no-op)
    return model, x[:256]


def qcfg(name: str, **kw):
    return OmegaConf.create({"name": name, "iters": 40, "batch_size": 32, "lr": 1e-2, "init": "lp", "p": 2.4,
                             "symmetric": False, "fold_bn": True, "loss": "mse", "progress": False, "seed": 0,
                             "damp": 0.01, **kw})


# ------------------------------------------------------------------------------------- resolution

def _policy_base(policy: str, bits: float) -> dict:
    base = {n: bits for n in LAYERS}
    if policy == "8bit_ends":
        base["conv1"] = base["fc"] = 8.0
    if policy == "paper" and bits < 2:
        base["fc"] = 8.0
    return base


OVERRIDE_CASES = [
    ({}, lambda b, bits: b),
    ({"last": 4}, lambda b, bits: {**b, "fc": 4.0}),
    ({"last": "fp"}, lambda b, bits: {**b, "fc": FP}),
    ({"last": 1.58}, lambda b, bits: {**b, "fc": 1.58}),
    ({"first": 2, "last": "FP"}, lambda b, bits: {**b, "conv1": 2.0, "fc": FP}),
    ({"layers": {"layer2.0.conv1": 8, "layer1.0.conv2": "fp"}},
     lambda b, bits: {**b, "layer2.0.conv1": 8.0, "layer1.0.conv2": FP}),
    ({"only": "layer1.0"}, lambda b, bits: {n: (bits if n.startswith("layer1.0.") else FP) for n in LAYERS}),
    ({"only": "stem"}, lambda b, bits: {n: (bits if n == "conv1" else FP) for n in LAYERS}),
    ({"only": "layer2"}, lambda b, bits: {n: (bits if n.startswith("layer2.") else FP) for n in LAYERS}),
    ({"only": "fc", "first": 3}, lambda b, bits: {n: ({"fc": bits, "conv1": 3.0}.get(n, FP)) for n in LAYERS}),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", range(len(OVERRIDE_CASES)))
def test_layer_bits_each_override_on_each_policy(policy, case):
    spec, expect = OVERRIDE_CASES[case]
    model = SmallResNet(10, 1, 8)
    assert [n for n, _ in quantizable_layers(model)] == LAYERS
    for bits in (1.58, 4.0):
        got = layer_bits(model, bits, policy, "digits", Overrides.of(spec))
        assert got == expect(_policy_base(policy, bits), bits), (policy, spec, bits)
        assert list(got) == LAYERS  # forward order kept


def test_override_labels():
    assert Overrides.of({}).describe() is None and not Overrides.of({"layers": None}).active()
    assert Overrides.of({"last": 4}).describe() == "last 4"
    assert Overrides.of({"last": "fp", "first": 1.58}).describe() == "first 1.58, last fp"
    assert Overrides.of({"only": "layer1.0", "layers": {"fc": 2}}).describe() == "only layer1.0, fc 2"


# ------------------------------------------------------------------------------- every quantizer

# bits=1.58 everywhere else; layer1.0 is a mixed block (conv1 fp, conv2 ternary)
MIXED = {"first": 4, "last": "fp", "layers": {"layer1.0.conv1": "fp", "layer2.0.conv2": 3}}
MIXED_BITS = {"conv1": 4.0, "layer1.0.conv1": FP, "layer1.0.conv2": 1.58, "layer2.0.conv1": 1.58,
              "layer2.0.conv2": 3.0, "layer2.0.downsample.0": 1.58, "fc": FP}


@pytest.fixture(scope="module")
def mixed_results(trained):
    model, calib = trained
    # qdrop with 4-bit activations: its drop runs through a block with an fp conv inside
    return {m: quantize(model, 1.58, qcfg(m, **({"act_bits": 4} if m == "qdrop" else {})), "uniform", calib,
                        device="cpu", overrides=Overrides.of(MIXED))
            for m in ("rtn", "adaround", "brecq", "qdrop", "obc", "gptq")}


@pytest.mark.parametrize("method", ["rtn", "adaround", "brecq", "qdrop", "obc", "gptq"])
def test_every_quantizer_honours_mixed_precision(trained, mixed_results, method):
    model, _ = trained
    res = mixed_results[method]
    assert res.layer_bits == MIXED_BITS
    assert set(res.export) == {n for n, b in MIXED_BITS.items() if b != FP}
    ref = fold_batchnorm(copy.deepcopy(model).eval())
    ref_mods, q_mods = dict(ref.named_modules()), dict(res.model.named_modules())
    assert not torch.equal(ref_mods["conv1"].weight, model.conv1.weight)  # folding did change the weights
    for name, bits in MIXED_BITS.items():
        w, w_fp = q_mods[name].weight.detach(), ref_mods[name].weight.detach()
        if bits == FP:  # untouched by every step: bit-identical to the folded FP layer
            assert torch.equal(w, w_fp), name
            assert torch.equal(q_mods[name].bias, ref_mods[name].bias), name
            continue
        assert not torch.equal(w, w_fp), name
        assert res.export[name]["bits"] == bits
        levels = torch.tensor([len(torch.unique(c)) for c in w.reshape(w.shape[0], -1)])
        assert int(levels.max()) <= n_levels(bits), (name, bits, int(levels.max()))
        if bits >= 3:  # its own grid, not the job's ternary one
            assert int(levels.max()) > 3, (name, bits)


def test_brecq_mixed_block_reconstructs_only_its_quantized_layers(trained, monkeypatch):
    """Block layer1.0 holds an fp conv1 and a ternary conv2: its rounding variables are conv2's alone,
    and the block is fitted with conv1 at full precision inside it."""
    import src.quant.rounding as R

    model, calib = trained
    seen: list[list[str]] = []
    init = R._Rounders.__init__

    def record(self, rounders):
        seen.append(list(rounders))
        init(self, rounders)

    monkeypatch.setattr(R._Rounders, "__init__", record)
    res = quantize(model, 1.58, qcfg("brecq", iters=60), "uniform", calib, device="cpu",
                   overrides=Overrides.of(MIXED))
    # units: stem (conv1), layer1.0 (conv2 only), layer2.0 (three convs), head fc is fp: no unit
    assert seen == [["conv1.weight"], ["conv2.weight"], ["conv1.weight", "conv2.weight", "downsample.0.weight"]]
    ref = fold_batchnorm(copy.deepcopy(model).eval())
    assert torch.equal(res.model.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    # conv2 was reconstructed (not left at round-to-nearest) against the block output with the FP conv1
    rtn = quantize(model, 1.58, qcfg("rtn"), "uniform", calib, device="cpu", overrides=Overrides.of(MIXED))
    assert not torch.equal(res.model.layer1[0].conv2.weight, rtn.model.layer1[0].conv2.weight)


# ---------------------------------------------------------------------------------- jobs and CLI

def test_bad_override_values_fail_in_one_line(tiny_cfg):
    from src.main import prepare
    from src.validate import ConfigError

    for over, needles in [(["bitwidth.last=32"], ["bitwidth.last=32", "1.58", "fp"]),
                          (["bitwidth.first=fp16"], ["bitwidth.first=fp16", "allowed"]),
                          (["bitwidth.layers={fc:2.5}"], ["bitwidth.layers.fc=2.5", "allowed"]),
                          (["bitwidth.layers={nope:4}"], ["nope", ", ".join(LAYERS)]),
                          (["bitwidth.only=layer9"], ["bitwidth.only=layer9", "stem", "layer1.0", "fc"]),
                          (["quant=noise", "bitwidth.last=4"], ["quant=noise", "last 4"])]:
        with pytest.raises(ConfigError) as ei:
            prepare(tiny_cfg(*over))
        msg = str(ei.value)
        assert "\n" not in msg and all(n in msg for n in needles), (over, msg)


def test_unknown_layer_stops_the_job_before_training(tmp_path):
    cache = tmp_path / "cache"
    p = run_main(merge(TINY, ["bitwidth.layers={layer3.conv1:fp}"]), cache, tmp_path / "run", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "layer3.conv1" in errors[0] and ", ".join(LAYERS) in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not list(cache.rglob("*.pt")) if cache.exists() else True


def test_jobs_record_layer_bits_and_key_the_cache_apart(tiny_cfg, run_job, tmp_path):
    import src.pipeline as P

    plain, _ = run_job(tiny_cfg("quant=rtn", "bits=2"), "plain")
    last_fp, _ = run_job(tiny_cfg("quant=rtn", "bits=2", "bitwidth.last=fp"), "last_fp")
    last_4, _ = run_job(tiny_cfg("quant=rtn", "bits=2", "bitwidth.last=4"), "last_4")
    assert set(plain["quant"]["layer_bits"].values()) == {2.0} and plain["job"]["layers"] is None
    assert last_fp["quant"]["layer_bits"] == {**plain["quant"]["layer_bits"], "fc": "fp"}
    assert last_4["quant"]["layer_bits"] == {**plain["quant"]["layer_bits"], "fc": 4.0}
    assert (last_fp["job"]["layers"], last_4["job"]["layers"]) == ("last fp", "last 4")
    quantized = list((tmp_path / "cache" / "quantized").glob("*.json"))
    assert len(quantized) == 3  # one artifact each; the pool is shared
    assert last_fp["pool"] == plain["pool"]
    # no override: the key is what it always was (no layer map), so existing caches stay valid
    assert "layer_bits" not in P.quant_key(tiny_cfg("quant=rtn", "bits=2"), {"m": 0})
    with pytest.raises(ValueError, match="layer_bits"):
        P.quant_key(tiny_cfg("quant=rtn", "bits=2", "bitwidth.last=4"), {"m": 0})


def test_override_that_resolves_to_the_policy_map_reuses_the_quantization(tiny_cfg, run_job, tmp_path):
    """``paper`` puts the classifier at 8 bits below 2 bits, so ``bitwidth.last=8`` at 1.58 bits asks for
    the very map the job without overrides ran: same cache entry, same numbers. ``last=4`` is a new map."""
    import src.pipeline as P

    plain, _ = run_job(tiny_cfg("quant=rtn", "bits=1.58", "bitwidth=paper"), "plain")
    same, _ = run_job(tiny_cfg("quant=rtn", "bits=1.58", "bitwidth=paper", "bitwidth.last=8"), "last_8")
    assert plain["quant"]["layer_bits"]["fc"] == 8.0
    assert same["quant"]["layer_bits"] == plain["quant"]["layer_bits"]
    assert same["job"]["layers"] == "last 8"
    assert same["utility"]["test_acc"] == plain["utility"]["test_acc"]
    assert len(list((tmp_path / "cache" / "quantized").glob("*.json"))) == 1
    policy = {"conv": 1.58, "fc": 8.0}
    cfg = tiny_cfg("quant=rtn", "bits=1.58", "bitwidth=paper", "bitwidth.last=4")
    assert "layer_bits" not in P.quant_key(cfg, {"m": 0}, dict(policy), policy)
    assert P.quant_key(cfg, {"m": 0}, {**policy, "fc": 4.0}, policy)["layer_bits"] == {"conv": 1.58, "fc": 4.0}


# -------------------------------------------------------------------------------------- summaries

def _result(quant: str, layers: str | None, bits: float = 1.58, acc: float = 0.8) -> dict:
    m = {"auc": 0.6, "balanced_accuracy": 0.55, "tpr_at_fpr_1e-2": 0.05, "tpr_at_fpr_1e-3": 0.01,
         "tpr_at_fpr_1e-4": 0.0, "n_nonmembers": 500}
    return {"config": {"attack": {"names": ["lira_online"]}},
            "job": {"dataset": "cifar10", "model": "smallcnn", "quant": quant, "bits": bits, "policy": "paper",
                    "layers": layers, "targets": [0], "reference": "fp"},
            "utility": {"fp_test_acc": 0.9, "test_acc": acc, "fp_train_acc": 1.0, "train_acc": 0.95,
                        "accuracy_drop": 0.9 - acc},
            "attacks": {"lira_online": dict(m)}, "fp_attacks": {"lira_online": dict(m, auc=0.7)}}


def test_summary_labels_jobs_apart(tmp_path):
    from src.report import summary as S
    from src.report.dashboard import chart_specs, series_label
    from src.report.plots import point_label

    jobs = [_result(q, lay) for q in ("obc", "brecq") for lay in (None, "last 2", "last 8", "last fp")]
    for n, r in enumerate(jobs):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "results.json").write_text(json.dumps(r))
    rows = [r for r in S.rows_from_results(S.collect(tmp_path)) if r["quant"] != "fp"]
    labels = [(S.method_label(r), S.fmt_bits(r["bits"])) for r in rows]
    assert len(set(labels)) == len(rows) == 8
    assert ("obc (last 8)", "1.58") in labels
    assert len({series_label(r, False) for r in rows}) == 8 and len({point_label(r) for r in rows}) == 4
    md_rows = [ln for ln in S.markdown_table(S.rows_from_results(S.collect(tmp_path)), "lira_online").splitlines()
               if ln.startswith("| ") and "method" not in ln]
    assert len(md_rows) == len(set(md_rows)) == 9  # 8 jobs + FP
    S.write_summary(tmp_path, quiet=True)
    csv_text = (tmp_path / "summary.csv").read_text()
    assert "last fp" in csv_text and csv_text.splitlines()[0].split(",")[:6] == [
        "dataset", "model", "quant", "bits", "policy", "layers"]
    assert chart_specs(rows)


# ------------------------------------------------------------------------------- ablation report

TPR_KEY = "tpr_at_fpr_1e-3"


def _job(quant: str, layer_bits: dict, only: str | None = None, bits: float = 1.58, d_auc: float = -0.01,
         tpr: float = 0.01) -> dict:
    r = _result(quant, None, bits)
    m = r["attacks"]["lira_online"]
    m.update({TPR_KEY: tpr, "n_targets": 2, "ci": {"auc": [0.55, 0.65], TPR_KEY: [0.0, 2 * tpr]},
              "paired": {"auc": {"delta": d_auc, "ci": [d_auc - 0.005, d_auc + 0.005], "significant": True},
                         TPR_KEY: {"delta": tpr - 0.02, "ci": [-0.03, 0.01], "significant": False}}})
    r["config"]["bitwidth"] = {"policy": "paper", "only": only}
    r["quant"] = {"layer_bits": layer_bits}
    r["utility"]["per_target"] = [{"test_acc": 0.80, "fp_test_acc": 0.90}, {"test_acc": 0.82, "fp_test_acc": 0.90}]
    return r


def test_ablation_report_orders_and_labels_points(tmp_path):
    from src.report import ablation as A

    sweep = tmp_path / "last"
    lasts = ["fp", 8, 2, 1.58]  # written out of order on purpose
    jobs = [_job(q, {"conv1": 1.58, "fc": v}, tpr=0.0 if v == 1.58 else 0.01) for q in ("obc", "adaround")
            for v in lasts]
    for n, r in enumerate(jobs):
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(r))
    paths = A.last_layer(sweep)
    assert paths["figure"].stat().st_size > 10_000
    rows = [ln for ln in paths["table"].read_text().splitlines() if ln.startswith("| ") and "method" not in ln]
    assert rows[0].startswith("| FP |")
    assert [ln.split("|")[3].strip() for ln in rows[1:5]] == ["1.58", "2", "8", "fp"]
    assert {ln.split("|")[1].strip() for ln in rows[1:]} == {"obc", "adaround"}
    assert "-0.0100 [-0.0150, -0.0050]*" in rows[1]
    assert "-9.00 [-21.71, +3.71]" in rows[1]  # Δ test acc: per-target pairs, t-interval (df = 1)

    attr = tmp_path / "attr"
    names = ["conv1", "layer1.0.conv1", "fc"]
    for n, (part, b) in enumerate([(p, b) for p in reversed(names) for b in (2.0, 1.58)]):
        lb = {x: (b if x == part else "fp") for x in names}
        (attr / str(n)).mkdir(parents=True)
        (attr / str(n) / "results.json").write_text(json.dumps(_job("obc", lb, only=part, bits=b)))
    parts, pts = A.attribution_points(A.collect(attr), "lira_online")
    assert parts == names and len(pts) == 6  # forward order, whatever order the jobs ran in
    paths = A.attribution(attr)
    assert paths["figure"].stat().st_size > 10_000
    assert [ln.split("|")[1].strip() for ln in paths["table"].read_text().splitlines()
            if ln.startswith("| ") and "part" not in ln] == ["conv1", "conv1", "layer1.0.conv1", "layer1.0.conv1",
                                                             "fc", "fc"]


def test_ablation_report_adds_the_pooled_roc_with_several_targets(tmp_path):
    """With pooled blocks (several targets) the table carries the pooled TPR@0.1 %FPR with its interval
    and false positives, and the pooled paired Δ; the TPR panel switches to the pooled TPR; a named
    attack other than the default writes its own pair of files."""
    from src.report import ablation as A

    def pooled(r, tpr, n_fp, delta):
        for block in ("attacks", "fp_attacks"):
            r[block]["lira_online_fixed"] = m = json.loads(json.dumps(r[block]["lira_online"]))
            m["pooled"] = {TPR_KEY: tpr, "ci": {TPR_KEY: [tpr / 2, 2 * tpr]}, "fp_at_fpr_1e-3": n_fp,
                           "n_nonmembers": 32000, "n_targets": 16}
            if block == "attacks":
                m["paired_pooled"] = {TPR_KEY: {"delta": delta, "ci": [delta - 0.01, delta + 0.01],
                                                "significant": True}}
        return r

    sweep = tmp_path / "last"
    for n, v in enumerate([1.58, "fp"]):
        r = pooled(_job("obc", {"conv1": 1.58, "fc": v}), 0.02 + 0.01 * n, 32, -0.02 + 0.01 * n)
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(r))
    paths = A.last_layer(sweep, "lira_online_fixed")
    assert paths["table"].name == "ablation_last_layer_lira_online_fixed.md" and paths["figure"].exists()
    text = paths["table"].read_text()
    assert "32,000 non-member trials" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert rows[0].rstrip().endswith("| 2.00 [1.00, 4.00] (32 FP) | – |")  # FP: its own pooled TPR
    assert rows[1].rstrip().endswith("| 2.00 [1.00, 4.00] (32 FP) | -2.00 [-3.00, -1.00]* |")
    assert rows[2].rstrip().endswith("| 3.00 [1.50, 6.00] (32 FP) | -1.00 [-2.00, +0.00]* |")
    points = A.last_layer_points(A.collect(sweep), "lira_online_fixed")
    assert A._all_pooled(points, A._fp_point(A.collect(sweep), "lira_online_fixed"))
    assert not A._all_pooled(A.last_layer_points(A.collect(sweep), "lira_online"), None)
    assert A.last_layer(sweep)["table"].name == "ablation_last_layer.md"  # the default attack, no pooled column
    assert "pooled" not in (sweep / "ablation_last_layer.md").read_text()
