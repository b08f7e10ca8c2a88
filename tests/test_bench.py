"""benchmarks/bench.py at its tiny size: JSON schema, and headline figures derived exactly from the
reported ones (ratio = b/a, projected protocol time = 65 × 25,000 × 100 / b)."""
import json



def test_bench_tiny_cpu(tmp_path, capsys):
    from benchmarks import bench

    out = tmp_path / "bench.json"
    res = bench.main(["--device", "cpu", "--size", "tiny", "--out", str(out), "--methods", "rtn,nosuchmethod"])
    js = json.loads(out.read_text())
    assert js == json.loads(json.dumps(res))
    for key in ("device", "size", "model", "reference", "fast", "ratio", "projected_protocol_s", "scoring", "quant"):
        assert key in js, key
    a = js["reference"]["images_per_s"]
    b = js["fast"]["images_per_s"]
    assert a > 0 and b > 0 and js["fast"]["best"] == "eager"
    assert b == js["fast"]["variants"]["eager"]["images_per_s"]
    assert js["ratio"] == b / a
    assert js["projected_protocol_s"] == 65 * 25_000 * 100 / b
    assert js["reference"]["images_per_s"] == js["reference"]["images"] / js["reference"]["seconds"]
    sc = js["scoring"]
    assert sc["images_per_s"] == sc["models"] * sc["examples"] * sc["queries"] / sc["seconds"]
    assert js["quant"]["rtn"]["seconds"] > 0
    assert "error" in js["quant"]["nosuchmethod"]                       # a failing method is reported, not fatal
    table = capsys.readouterr().out
    assert "ratio b/a" in table and "quantize nosuchmethod" in table and "failed" in table
