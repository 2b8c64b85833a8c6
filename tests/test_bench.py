import bench


def test_bench_quick_prints_a_table_and_a_speedup(pretrained, capsys):
    result = bench.main(["--quick", "--checkpoint", str(pretrained), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"speedup: {result['speedup']:.1f}x"
    assert "fine-tune img/s" in printed and "score img/s" in printed
    assert result["speedup"] > 0
