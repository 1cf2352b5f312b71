"""The mambatron command: help, info and the demo."""
import json
import subprocess
import sys

import mambatron as mt
from mambatron.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mambatron {mt.__version__}" in out and "CUDA devices usable" in out


def test_demo_runs_on_cpu_and_writes_json(tmp_path):
    path = tmp_path / "demo.json"
    out = subprocess.run([sys.executable, "-m", "mambatron", "demo", "--device", "cpu", "--size", "256",
                          "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "FLOP/s" in out.stdout
    res = json.loads(path.read_text())
    assert res["device"] == "cpu" and res["gemm_rel_error"] < 1e-5 and res["gemm_tflops"] > 0


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
