"""deploy/local/jaeger.py's logic: the cached binary, the build's steps and failure, no Go,
and the configuration Jaeger starts with. The real build and a real Jaeger are not run here
(minutes of compiling, a cache CI does not have): the report of issue 17 says what was run
by hand. ``go`` is a script that acts out the go commands' output and results."""

from __future__ import annotations

import io
import socket
import stat
from pathlib import Path

import pytest
import yaml

from deploy.local import jaeger, supervisor
from deploy.local.procs import pick_range

FAKE_GO = """#!/bin/sh
# Acts out the go commands deploy/local/jaeger.py runs; records each one.
echo "$@" >> "{calls}"
case "$1" in
  mod) echo 'module nudge-jaeger' > go.mod ;;
  get) echo 'go: downloading github.com/jaegertracing/jaeger v1.76.0' ;;
  build)
    [ -n "{fail}" ] && {{ echo 'compile: out of memory' ; exit 2 ; }}
    echo 'github.com/jaegertracing/jaeger/cmd/jaeger'
    out=''; prev=''
    for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
    echo binary > "$out" ;;
esac
"""


def fake_go(tmp_path: Path, fail: bool = False) -> tuple[str, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / "go"
    script.write_text(FAKE_GO.format(calls=calls, fail="yes" if fail else ""))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), calls


def test_the_build_runs_the_three_go_steps_once_and_keeps_the_binary(tmp_path: Path) -> None:
    go, calls = fake_go(tmp_path)
    cache, out = tmp_path / "cache", io.StringIO()
    binary = jaeger.build_jaeger(cache, tmp_path / "build.log", out=out, go=go, every=0)
    assert binary == cache / "jaeger" / "jaeger-v1.76.0"
    assert binary.read_text() == "binary\n"
    steps = calls.read_text().splitlines()
    assert steps[0] == "mod init nudge-jaeger"
    assert steps[1] == "get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0"
    assert steps[2].startswith("build -v -o ") and steps[2].endswith(
        " github.com/jaegertracing/jaeger/cmd/jaeger"
    )
    assert "building Jaeger v1.76.0" in out.getvalue()
    assert "1 modules downloaded, 1 packages compiled" in out.getvalue()
    assert list((cache / "jaeger").glob(".jaeger.*.tmp")) == []
    # Cached: no go at all the second time.
    assert jaeger.build_jaeger(cache, tmp_path / "build.log", go="/nonexistent/go") == binary
    assert len(calls.read_text().splitlines()) == 3


def test_a_failed_build_leaves_no_binary_and_says_where_the_log_is(tmp_path: Path) -> None:
    go, _ = fake_go(tmp_path, fail=True)
    cache, log = tmp_path / "cache", tmp_path / "build.log"
    with pytest.raises(RuntimeError, match=f"failed \\(2\\); its output is in {log}"):
        jaeger.build_jaeger(cache, log, out=io.StringIO(), go=go)
    assert not jaeger.binary_path(cache).exists()
    assert list((cache / "jaeger").glob(".jaeger.*.tmp")) == []
    assert "out of memory" in log.read_text()


def test_without_go_make_run_goes_on_with_the_json_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(jaeger.GoMissing, match="no `go` on the PATH"):
        jaeger.build_jaeger(tmp_path / "cache", tmp_path / "build.log", out=io.StringIO())
    out = io.StringIO()
    assert jaeger.build_or_explain(tmp_path / "cache", tmp_path, None, out) is None
    assert "nudge: no Jaeger: " in out.getvalue() and "JSON files" in out.getvalue()


def test_the_configuration_listens_on_the_loopback_ports_chosen_with_memory_storage() -> None:
    ports = {"otlp_grpc": 1, "otlp_http": 2, "ui": 3, "query_grpc": 4}
    config = yaml.safe_load(jaeger.config_text(ports))
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "127.0.0.1:1"
    assert otlp["http"]["endpoint"] == "127.0.0.1:2"
    query = config["extensions"]["jaeger_query"]
    assert (query["http"]["endpoint"], query["grpc"]["endpoint"]) == ("127.0.0.1:3", "127.0.0.1:4")
    assert "memory" in config["extensions"]["jaeger_storage"]["backends"]["memstore"]
    assert config["service"]["telemetry"]["metrics"]["level"] == "none"  # no port 8888
    # The UI is our viewer (the Go module has no jaeger-ui assets), with its index page.
    assert query["ui"]["assets_path"] == str(jaeger.TRACEVIEW)
    assert (Path(query["ui"]["assets_path"]) / "index.html").is_file()
    assert (jaeger.TRACEVIEW / "static" / "traceview.js").is_file()


def test_a_jaeger_ui_build_given_by_the_operator_is_served_instead(tmp_path: Path) -> None:
    build = tmp_path / "jaeger ui's build"  # any path, spaces and quotes too
    assert jaeger.ui_assets({}) == jaeger.TRACEVIEW
    assert jaeger.ui_assets({"NUDGE_JAEGER_UI_ASSETS": str(build)}) == build
    ports = {"otlp_grpc": 1, "otlp_http": 2, "ui": 3, "query_grpc": 4}
    config = yaml.safe_load(jaeger.config_text(ports, build))
    assert config["extensions"]["jaeger_query"]["ui"]["assets_path"] == str(build)


def test_a_default_port_taken_is_replaced_by_a_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(jaeger, "DEFAULT_PORTS", {"ui": taken})
        ports = jaeger.choose_ports()
    low, high = pick_range()
    assert ports["ui"] != taken and low <= ports["ui"] <= high


# -- make run's part (deploy/local/supervisor.py) -------------------------------------------


def test_traces_is_jaeger_or_nothing() -> None:
    assert supervisor.traces_choice({}) == ""
    assert supervisor.traces_choice({"NUDGE_TRACES": " Jaeger "}) == "jaeger"
    with pytest.raises(ValueError, match="TRACES='zipkin': expected 'jaeger'"):
        supervisor.traces_choice({"NUDGE_TRACES": "zipkin"})


def test_each_make_run_starts_with_an_empty_traces_folder(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "delivery.1.jsonl").write_text("{}\n")
    (folder / "notes.txt").write_text("mine\n")
    assert supervisor.fresh_traces_dir(tmp_path) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_the_banner_says_where_the_traces_are(tmp_path: Path) -> None:
    env = {
        "NUDGE_GATEWAY_URL": "http://127.0.0.1:8080",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "NUDGE_TRACES_DIR": str(tmp_path / "traces"),
    }
    with_jaeger = supervisor.banner(env, {}, tmp_path, jaeger_url="http://127.0.0.1:16686")
    assert "traces      Jaeger http://127.0.0.1:16686" in with_jaeger
    files_only = supervisor.banner(env, {}, tmp_path)
    assert f"traces      JSON lines in {tmp_path / 'traces'}" in files_only
