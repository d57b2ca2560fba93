"""
``salt/_utils/vumi_pipeline.py``: the stages in their order, and what a failing stage
leaves: the half-built release moved to ``failed/``, a history line, and an error of the
stage's own kind with its facts. The stages here are the test's own small functions over
real folders in ``tmp_path``; the real stages run in tests/functional.
"""

import os

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_history
import vumi_layout
import vumi_pipeline

RELEASE = "20261205_120000"


@pytest.fixture
def d(cfg, paths):
    vumi_layout.ensure_tree(cfg, paths)
    deploy = vumi_pipeline.Deploy({}, None, dict(cfg, events=False), paths, who={"user": "alice"})
    deploy.release = RELEASE
    return deploy


def cut(d):
    os.makedirs(d.paths.code(d.release))
    d.cut = True
    d.sha = "a" * 40


def test_the_stages_read_in_order():
    assert [name for name, _ in vumi_pipeline.PREPARE] == [
        "layout", "fetch", "cut_release", "link_shared", "settings", "virtualenv", "hooks", "manifest", "health"]  # fmt: skip
    assert [name for name, _ in vumi_pipeline.PUBLISH] == ["publish", "after_publish", "prune"]
    # an update (Fabric's): no hooks, no health check, no after_publish
    assert [name for name, _ in vumi_pipeline.UPDATE] == [
        "cut_release", "link_shared", "settings", "virtualenv", "manifest", "publish", "prune"]  # fmt: skip


def test_each_stage_is_timed_and_a_failure_moves_the_release_aside(d):
    def broken(_):
        raise CommandExecutionError("pip said no")

    with pytest.raises(vumi_errors.StageFailed, match=r"failed at stage 'virtualenv': pip said no; .* kept in ") as e:
        vumi_pipeline.run_steps(d, [("cut_release", cut), ("virtualenv", broken), ("manifest", cut)])
    kept = os.path.join(d.paths.failed, RELEASE)
    assert e.value.facts == {"stage": "virtualenv", "release": RELEASE, "kept": kept}
    assert os.path.isdir(kept) and not os.path.lexists(d.paths.release(RELEASE))
    assert list(d.timings) == ["cut_release"]  # the stages after the failure never ran
    (line,) = vumi_history.read_history(d.paths)
    assert (line["action"], line["stage"], line["release"], line["user"]) == ("failed", "virtualenv", RELEASE, "alice")


def test_a_failed_health_check_keeps_its_kind_and_evidence(d):
    def unhealthy(_):
        raise vumi_errors.HealthFailed("port 8000 answered HTTP 500", evidence="HTTP 500", port=8000)

    with pytest.raises(vumi_errors.HealthFailed) as e:
        vumi_pipeline.run_steps(d, [("cut_release", cut), ("health", unhealthy)])
    assert e.value.facts["evidence"] == "HTTP 500" and e.value.facts["stage"] == "health"


def test_the_operators_input_is_said_as_such_and_an_os_error_is_a_stage_failure(d):
    def bad_input(_):
        raise SaltInvocationError("invalid shared_files entry '../x'")

    with pytest.raises(SaltInvocationError, match=r"failed at stage 'link_shared': invalid shared_files"):
        vumi_pipeline.run_steps(d, [("link_shared", bad_input)])

    def disk_full(_):
        raise OSError(28, "No space left on device")

    with pytest.raises(vumi_errors.StageFailed, match="No space left on device"):
        vumi_pipeline.run_steps(d, [("settings", disk_full)])


def test_a_failure_after_the_switch_leaves_the_release_where_it_is(d):
    cut(d)

    def hook_failed(_):
        raise CommandExecutionError("after_publish hook failed")

    with pytest.raises(vumi_errors.StageFailed) as e:
        vumi_pipeline.run_steps(d, [("after_publish", hook_failed)])
    assert e.value.facts["kept"] is None and os.path.isdir(d.paths.release(RELEASE))


def test_a_deploy_refuses_bad_arguments_before_anything_is_made(cfg, paths):
    with pytest.raises(SaltInvocationError, match="invalid run_once 'yes'"):
        vumi_pipeline.Deploy({}, None, cfg, paths, run_once="yes")
    with pytest.raises(SaltInvocationError, match="a hold is for the fleet deploy of one release"):
        vumi_pipeline.Deploy({}, None, cfg, paths, hold=60)
    with pytest.raises(SaltInvocationError, match="invalid revision"):
        vumi_pipeline.Deploy({}, None, cfg, paths, revision="-x")
    assert not os.path.lexists(paths.root)
