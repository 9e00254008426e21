"""``kvsync demo --duration 10``: a bounded run whose sampled answers agree with ground truth."""

import re
import signal
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.integration

CURL = re.compile(
    r"^try: curl -s (?P<url>http://127\.0\.0\.1:\d+/v1/match) "
    r"-H 'content-type: application/json' -d '(?P<body>\{.*\})'$"
)
SUMMARY = re.compile(
    r"^summary samples=(?P<samples>\d+) agreed=(?P<agreed>\d+) disagreed=(?P<disagreed>\d+) "
    r"endpoints=(?P<endpoints>\d+) seconds=(?P<seconds>[\d.]+) "
    r"audited=(?P<audited>\d+) exact=(?P<exact>\d+) over=(?P<over>\d+) under=(?P<under>\d+)$"
)


def test_bounded_demo_run_agrees_with_ground_truth() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvsync", "demo", "--duration", "10", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("kvsync HTTP API on http://127.0.0.1:")
    assert lines[1].startswith("try: curl -s http://127.0.0.1:")
    assert "/v1/match -H 'content-type: application/json' -d '{\"model\": " in lines[1]
    assert any(line.startswith("t=") and "[live=5]" in line for line in lines), lines
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, lines[-1]
    assert int(summary["samples"]) >= 2  # one every 3 s over 10 s
    assert summary["agreed"] == summary["samples"]
    assert summary["disagreed"] == "0"
    assert summary["endpoints"] == "5"  # 4 pods, one with 2 DP ranks
    samples = [line for line in lines if line.startswith("sample ")]
    assert len(samples) == int(summary["samples"])
    assert all("agrees with ground truth" in line for line in samples)
    # every sampled prompt was routed and reported: kvsync's predictions were exact
    assert summary["audited"] == summary["samples"] == summary["exact"]
    assert (summary["over"], summary["under"]) == ("0", "0")
    audits = [line for line in lines if line.startswith("audit routed=")]
    assert (
        audits[-1] == f"audit routed={summary['samples']} exact={summary['samples']} "
        "over=0 under=0 unknown=0"
    )
    loads = [line for line in lines if line.startswith("t=") and " load scraped=5 " in line]
    assert loads, "the daemon never showed every pod's scraped load"


def test_bad_options_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvsync", "demo", "--pods", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "kvsync demo: --pods must be >= 1 and --duration > 0\n"


def test_ctrl_c_stops_the_demo_cleanly() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "demo", "--http-port", "0", "--sample-seconds", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        curl = ""
        for line in demo.stdout:  # the first sample: the fleet, the daemon and the view run
            curl = line if line.startswith("try: curl") else curl
            if line.startswith("sample "):
                break
        pasted = CURL.match(curl.strip())
        assert pasted is not None, curl
        answer = httpx.post(
            pasted["url"],
            content=pasted["body"],
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert answer.json()["matches"], "the printed example should hit a cached prefix"
        assert answer.json()["tokenized"]["pod"], "the example asks by text prompt"
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err
    summary = SUMMARY.match(out.splitlines()[-1])
    assert summary is not None, out
    assert summary["disagreed"] == "0"
    assert "Traceback" not in err
