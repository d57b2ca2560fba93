"""
Functional tests of nginx in front of the webapp and of rolling restarts.

Everything is real: the site file is rendered by ``salt/vumi/nginx.sls`` and its
template through Salt's state system (``state.sls`` / ``state.apply`` with a pillar
that points the conf dir into the test's temp dir and leaves the package and the
system's service alone); a real nginx from Debian's package, started by the test
with its own prefix, config and logs, listens on a free loopback port in front of
three or four webapp ports of the sample app; a load generator sends requests
through it (a bounded number, for a bounded time, 127.0.0.1 only) while the ports
are restarted one at a time and while a new release is rolled out.

Run with ``-s`` to see the load figures: requests sent, failed, and how long the
rolling restart took. Nothing here touches /etc/nginx or the system's nginx.
"""

import http.client
import importlib.util
import json
import os
import pathlib
import ssl
import subprocess
import threading
import time

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample
from support.helpers import alive, http_get, module_env, sls_pillar
from support.nginx import NGINX, Load, Nginx, port_open, report

ENV = "staging"
REPO = pathlib.Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx)")


# --------------------------------------------------------------------------
# Fixtures: one deployed environment for the module, a real nginx per test
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(minion_opts, origin, make_top, deploy_user, supervisord):
    """``staging`` deployed once from its own upstream clone (a fresh virtualenv costs seconds)."""
    # settings from the minion options alone; the pillar of each state run adds the rest
    with module_env(
        minion_opts,
        origin,
        make_top("nginx"),
        owner=deploy_user,
        start_timeout=20,
        stop_timeout=8,
        supervisor=dict(supervisord.settings(), start_retries=1),
    ) as env:
        env.vumi.deploy(ENV)
        yield env


@pytest.fixture
def vumi(deployed):
    return deployed.vumi


@pytest.fixture
def cluster(vumi, webapps, free_port):
    """Start the webapp on ``n`` fresh loopback ports (configured as ``ports`` for the call); returns them."""

    def start(n, **kwargs):
        ports = [free_port() for _ in range(n)]
        webapps.extend((ENV, p) for p in ports)
        vumi.start_webapp_cluster(ENV, *ports, ports=ports, **kwargs)
        return ports

    return start


def nginx_pillar(ports, conf_dir, nginx_port, **nginx):
    """The pillar of a state run: this environment's ports, nginx's site into ``conf_dir``."""
    settings = dict(
        enabled=True,
        listen=f"127.0.0.1:{nginx_port}",
        server_name="localhost",
        conf_dir=str(conf_dir),
        static="static",
        manage_package=False,  # the package is there; the system's nginx service is not ours
        manage_service=False,
    )
    settings.update(nginx)
    return {"branch": ENV, "vumi": {"environments": {ENV: {"ports": ports}}, "nginx": settings}}


def site_file(conf_dir):
    return pathlib.Path(conf_dir) / f"vumi-{ENV}.conf"


@pytest.fixture
def nginx(tmp_path, free_port):  # pylint: disable=redefined-outer-name
    """A real nginx including the sites of ``<tmp>/sites`` (the test starts it); stopped at teardown."""
    sites = tmp_path / "sites"
    sites.mkdir()
    prefix = tmp_path / "nginx"
    (prefix / "temp").mkdir(parents=True)
    server = Nginx(prefix, free_port(), sites)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def apply_sls(deployed, sls, pillar):
    """``state.sls``/``state.apply`` through the loader; the rendering must succeed."""
    ret = deployed.loaders.modules.state.apply(sls, pillar=pillar)
    assert not ret.errors, ret.errors
    return site_states(ret)


def site_states(ret):
    """The states of a run but the pre-flight (vumi.ready, which the SLS includes: it must pass first)."""
    checks = [state for state in ret if state.id.endswith("-ready")]
    assert all(state.result is True for state in checks), [state.raw for state in checks]
    return {state.id: state for state in ret if state not in checks}


# --------------------------------------------------------------------------
# The SLS and its site
# --------------------------------------------------------------------------


def test_vumi_includes_nginx_only_when_pillar_enables_it(deployed, tmp_path):
    pillar = nginx_pillar([8000, 8001], tmp_path, 8080, manage_package=True, manage_service=True)
    off = json.loads(json.dumps(pillar))
    off["vumi"]["nginx"] = {"enabled": False}
    shown = deployed.loaders.modules.state.show_sls("vumi", pillar=off)
    assert not [k for k in shown if "nginx" in k], list(shown)

    shown = deployed.loaders.modules.state.show_sls("vumi", pillar=pillar)
    site = shown[f"vumi-{ENV}-nginx-site"]
    assert site["__sls__"] == "vumi.nginx"
    assert {"name": str(site_file(tmp_path))} in site["file"]
    assert {"name": "nginx"} in shown["vumi-nginx-installed"]["pkg"]
    service = shown["vumi-nginx-running"]["service"]
    assert {"name": "nginx"} in service and {"reload": True} in service
    assert {"watch": [{"file": f"vumi-{ENV}-nginx-site"}]} in service
    assert not site_file(tmp_path).exists()  # shown, not applied


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"branch": None}, "Name the environment"),
        ({"ports": []}, "nginx needs at least one webapp port"),
        ({"static": "../../../etc"}, "invalid vumi:nginx:static ../../../etc"),
    ],
    ids=["no-branch", "no-ports", "static-outside-the-code"],
)
def test_nginx_sls_refuses_what_it_cannot_serve(deployed, tmp_path, change, expected):
    pillar = nginx_pillar([8000], tmp_path, 8080, **({"static": change["static"]} if "static" in change else {}))
    if "branch" in change:
        del pillar["branch"]
    if "ports" in change:
        pillar["vumi"]["environments"][ENV]["ports"] = change["ports"]
    ret = deployed.loaders.modules.state.apply("vumi.nginx", pillar=pillar)
    assert not ret.errors, ret.errors
    (state,) = site_states(ret).values()
    assert state.result is False, state.raw
    assert expected in state.name + state.comment, state.raw
    assert os.listdir(tmp_path) == []


def test_site_proxies_the_ports_and_serves_static_files_from_current(deployed, cluster, nginx):
    ports = cluster(2)
    states = apply_sls(deployed, "vumi.nginx", nginx_pillar(ports, nginx.sites, nginx.port))
    (site,) = states.values()
    assert site.result is True and site.changes, site.raw
    text = site_file(nginx.sites).read_text()
    for port in ports:
        assert f"server 127.0.0.1:{port} max_fails=0;" in text
    assert f"alias {deployed.root}/current/vumi/static/;" in text  # the link, not a release
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in text

    # again: nothing to do
    (again,) = apply_sls(deployed, "vumi.nginx", nginx_pillar(ports, nginx.sites, nginx.port)).values()
    assert again.result is True and not again.changes, again.raw

    nginx.start()
    seen = {http_get(nginx.port)[1]["port"] for _ in range(8)}
    assert seen == set(ports)  # round robin over the environment's ports
    assert http_get(nginx.port, "/static/missing.txt")[0] == 404


# --------------------------------------------------------------------------
# Rolling restarts and roll-outs under load: no request fails
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 4])
def test_rolling_restart_and_rollout_behind_nginx_drop_no_request(deployed, vumi, cluster, nginx, size):
    ports = cluster(size)
    pillar = nginx_pillar(ports, nginx.sites, nginx.port)
    apply_sls(deployed, "vumi.nginx", pillar)
    nginx.start()
    old = vumi.current(ENV)
    pids = {p: s["pid"] for p, s in vumi.webapp_status(ENV, ports=ports).items() if p in ports}

    # (a) vumi.restart_webapp_cluster: one port at a time, each serving before the next stops
    with Load(nginx.port) as load:
        load.wait_for(50)
        began = time.monotonic()
        restarted = vumi.restart_webapp_cluster(ENV, *ports, ports=ports)
        ended = time.monotonic()
        load.wait_for(50)
    report("restart_webapp_cluster", load, began, ended, ports)
    assert load.failed == [], load.failed[:5]
    assert [r["port"] for r in restarted] == ports
    for r in restarted:
        assert r["old_pid"] == pids[r["port"]] and r["pid"] != pids[r["port"]]
        assert not alive(pids[r["port"]])
    # every port served during the roll, and the new processes answer
    assert {a[3] for a in load.answers} == set(ports)
    new_pids = {r["pid"] for r in restarted}
    assert new_pids <= {a[4] for a in load.answers}

    # (b) a new commit, deployed and rolled out by the states while the load runs
    sha = sample.commit_file(deployed.repo, ENV, "static/hello.txt", f"hello from {size}\n", f"release {size}")
    with Load(nginx.port) as load:
        load.wait_for(50)
        began = time.monotonic()
        if size == 3:
            # state.apply vumi: vumi.deployed, then vumi.webapp_running's mod_watch restarts
            states = apply_sls(deployed, "vumi", sls_pillar(deployed.config["supervisor"], **pillar))
            webapp = states[f"vumi-{ENV}-webapp"]
            assert states[f"vumi-{ENV}-deployed"].changes["revision"]["new"] == sha
            how = "state.apply vumi (deploy + watch)"
            # the deploy needed no nginx change
            assert states[f"vumi-{ENV}-nginx-site"].result is True
            assert not states[f"vumi-{ENV}-nginx-site"].changes
        else:
            assert vumi.deploy(ENV)["revision"] == sha
            webapp = deployed.loaders.states.vumi.webapp_running(ENV, ports=ports)
            how = "vumi.deploy + vumi.webapp_running"
        after = time.monotonic()
        load.wait_for(100)
    report(how, load, began, after, ports)
    assert webapp.result is True, webapp.raw
    assert set(webapp.changes) == {str(p) for p in ports}, webapp.raw
    new = vumi.current(ENV)
    assert new["revision"] == sha and new["release"] != old["release"]
    assert load.failed == [], load.failed[:5]
    releases = [a[2] for a in load.answers]
    assert old["release"] in releases and new["release"] in releases
    assert {a[2] for a in load.since(after)} == {new["release"]}  # switched, on every port
    assert {a[3] for a in load.since(after)} == set(ports)
    # static files come from the new current release, without touching nginx
    assert http_get(nginx.port, "/static/hello.txt") == (200, f"hello from {size}\n")


def test_a_release_that_does_not_come_back_stops_the_roll(deployed, vumi, cluster, nginx):
    ports = cluster(3)
    first, second, third = ports
    pillar = nginx_pillar(ports, nginx.sites, nginx.port)
    apply_sls(deployed, "vumi.nginx", pillar)
    nginx.start()
    good = vumi.current(ENV)
    pids = {p: vumi.webapp_status(ENV, p, ports=ports)[p]["pid"] for p in ports}
    wsgi = deployed.repo / "sampleapp" / "wsgi.py"
    sample.git(deployed.repo, "checkout", "-q", ENV)
    original = wsgi.read_text()
    sample.commit_file(
        deployed.repo, ENV, "sampleapp/wsgi.py", original + '\nraise RuntimeError("broken on purpose")\n', "broken"
    )
    try:
        # vumi.deploy makes it current (starting the webapp is not its job, and the
        # module's health check is off by default); the restarts then find it broken
        broken = vumi.deploy(ENV)
        with Load(nginx.port) as load:
            load.wait_for(50)
            began = time.monotonic()
            # vumi.webapp_running restarts the ports on an older release, one at a time
            webapp = deployed.loaders.states.vumi.webapp_running(ENV, ports=ports)
            load.wait_for(50)
            # the module's own rolling restart fails the same way, with the evidence
            with pytest.raises(CommandExecutionError) as exc:
                vumi.restart_webapp_cluster(ENV, *ports, ports=ports)
            ended = time.monotonic()
            load.wait_for(50)
        report("a broken release: webapp_running, then restart_webapp_cluster, both stopped", load, began, ended, ports)
        assert load.failed == [], load.failed[:5]  # nginx sent everything to the ports still up

        assert webapp.result is False, webapp.raw
        assert f"port {first} could not be restarted" in webapp.comment
        assert "Worker failed to boot" in webapp.comment  # gunicorn's own words, in the log's tail
        assert f"ports left as they were: {second}, {third}" in webapp.comment
        assert set(webapp.changes) == set()

        message = str(exc.value)
        assert f"webapp on port {first} is FATAL in supervisor" in message
        assert f"webapp.{first}.log" in message and "Worker failed to boot" in message  # the log's tail
        assert f"stopped at port {first}: restarted none; left as they were: {second}, {third}" in message

        # the first port is down; the others still run the good release, untouched
        status = vumi.webapp_status(ENV, ports=ports)
        assert status[first]["running"] is False
        for port in (second, third):
            assert status[port]["pid"] == pids[port] and status[port]["release"] == good["release"]
            assert status[port]["current"] is False  # current is the broken one
            assert http_get(port)[1]["release"] == good["release"]
        assert {a[3] for a in load.answers[-50:]} == {second, third}
    finally:
        # heal: back to the good release, the first port running again, the branch fixed
        if vumi.current(ENV)["release"] != good["release"]:
            vumi.rollback(ENV)
        vumi.start_webapp(ENV, first, ports=ports)
        sample.commit_file(deployed.repo, ENV, "sampleapp/wsgi.py", original, "fixed")
    assert broken["release"] != good["release"]
    assert vumi.current(ENV)["release"] == good["release"]
    assert http_get(first)[1]["release"] == good["release"]


def test_config_changes_roll_port_by_port_and_a_broken_command_stops_at_the_first(deployed, vumi, cluster, nginx):
    ports = cluster(3)
    first, second, third = ports
    apply_sls(deployed, "vumi.nginx", nginx_pillar(ports, nginx.sites, nginx.port))
    nginx.start()
    running = deployed.loaders.states.vumi.webapp_running
    command = vumi.settings(ENV)["webapp_command"]
    for what, change in (
        ("an env change", {"env": {"ADDED_BY_THE_TEST": "1"}}),
        ("a webapp_command change", {"env": {"ADDED_BY_THE_TEST": "1"}, "webapp_command": command + " --timeout 31"}),
    ):
        pids = {p: s["pid"] for p, s in vumi.webapp_status(ENV, ports=ports).items()}
        with Load(nginx.port) as load:
            load.wait_for(50)
            began = time.monotonic()
            webapp = running(ENV, ports=ports, **change)
            ended = time.monotonic()
            load.wait_for(50)
        report(f"{what}, applied by vumi.webapp_running", load, began, ended, ports)
        assert webapp.result is True, webapp.raw
        assert "one at a time" in webapp.comment and "programs" in webapp.changes, webapp.raw
        assert load.failed == [], load.failed[:5]
        after = vumi.webapp_status(ENV, ports=ports)
        assert all(after[p]["pid"] != pids[p] and after[p]["answers"] for p in ports), after  # each port took it
    text = pathlib.Path(vumi.settings(ENV)["supervisor"]["conf_dir"]) / f"vumi-{ENV}.conf"  # the program file
    before = text.read_text()
    assert "ADDED_BY_THE_TEST" in before and "--timeout 31" in before

    # a command gunicorn refuses: the first port fails and goes back; the others never stop
    pids = {p: s["pid"] for p, s in vumi.webapp_status(ENV, ports=ports).items()}
    with Load(nginx.port) as load:
        load.wait_for(50)
        began = time.monotonic()
        webapp = running(ENV, ports=ports, env={"ADDED_BY_THE_TEST": "1"}, webapp_command=command + " --bogus-flag")
        ended = time.monotonic()
        load.wait_for(50)
    report("a broken webapp_command, stopped at the first port", load, began, ended, ports)
    assert load.failed == [], load.failed[:5]
    assert webapp.result is False, webapp.raw
    assert f"vumi-{ENV}-{first}" in webapp.comment and f"webapp.{first}.log" in webapp.comment, webapp.comment
    assert "unrecognized arguments: --bogus-flag" in webapp.comment, webapp.comment
    assert f"left as they were: vumi-{ENV}-{second}, vumi-{ENV}-{third}" in webapp.comment, webapp.comment
    assert text.read_text() == before  # the program file is put back
    status = vumi.webapp_status(ENV, ports=ports)
    assert status[second]["pid"] == pids[second] and status[third]["pid"] == pids[third]
    assert all(status[p]["answers"] for p in ports), status  # the first one too: back on what it ran


# --------------------------------------------------------------------------
# nginx -t: a bad site never replaces the good one
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, complaint",
    [
        ({"server_name": "example.org; oops"}, 'unknown directive "oops"'),
        ({"listen": "127.0.0.1:99999"}, 'invalid port in "127.0.0.1:99999"'),
        ({"connect_timeout": "soon"}, '"proxy_connect_timeout" directive invalid value'),
    ],
    ids=["server_name", "listen", "connect_timeout"],
)
def test_a_site_nginx_rejects_fails_the_state_and_the_old_one_stays(deployed, cluster, nginx, bad, complaint):
    ports = cluster(1)
    pillar = nginx_pillar(ports, nginx.sites, nginx.port)
    apply_sls(deployed, "vumi.nginx", pillar)
    nginx.start()
    good = site_file(nginx.sites).read_bytes()
    before = sorted(os.listdir(nginx.sites))

    (state,) = apply_sls(deployed, "vumi.nginx", nginx_pillar(ports, nginx.sites, nginx.port, **bad)).values()
    assert state.result is False, state.raw
    assert "check_cmd execution failed" in state.comment, state.comment
    assert complaint in state.comment, state.comment  # nginx's own words
    assert not state.changes
    assert site_file(nginx.sites).read_bytes() == good
    assert sorted(os.listdir(nginx.sites)) == before  # no temporary file among the sites

    # the running nginx, reloaded, still has a valid config and serves
    nginx.reload()
    assert nginx.check().returncode == 0
    assert http_get(nginx.port)[1]["port"] == ports[0]


# --------------------------------------------------------------------------
# Graceful stop: stop_signal, requests in flight, stop_timeout
# --------------------------------------------------------------------------


def slow_request(port, seconds, results):
    try:
        results.append(http_get(port, f"/slow?seconds={seconds}", timeout=seconds + 10))
    except OSError as exc:
        results.append(exc)


def test_stop_lets_requests_in_flight_finish(vumi, cluster):
    (port,) = cluster(1)
    results = []
    client = threading.Thread(target=slow_request, args=(port, 1.5, results))
    client.start()
    time.sleep(0.3)  # the request is in flight
    began = time.monotonic()
    stopped = vumi.stop_webapp(ENV, port, ports=[port])
    took = time.monotonic() - began
    client.join(20)
    assert stopped["stopped"] is True and stopped["killed"] is False  # it left before stop_timeout
    assert took > 0.8, took  # it waited for the request in flight
    ((status, body),) = results
    assert status == 200 and body["slept"] == 1.5 and body["port"] == port
    assert not port_open(port)


def test_stop_timeout_bounds_the_wait(vumi, cluster):
    (port,) = cluster(1, stop_timeout=1)
    results = []
    client = threading.Thread(target=slow_request, args=(port, 20, results))
    client.start()
    time.sleep(0.3)
    began = time.monotonic()
    stopped = vumi.stop_webapp(ENV, port, ports=[port], stop_timeout=1)
    took = time.monotonic() - began
    client.join(30)
    assert stopped["stopped"] is True and stopped["killed"] is True
    assert took < 15, took  # stop_timeout (1 s), then SIGKILL: not the 20 s the request wanted
    (result,) = results
    assert isinstance(result, OSError)  # the request was cut: what SIGKILL does


def test_stop_signal_is_the_one_configured(vumi, webapps, free_port):
    port = free_port()
    webapps.append((ENV, port))
    # ignores SIGTERM, leaves on SIGUSR1 (like a server whose graceful stop is another signal)
    command = (
        '{venv}/bin/python -c "import signal, sys, http.server as h; '
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(0)); "
        "h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()\""
    )
    kwargs = {"ports": [port], "webapp_command": command, "stop_signal": "usr1", "stop_timeout": 5}
    ret = vumi.start_webapp(ENV, port, **kwargs)
    assert vumi.settings(ENV, stop_signal="usr1")["stop_signal"] == "SIGUSR1"
    with pytest.raises(SaltInvocationError, match="invalid stop_signal 'SIGNOPE'"):
        vumi.stop_webapp(ENV, port, **dict(kwargs, stop_signal="SIGNOPE"))
    assert alive(ret["pid"])  # a bad signal name signals nothing
    stopped = vumi.stop_webapp(ENV, port, **kwargs)
    assert stopped["killed"] is False  # SIGUSR1 stopped it; SIGTERM would have needed SIGKILL after 5 s
    assert not alive(ret["pid"])


# --------------------------------------------------------------------------
# Real sites: uploads, TLS, and no site for an environment the host does not deploy
# --------------------------------------------------------------------------

OPENSSL = "/usr/bin/openssl"


@pytest.mark.skipif(not os.access(OPENSSL, os.X_OK), reason="openssl makes the test's certificate")
def test_site_serves_uploads_from_shared_and_takes_a_certificate(deployed, cluster, nginx, tmp_path):
    ports = cluster(1)
    media = deployed.root / "shared" / "public" / "media"
    media.mkdir(parents=True, exist_ok=True)
    (media / "photo.txt").write_text("an upload\n")
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    pillar = nginx_pillar(ports, nginx.sites, nginx.port, media="public/media",
                          ssl_certificate=str(cert), ssl_certificate_key=str(key))  # fmt: skip
    (site,) = apply_sls(deployed, "vumi.nginx", pillar).values()
    assert site.result is True, site.comment  # nginx -t took the certificate
    text = site_file(nginx.sites).read_text()
    assert f"alias {deployed.root}/shared/public/media/;" in text  # the same for every release
    assert f"ssl_certificate {cert};" in text and f"ssl_certificate_key {key};" in text
    nginx.start()
    assert http_get(nginx.port, "/media/photo.txt") == (200, "an upload\n")

    half = nginx_pillar(ports, nginx.sites, nginx.port, ssl_certificate=str(cert))
    (state,) = apply_sls(deployed, "vumi.nginx", half).values()
    assert state.result is False and "go together" in state.comment


@pytest.mark.skipif(not os.access(OPENSSL, os.X_OK), reason="openssl makes the test's certificate")
def test_a_site_with_a_certificate_serves_https(deployed, cluster, nginx, tmp_path):
    (port,) = cluster(1)
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    pillar = nginx_pillar([port], nginx.sites, nginx.port, listen=f"127.0.0.1:{nginx.port} ssl",
                          ssl_certificate=str(cert), ssl_certificate_key=str(key))  # fmt: skip
    (site,) = apply_sls(deployed, "vumi.nginx", pillar).values()
    assert site.result is True, site.comment
    nginx.start()
    # a client that trusts that certificate alone: the handshake is nginx's, with that key
    conn = http.client.HTTPSConnection("127.0.0.1", nginx.port, timeout=10,
                                       context=ssl.create_default_context(cafile=str(cert)))  # fmt: skip
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and body["port"] == port, body  # the webapp, behind TLS
        assert conn.sock.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    finally:
        conn.close()
    status, _ = http_get(nginx.port)  # plain HTTP on that port: nginx's own 400, nothing proxied
    assert status == 400


def test_no_site_for_an_environment_the_host_does_not_deploy(deployed, tmp_path):
    pillar = nginx_pillar([8000], tmp_path, 8080)
    pillar["branch"] = "stagign"  # a typo: no such environment in pillar
    ret = deployed.loaders.modules.state.apply("vumi.nginx", pillar=pillar)
    assert not ret.errors, ret.errors  # rendered: the SLS itself decided there is no site
    assert not [s.id for s in ret if "nginx-site" in s.id], [s.id for s in ret]
    assert not list(tmp_path.glob("*.conf")), [s.comment for s in ret]
    pillar["branch"] = ENV  # the same pillar with the environment's real name: a site, in that folder
    ret = deployed.loaders.modules.state.apply("vumi.nginx", pillar=pillar)
    assert [p.name for p in tmp_path.glob("*.conf")] == [f"vumi-{ENV}.conf"], [s.comment for s in ret]


# --------------------------------------------------------------------------
# Maintenance: 503 with a page through the real nginx, health and allowed addresses through
# --------------------------------------------------------------------------


def fetch(port, path="/", source="127.0.0.1"):
    """GET through nginx on 127.0.0.1 from ``source`` (a loopback address): (status, body, Retry-After)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Retry-After")
    finally:
        conn.close()


def grain(deployed):
    """The ``vumi`` grain, as the minion loads salt/_grains/vumi.py, over this loader's cache."""
    spec = importlib.util.spec_from_file_location("vumi_grain_under_test", REPO / "salt" / "_grains" / "vumi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = deployed.loaders.opts
    return module.vumi()["vumi"]


def maintenance_site(deployed, cluster, nginx):
    ports = cluster(2)
    pillar = nginx_pillar(ports, nginx.sites, nginx.port, maintenance_allow=["127.0.0.2"], retry_after=30)
    pillar["vumi"]["health_path"] = "/health"
    apply_sls(deployed, "vumi.nginx", pillar)
    nginx.start()
    assert fetch(nginx.port)[0] == 200


def test_maintenance_answers_503_with_a_page_but_health_and_allowed_addresses_reach_the_app(
    deployed, vumi, cluster, nginx
):
    maintenance_site(deployed, cluster, nginx)
    assert vumi.maintenance(ENV, "on", "Upgrading the <database>, back at 14:00") == {"maintenance": True,
                                                                                     "page": "plain"}  # fmt: skip
    try:
        status, body, retry = fetch(nginx.port, "/")
        print(f"\nmaintenance on: {status}, Retry-After {retry}")
        assert (status, retry) == (503, "30") and "Upgrading the &lt;database&gt;, back at 14:00" in body, body
        status, body, _ = fetch(nginx.port, "/health")  # the app's own answer (its view asks the database)
        assert status != 503 and "Upgrading" not in body, "the health check reaches the app"
        assert fetch(nginx.port, "/", source="127.0.0.2")[0] == 200, "an allowed address reaches the app"
        assert vumi.maintenance(ENV)["maintenance"]["on"] is True
        assert grain(deployed)[ENV]["maintenance"] is True  # salt -G 'vumi:staging:maintenance:True'
    finally:
        assert vumi.maintenance(ENV, "off") == {"maintenance": False, "was": True}
    assert fetch(nginx.port, "/")[0] == 200
    assert vumi.maintenance(ENV) == {"maintenance": None} and "maintenance" not in grain(deployed)[ENV]
    with pytest.raises(SaltInvocationError, match="invalid state 'up': on or off"):
        vumi.maintenance(ENV, "up")


def test_a_hook_with_maintenance_shows_the_apps_page_only_while_it_runs(deployed, vumi, cluster, nginx):
    maintenance_site(deployed, cluster, nginx)
    sample.git(deployed.repo, "checkout", "-q", ENV)
    sample.commit_file(deployed.repo, ENV, "maintenance.html", "<h1>Our own page: migrating</h1>\n", "A page")
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            status, body, _ = fetch(nginx.port, "/")
            seen.append((time.monotonic(), status, body))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(1)
        vumi.deploy(ENV, hooks={"before_publish": [{"run": "sleep 5", "maintenance": True}]})
        time.sleep(1)
    finally:
        done.set()
        watcher.join(10)
    down = [(t, body) for t, status, body in seen if status == 503]
    assert down, "the page was up while the hook ran"
    window = down[-1][0] - down[0][0]
    first, last = seen.index(next(s for s in seen if s[1] == 503)), max(i for i, s in enumerate(seen) if s[1] == 503)
    print(f"\n503 for {window:.1f}s of {seen[-1][0] - seen[0][0]:.1f}s watched")
    assert 4 <= window <= 7, window
    assert all(status == 200 for _, status, _ in seen[:first] + seen[last + 1 :]), "200 before and after"
    assert all(status == 503 for _, status, _ in seen[first : last + 1]), "503 throughout the window"
    assert all("Our own page: migrating" in body for _, body in down)
    assert vumi.maintenance(ENV) == {"maintenance": None}
