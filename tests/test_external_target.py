"""Auditing a model trained outside the project (``target=external``, docs/audit.md).

The round trip is the strongest check: a pool model handed back through the external path, with
itself left out of the references, is the same target against the same references as the internal
leave-one-out job, so every number must be identical (not close: the same weights, scores and
reference rows go through the same code). The export is checked by LiRA written here from the
paper and the file layout alone.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import subprocess

import numpy as np
import pytest
import torch
from _main_runner import PY, REPO, TINY, env, merge, run_main

from src.validate import ConfigError

# online and offline LiRA, RMIA and the loss attack; RTN (no calibration draw, whose seed follows the
# row index) so that the quantized target of the round trip is the same model in both paths
ROUND = ["attack=all", "quant=rtn", "bits=4", "targets=[1]"]


def _strip_ids(obj):
    """Results without the target's row id (pool index 1 in one path, the external row 4 in the other)."""
    if isinstance(obj, dict):
        return {k: _strip_ids(v) for k, v in obj.items() if k not in ("targets", "target")}
    if isinstance(obj, list):
        return [_strip_ids(v) for v in obj]
    return obj


def _run_capturing(run, cfg) -> tuple[dict, str]:
    """``run(cfg)`` with what it prints to the console and logs (src.*, INFO) captured as text."""
    out, handler = io.StringIO(), logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("src")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            results = run(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return results, out.getvalue() + handler.stream.getvalue()


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """The internal job (pool model 1 attacked, models 0, 2, 3 as references) and the same model
    saved as a state_dict + members file and audited through ``target=external``; with each job's
    console output and log ({"internal": text, "external": text})."""
    from _main_runner import compose

    from src import pipeline as P
    from src.cache import ArtifactStore
    from src.main import run

    tmp = tmp_path_factory.mktemp("round")
    base = merge(TINY, ROUND, [f"paths.cache_dir={tmp / 'cache'}"])
    import os

    cwd = os.getcwd()
    try:
        (tmp / "internal").mkdir()
        os.chdir(tmp / "internal")
        cfg = compose(base)
        internal, internal_text = _run_capturing(run, cfg)
        # the user's files: the pool model's weights and its members, as indices in the candidate order
        from src.main import prepare

        data, keep, _ = prepare(cfg)
        model, _ = P.get_pool_model(cfg, data, keep, 1, ArtifactStore(cfg.paths.cache_dir), "cpu")
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "members.txt").write_text("".join(f"{i}\n" for i in np.flatnonzero(keep[1])))
        (tmp / "external").mkdir()
        os.chdir(tmp / "external")
        ext_cfg = compose(merge(base, ["target=external", f"target.checkpoint={tmp / 'model.pt'}",
                                       f"target.members={tmp / 'members.txt'}", "target.leave_out=[1]"]))
        external, external_text = _run_capturing(run, ext_cfg)
    finally:
        os.chdir(cwd)
    return internal, external, tmp, {"internal": internal_text, "external": external_text}


def test_round_trip_identical(round_trip):
    internal, external, tmp, _ = round_trip
    assert external["job"]["targets"] == [4]  # the row after the 4 pool models
    for block in ("attacks", "fp_attacks", "utility"):
        assert _strip_ids(external[block]) == _strip_ids(internal[block]), block
    a, b = np.load(tmp / "internal" / "scores.npz"), np.load(tmp / "external" / "scores.npz")
    for k in a.files:
        if k.startswith(("attack_", "fp_attack_")) or k == "target_phi":
            assert np.array_equal(a[k], b[k]), k
    # the external row of the keep matrix is pool model 1's membership; the pool rows are the same
    assert np.array_equal(b["keep"][4], a["keep"][1]) and np.array_equal(b["keep"][:4], a["keep"])
    # a pool model resembles its own pool: no warning, and the numbers are recorded
    assert external["resemblance"]["test_acc"]["inside"] and not any("resemble" in w for w in external["warnings"])


def _lira_online_median(ref_phi, ref_keep, target_phi, floor=1e-6):
    """LiRA online (Carlini et al. 2022, Eq. 4) from the exported arrays: per example and query the
    median and population σ of the IN and OUT references, the first k of each in model order with
    k = the smallest IN or OUT count over all examples (the job's equal-count rule, docs/attacks.md),
    then the mean over queries of the Gaussian log-likelihood ratio."""
    n_in, n_out = ref_keep.sum(0), (~ref_keep).sum(0)
    k = int(min(n_in.min(), n_out.min()))
    scores = np.empty(ref_phi.shape[1])
    for i in range(ref_phi.shape[1]):
        x = target_phi[i].astype(np.float64)
        llr = 0.0
        parts = []
        for world in (ref_keep[:, i], ~ref_keep[:, i]):
            vals = ref_phi[np.flatnonzero(world)[:k], i].astype(np.float64)  # [k, Q]
            mu, sd = np.median(vals, 0), np.maximum(vals.std(0), floor)
            parts.append(-0.5 * ((x - mu) / sd) ** 2 - np.log(sd))
        llr = parts[0] - parts[1]
        scores[i] = llr.mean()
    return scores


def _auc(scores, members):
    """Mann–Whitney AUC: P(member score > non-member score) + ½ P(tie)."""
    pos, neg = scores[members], scores[~members]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def test_export_reproduces_auc(round_trip, tmp_path):
    """The files ``export_lira`` writes, read as the LiRA reference code reads them (a folder per
    model with keep.npy and scores/*.npy, the last file in name order), give the job's AUCs."""
    _, external, tmp, _ = round_trip
    out = tmp_path / "lira"
    p = subprocess.run([PY, "-m", "src.report.export_lira", str(tmp / "external"), str(out)], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for view, block in (("fp", "fp_attacks"), ("quantized", "attacks")):
        d = out / f"target4-{view}"
        dirs = sorted(x for x in d.iterdir() if x.is_dir())
        assert all(x.name.startswith("experiment") for x in dirs) and not [x for x in d.iterdir() if x.is_file()]
        load = [(np.load(x / "keep.npy"), np.load(x / "scores" / sorted((x / "scores").iterdir())[-1].name))
                for x in dirs]
        # lira-pytorch reads scores.npy beside keep.npy: the same array
        assert all(np.array_equal(np.load(x / "scores.npy"), s) for x, (_, s) in zip(dirs, load))
        target = [i for i, x in enumerate(dirs) if x.name == "experiment-target"]
        assert len(target) == 1
        t_keep, t_scores = load[target[0]]
        refs = [v for i, v in enumerate(load) if i != target[0]]
        ref_keep = np.stack([k for k, _ in refs])
        ref_phi = np.stack([s for _, s in refs])
        assert ref_keep.dtype == bool and ref_phi.shape == (3, len(t_keep), 2)  # 3 references, 2 query views
        lira = _auc(_lira_online_median(ref_phi, ref_keep, t_scores), t_keep)
        loss = _auc(t_scores.astype(np.float64).mean(1), t_keep)
        metrics = external[block]
        assert math.isclose(lira, metrics["lira_online"]["per_target"][0]["auc"], abs_tol=1e-12), view
        assert math.isclose(loss, metrics["loss"]["per_target"][0]["auc"], abs_tol=1e-12), view
    index = json.loads((out / "index.json").read_text())
    assert index["target4-fp"]["references"] == [0, 2, 3]
    # the folders keep the row number (the data's id); the index and the printed lines name the model
    assert index["target4-fp"]["target"] == 4 and index["target4-fp"]["label"] == "external (model.pt)"
    assert f"{out / 'target4-fp'}: target external (model.pt), fp, 3 references (fp)" in p.stdout.splitlines()


def test_external_target_named_in_reports(round_trip, capsys):
    """Wherever a target is named for a reader (console title, log, results.json's display names, the
    ε table) the external model is ``external (<checkpoint file name>)``, not the keep row after the
    pool; the row stays the target's id in the data. The pool job is still named by its index."""
    from src.report import epsilon

    internal, external, tmp, text = round_trip
    assert external["job"]["targets"] == [4] and external["job"]["target_labels"] == ["external (model.pt)"]
    assert internal["job"]["targets"] == [1] and internal["job"]["target_labels"] == ["1"]
    title = next(ln for ln in text["external"].splitlines() if "reference=fp" in ln)
    assert title.endswith(" / rtn 4-bit  target external (model.pt)  reference=fp")
    assert "quantize: model external (model.pt) with rtn" in text["external"]
    assert "targets [1]  reference=fp" in text["internal"] and "quantize: model 1 with rtn" in text["internal"]

    assert epsilon.main([str(tmp / "external"), "--attack", "loss"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith(("attacks ", "fp_attacks "))]
    per_target = [r for r in rows if r[2] != "all"]
    assert len(per_target) == 2 and all(r[2:4] == ["external", "(model.pt)"] for r in per_target)
    assert all(p["target"] == 4 for r in epsilon.job_epsilons(tmp / "external", ["loss"]) for p in r["per_target"])


def test_rounding_convergence_names_the_external_target():
    """The worst-unit line of learned rounding names the external target by its checkpoint; the
    per-target records stay keyed by the keep row."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from src.report.results import _convergence

    unit = {"unit": "stem", "layers": ["stem"], "iters": 10, "n_vars": 100, "unsettled": 0.2, "soft_loss": 1.0,
            "hard_loss": 3.0}
    cfg = OmegaConf.create({"n_models": 16, "target": {"name": "external", "checkpoint": "/a/b/mine.pt"}})
    conv = _convergence(cfg, [SimpleNamespace(index=16, convergence=[unit])])["convergence"]
    assert conv["summary"]["worst"] == {"unsettled": "target external (mine.pt) stem",
                                        "hard_over_soft": "target external (mine.pt) stem"}
    assert list(conv["per_target"]) == ["16"]
    pool = OmegaConf.create({"n_models": 16, "target": {"name": "pool"}})
    assert _convergence(pool, [SimpleNamespace(index=3, convergence=[unit])])["convergence"]["summary"]["worst"][
        "unsettled"] == "target 3 stem"


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def ext_files(tmp_path, tiny_cfg):
    """A valid external checkpoint (an untrained smallcnn of the TINY job's shape) and members file."""
    from src.data import load_dataset
    from src.models import build_model

    cfg = tiny_cfg()
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    torch.save(build_model(cfg.model, data.num_classes, data.in_channels).state_dict(), tmp_path / "ok.pt")
    (tmp_path / "members.txt").write_text("".join(f"{i}\n" for i in range(0, len(data.y_train), 2)))
    return tmp_path, len(data.y_train)


def _refused(tiny_cfg, run_job, tmp_path, *overrides):
    """The one-line ConfigError of an external job, and proof that nothing was trained."""
    cfg = tiny_cfg("target=external", *overrides)
    with pytest.raises(ConfigError) as e:
        run_job(cfg)
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_checkpoint_of_other_width_or_architecture(ext_files, tiny_cfg, run_job):
    from src.models import build_model

    tmp, _ = ext_files
    torch.save(build_model({"name": "smallcnn", "width": 8}, 4, 1).state_dict(), tmp / "narrow.pt")
    members = f"target.members={tmp / 'members.txt'}"
    want = build_model({"name": "smallcnn", "width": 16}, 4, 1).state_dict()
    shape = lambda t: "[" + ",".join(map(str, t.shape)) + "]"  # noqa: E731
    msg = _refused(tiny_cfg, run_job, tmp, f"target.checkpoint={tmp / 'narrow.pt'}", members)
    assert msg.startswith(f"target.checkpoint={tmp / 'narrow.pt'}: does not fit model=smallcnn (width=16)")
    got = torch.load(tmp / "narrow.pt")
    differ = [k for k in want if got[k].shape != want[k].shape]  # same keys, narrower tensors
    assert set(got) == set(want) and "missing" not in msg and "unexpected" not in msg
    assert f"{len(differ)} shape(s) differ: {differ[0]} checkpoint {shape(got[differ[0]])} vs model " \
           f"{shape(want[differ[0]])}" in msg
    torch.save(build_model({"name": "vgg11_bn", "width": 8}, 4, 1).state_dict(), tmp / "vgg.pt")
    msg = _refused(tiny_cfg, run_job, tmp, f"target.checkpoint={tmp / 'vgg.pt'}", members)
    got = torch.load(tmp / "vgg.pt")
    missing, unexpected = [k for k in want if k not in got], [k for k in got if k not in want]
    assert f"missing {len(missing)} key(s): {missing[0]} {shape(want[missing[0]])}" in msg
    assert f"unexpected {len(unexpected)} key(s): {unexpected[0]} {shape(got[unexpected[0]])}" in msg


@pytest.mark.parametrize("content, needle", [
    ("", "no member among the 256 candidates"),
    ("# only a comment\n", "no member among the 256 candidates"),
    ("3\n999\n", "index 999 (line 2) is outside the candidate set; allowed: 0..255"),
    ("train/a/x.png\n", "not read from image files"),
])
def test_bad_members_text(ext_files, tiny_cfg, run_job, content, needle):
    tmp, _ = ext_files
    (tmp / "bad.txt").write_text(content)
    msg = _refused(tiny_cfg, run_job, tmp, f"target.checkpoint={tmp / 'ok.pt'}", f"target.members={tmp / 'bad.txt'}")
    assert msg.startswith(f"target.members={tmp / 'bad.txt'}: ") and needle in msg


def test_bad_members_mask(ext_files, tiny_cfg, run_job):
    tmp, n = ext_files
    np.save(tmp / "short.npy", np.ones(n - 1, dtype=bool))
    msg = _refused(tiny_cfg, run_job, tmp, f"target.checkpoint={tmp / 'ok.pt'}", f"target.members={tmp / 'short.npy'}")
    assert f"a boolean mask of length {n - 1}, but the candidate set has {n} examples" in msg
    np.save(tmp / "all.npy", np.ones(n, dtype=bool))
    msg = _refused(tiny_cfg, run_job, tmp, f"target.checkpoint={tmp / 'ok.pt'}", f"target.members={tmp / 'all.npy'}")
    assert "membership inference needs non-members" in msg


def test_missing_keys_refused_by_validate(tiny_cfg):
    from src.validate import validate

    with pytest.raises(ConfigError, match=r"^target.checkpoint: required with target=external"):
        validate(tiny_cfg("target=external"))
    with pytest.raises(ConfigError, match=r"^target.leave_out: index 7 is outside the pool; allowed: 0..3"):
        validate(tiny_cfg("target=external", f"target.checkpoint={REPO / 'README.md'}",
                          f"target.members={REPO / 'README.md'}", "target.leave_out=[7]"))
    with pytest.raises(ConfigError, match=r"^membership.target=independent: the external target"):
        validate(tiny_cfg("target=external", f"target.checkpoint={REPO / 'README.md'}",
                          f"target.members={REPO / 'README.md'}", "membership.target=independent"))


def _image_folder(root, n_per_class=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i:02d}.png")


def test_members_as_paths_survive_order_and_subset(tmp_path):
    """Relative paths select the same examples as indices into the documented order; a training
    image dropped by max_train is skipped, a path that is no training image is refused."""
    from omegaconf import OmegaConf

    from src.data import load_dataset
    from src.data.datasets import train_files
    from src.data.members import MembersError, read_members

    _image_folder(tmp_path / "img")
    ds = OmegaConf.create({"name": "imagefolder", "root": str(tmp_path / "img"), "max_train": 8, "split_seed": 0})
    data = load_dataset(ds, "")
    everything = train_files(ds, "", subset=False)
    files = train_files(ds, "")
    assert everything == [f"train/{c}/{i:02d}.png" for c in ("ant", "bee") for i in range(6)]  # documented order
    assert len(files) == len(data.y_train) == 8 and set(files) < set(everything)
    # the labels follow the class folder of each listed path
    assert [("ant", "bee")[int(y)] for y in data.y_train] == [f.split("/")[1] for f in files]
    dropped = sorted(set(everything) - set(files))
    chosen = [files[5], files[0], "./" + files[2]]
    (tmp_path / "m.txt").write_text("\n".join(reversed(chosen + dropped)) + "\n")
    mask = read_members(tmp_path / "m.txt", 8, files, everything)
    assert np.flatnonzero(mask).tolist() == [0, 2, 5]
    (tmp_path / "idx.txt").write_text("5\n0\n2\n")
    assert np.array_equal(read_members(tmp_path / "idx.txt", 8, files, everything), mask)
    np.save(tmp_path / "idx.npy", np.array([2, 5, 0]))
    assert np.array_equal(read_members(tmp_path / "idx.npy", 8, files, everything), mask)
    (tmp_path / "typo.txt").write_text(files[0] + "\ntrain/ant/99.png\n")
    with pytest.raises(MembersError, match=r"line 2 names 'train/ant/99.png', which is not a training image"):
        read_members(tmp_path / "typo.txt", 8, files, everything)


def test_cli_unknown_member_path_exit_2(tmp_path):
    """From the command line: one line on stderr, exit status 2, no model trained."""
    from src.models import build_model

    _image_folder(tmp_path / "img")
    torch.save(build_model({"name": "smallcnn", "width": 16}, 2, 3).state_dict(), tmp_path / "m.pt")
    (tmp_path / "members.txt").write_text("train/ant/00.png\ntrain/cat/00.png\n")
    p = run_main(merge(TINY, ["dataset=imagefolder", f"dataset.root={tmp_path / 'img'}", "target=external",
                              f"target.checkpoint={tmp_path / 'm.pt'}", f"target.members={tmp_path / 'members.txt'}"]),
                 tmp_path / "cache", tmp_path / "run", check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: target.members={tmp_path / 'members.txt'}: line 2 names "
                                                   f"'train/cat/00.png', which is not a training image")
    assert not (tmp_path / "cache" / "models").exists()


@pytest.mark.slow
def test_plain_pytorch_model_audited_from_cli(tmp_path):
    """A model trained with a plain PyTorch loop (not the project's trainer) on a random half of the
    candidates is audited end to end from the command line: FP and quantized, every attack."""
    from _main_runner import compose

    from src.data import load_dataset, normalize
    from src.models import build_model

    cfg = compose(TINY)
    data = load_dataset(cfg.dataset, cfg.paths.data_dir)
    rng = np.random.default_rng(1)
    members = np.sort(rng.choice(len(data.y_train), len(data.y_train) // 2, replace=False))
    torch.manual_seed(1)
    model = build_model({"name": "smallcnn", "width": 16}, data.num_classes, data.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = normalize(data.x_train[members], data.mean, data.std)
    y = data.y_train[members]
    model.train()
    for _ in range(6):
        for b in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    torch.save({"epoch": 6, "state_dict": model.state_dict()}, tmp_path / "mine.pt")
    np.save(tmp_path / "members.npy", np.isin(np.arange(len(data.y_train)), members))
    run_main(merge(TINY, ["attack=all", "quant=rtn", "bits=2", "target=external",
                          f"target.checkpoint={tmp_path / 'mine.pt'}", f"target.members={tmp_path / 'members.npy'}"]),
             tmp_path / "cache", tmp_path / "run")
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["job"]["targets"] == [4] and set(r["resemblance"]) == {"train_acc", "test_acc", "loss_gap"}
    for block in ("attacks", "fp_attacks"):
        for name in ("lira_online", "lira_offline", "rmia", "loss"):
            m = r[block][name]["per_target"][0]
            assert m["n_members"] == len(members) and 0.0 <= m["auc"] <= 1.0
    assert "paired" in json.dumps(r["attacks"]["lira_online"])  # paired Δ against the FP target
    assert np.load(tmp_path / "run" / "scores.npz")["keep"].shape == (5, len(data.y_train))


def test_resemblance_range_and_warning():
    """The loss gap from φ equals the cross-entropy gap computed from p_y; a target inside the
    references' widened range passes, one outside is named in a single warning line."""
    from types import SimpleNamespace

    from src.report.resemblance import loss_gap, resemblance, resemblance_warning

    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(5, 40))              # p_y of 5 models on 40 candidates
    keep = rng.random((5, 40)) < 0.5
    phi = np.log(p) - np.log1p(-p)
    gap = [(-np.log(p[m][~keep[m]])).mean() - (-np.log(p[m][keep[m]])).mean() for m in range(5)]
    assert all(math.isclose(loss_gap(phi[m][:, None], keep[m]), gap[m], rel_tol=1e-9) for m in range(5))
    pool = SimpleNamespace(phi=phi[:, :, None], keep=keep, train_acc=np.array([0.98, 0.99, 1.0, 0.99, 0.99]),
                           test_acc=np.array([0.50, 0.52, 0.54, 0.51, 0.40]))
    check = resemblance(pool, 4, [0, 1, 2, 3])
    # references' test accuracy 0.50..0.54, widened by half its width (0.02) → 0.48..0.56: 0.40 is out
    assert math.isclose(check["test_acc"]["low"], 0.48) and math.isclose(check["test_acc"]["high"], 0.56)
    assert not check["test_acc"]["inside"] and check["train_acc"]["inside"]
    line = resemblance_warning(check)
    assert "\n" not in line and "test_acc=0.400 (references 0.500..0.540)" in line and "train_acc" not in line
    pool.test_acc[4] = 0.55  # within the widened range
    assert resemblance(pool, 4, [0, 1, 2, 3])["test_acc"]["inside"]
