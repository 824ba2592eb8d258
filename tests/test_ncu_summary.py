"""benchmarks/ncu_kernels.py --summarize on a fixture in the format `ncu --csv --page raw` prints (header row, units
row, one row per launch; ncu's own ==PROF== lines around it; numbers with thousands separators): the plain counters
are kept with their units, the stall reasons are named by their reason and sorted. CPU only."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CSV = '''==PROF== Connected to process 123 (/usr/bin/python3.12)
==PROF== Profiling "scan_kernel": 0%....50%....100% - 9 passes
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","gpu__time_duration.sum","launch__registers_per_thread","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"
"","","","","","","","","","","","nsecond","register/thread","ratio","ratio","ratio"
"0","123","python3.12","host","void scan_kernel<__nv_bfloat16, 16, 1, true, 8, false>(ScanArgs)","1","7","(128, 1, 1)","(40, 1, 8)","0","9.0","1,065,120","72","3.25","0.50","1.75"
"1","123","python3.12","host","void step_vec_kernel<__nv_bfloat16, 4, 1, false, false>(StepArgs)","1","7","(256, 1, 1)","(20, 64, 1)","0","9.0","21,230","40","n/a","2.5","0.25"
==PROF== Disconnected from process 123
'''


def _mod():
    """The script as a module; it must leave sys.path alone (a checkout first on sys.path would shadow the installed
    package in every later test)."""
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("ncu_kernels", os.path.join(ROOT, "benchmarks", "ncu_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sys.path == path, "importing benchmarks/ncu_kernels.py changed sys.path"
    return mod


def test_summarize_raw_csv(tmp_path):
    p = tmp_path / "ncu.csv"
    p.write_text(CSV)
    s = _mod().summarize(str(p))
    assert [k["kernel"].split("<")[0] for k in s["launches"]] == ["void scan_kernel", "void step_vec_kernel"]
    scan, step = s["launches"]
    assert scan["metrics"]["gpu__time_duration.sum [nsecond]"] == 1065120.0
    assert scan["metrics"]["launch__registers_per_thread [register/thread]"] == 72.0
    assert scan["top_stalls"] == [("long_scoreboard", 3.25), ("wait", 1.75), ("math_pipe_throttle", 0.5)]
    assert step["top_stalls"] == [("math_pipe_throttle", 2.5), ("wait", 0.25)]  # "n/a" left out


def test_metrics_argument_names_the_stall_regex():
    arg = _mod().ncu_metrics_arg()
    assert "gpu__time_duration.sum" in arg and "regex:smsp__average_warps_issue_stalled_" in arg


def test_summarize_without_units_row(tmp_path):
    lines = [ln for ln in CSV.splitlines() if not ln.startswith('"",')]
    p = tmp_path / "ncu.csv"
    p.write_text("\n".join(lines) + "\n")
    s = _mod().summarize(str(p))
    assert len(s["launches"]) == 2
    assert s["launches"][0]["metrics"]["gpu__time_duration.sum"] == 1065120.0
