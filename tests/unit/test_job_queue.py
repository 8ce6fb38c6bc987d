"""The job queue without a configured Redis: the demo says what is missing and FlexMeasures is
given no Redis (never whatever listens on localhost:6379)."""

from __future__ import annotations

from operations import demo


def test_demo_without_redis_server_says_so_and_runs_without_a_queue(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CARIFLEX_REDIS_URL", raising=False)
    monkeypatch.setenv("CARIFLEX_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("CARIFLEX_VAR_DIR", str(tmp_path / "var"))
    env = {"PATH": str(tmp_path / "empty-bin"), "CARIFLEX_VAR_DIR": str(tmp_path / "var")}
    running: list = []
    assert demo.start_job_queue(env, running) is None
    assert running == [] and "CARIFLEX_REDIS_URL" not in env
    out = capsys.readouterr().out
    assert "redis-server is not installed" in out
    assert "Re-plans run inside the FlexMeasures server" in out
    assert "no Redis, no worker" in demo.banner("http://x", "http://y", queued=False)


def test_a_configured_redis_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("CARIFLEX_REDIS_URL", "redis://queue.example:6380/2")
    env: dict[str, str] = {"PATH": str(tmp_path)}
    assert demo.start_job_queue(env, []) == "redis://queue.example:6380/2"
    assert env["CARIFLEX_REDIS_URL"] == "redis://queue.example:6380/2"


def test_flexmeasures_gets_no_redis_unless_one_is_configured(tmp_path, monkeypatch):
    from flexmeasures_cariflex.config import redis_settings

    monkeypatch.setenv("CARIFLEX_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.delenv("CARIFLEX_REDIS_URL", raising=False)
    unset = redis_settings()
    assert (unset["FLEXMEASURES_REDIS_URL"], unset["FLEXMEASURES_REDIS_PORT"]) == ("127.0.0.1", 0)
    assert unset["RATELIMIT_STORAGE_URI"] == "memory://"  # not FlexMeasures' default redis://
    monkeypatch.setenv("CARIFLEX_REDIS_URL", "redis://:pw@127.0.0.1:6390/3")
    assert redis_settings() == {
        "FLEXMEASURES_REDIS_URL": "127.0.0.1",
        "FLEXMEASURES_REDIS_PORT": 6390,
        "FLEXMEASURES_REDIS_DB_NR": 3,
        "FLEXMEASURES_REDIS_PASSWORD": "pw",
    }
