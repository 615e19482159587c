"""Rehearse a cluster on one machine: ``python infra/local/stack.py up|down|status [--purge]``
(``infra/local/stack.sh`` installs what it needs first, then runs this).

``up`` starts, on 127.0.0.1 only:

* an S3-protocol server (moto) with the bucket ``arinv-stack`` (runs and MLflow artifacts);
* PostgreSQL (the Debian package's binaries; run as the ``postgres`` user when this runs as
  root) with a ``mlflow`` role and two databases: ``mlflow`` (tracking + registry) and
  ``mlflow_auth`` (users and permissions);
* an MLflow tracking server with basic auth (``--app-name basic-auth``) on that database, its
  artifacts proxied to the S3 server;
* a Ray head with token authentication (``RAY_AUTH_MODE=token``), its dashboard / Jobs API on
  loopback; the head's environment holds the MLflow and S3 credentials, as a cluster's nodes
  get them from secrets or instance profiles, so submitted jobs need none of their own.

Contracts:

* Everything lives in the state folder (``$ARINV_STACK_DIR``, default ``<repo>/.stack``):
  ``secrets.json`` and ``ray_token`` (mode 0600, generated on the first ``up``, reused after),
  ``stack.env`` (mode 0600: the variables a client exports), ``stack.json`` (what runs: pid,
  process group and start time of each service), one log per service, the PostgreSQL data.
* No secret is ever on a command line (``ps`` shows those) or printed: PostgreSQL's password
  reaches MLflow through a passfile (``PGPASSFILE``), MLflow's and S3's through environment
  variables, Ray's token through ``RAY_AUTH_TOKEN_PATH``. ``up`` prints the variable names and
  where to source them.
* ``down`` stops only what ``up`` started, by process group or pid (checked against the
  recorded start time, so a reused pid is never signalled), PostgreSQL with ``pg_ctl stop``;
  it leaves the data and the secrets for the next ``up`` (``--purge`` deletes the folder).
* Ports: ``ARINV_STACK_<S3|POSTGRES|MLFLOW|RAY|DASHBOARD>_PORT`` (defaults below); ``up``
  refuses a port already in use, naming it and the variable to change. Ray's internal ports
  are picked free at ``up``. ``ARINV_STACK_RAY_CPUS`` sets the head's logical CPUs (default:
  twice the cores, at least 4; see ``default_cpus``).

moto checks no S3 signatures: S3 access keys here are placeholders (real S3 checks them).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "arinv-stack"
PORTS = {"s3": 59000, "postgres": 55432, "mlflow": 55000, "ray": 56379, "dashboard": 58265}
MLFLOW_ADMIN = "arinv-admin"
SERVICES = ("s3", "postgres", "mlflow", "ray")  # start order; stopped in reverse


class StackError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"\033[1m[arinv stack]\033[0m {msg}", flush=True)


# ------------------------------------------------------------------------------ state

def state_dir() -> Path:
    return Path(os.environ.get("ARINV_STACK_DIR") or ROOT / ".stack").resolve()


def port(name: str) -> int:
    var = f"ARINV_STACK_{name.upper()}_PORT"
    value = os.environ.get(var, str(PORTS[name]))
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{var}={value!r} is not a port number") from None


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, before any secret is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_secrets(state: Path) -> dict:
    """The stack's secrets, generated once and kept (the database keeps its passwords)."""
    path = state / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    sec = {"postgres_password": secrets.token_urlsafe(24),
           "mlflow_password": secrets.token_urlsafe(24),
           "flask_secret_key": secrets.token_hex(32),
           "s3_access_key": "arinv" + secrets.token_hex(8),
           "s3_secret_key": secrets.token_urlsafe(30)}
    _write_private(path, json.dumps(sec, indent=1))
    _write_private(state / "ray_token", secrets.token_hex(32))  # Ray's own token format
    return sec


def read_stack(state: Path) -> dict:
    try:
        return json.loads((state / "stack.json").read_text())
    except (OSError, ValueError):
        return {}


def write_stack(state: Path, stack: dict) -> None:
    (state / "stack.json").write_text(json.dumps(stack, indent=1))


# ------------------------------------------------------------------------------ processes

def _started(pid: int) -> float | None:
    """The start time of ``pid`` (psutil's create_time), None when it is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except psutil.NoSuchProcess:
        return None


def alive(rec: dict) -> bool:
    t = _started(rec["pid"])
    return t is not None and abs(t - rec["started"]) < 1.0


def spawn(cmd: list[str], env: dict, log: Path) -> dict:
    """Start ``cmd`` detached in a process group of its own; returns its record."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=log.parent, start_new_session=True)
    return {"pid": proc.pid, "pgid": proc.pid, "started": _started(proc.pid) or time.time(),
            "log": str(log)}


def stop_group(rec: dict, timeout: float = 15.0) -> None:
    """SIGTERM the recorded process group (and every descendant found now, in case one moved
    to a group of its own), then SIGKILL what is left after ``timeout``."""
    import psutil

    if not alive(rec):
        return
    procs = [psutil.Process(rec["pid"])]
    procs += procs[0].children(recursive=True)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(rec["pgid"], sig)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + wait
        while procs and time.monotonic() < deadline:
            time.sleep(0.2)
            procs = [p for p in procs if _running(p)]
        if not procs:
            return


def _running(p) -> bool:
    """Running and not a zombie (a zombie is dead, waiting for its parent to reap it)."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(what: str, check, timeout: float, rec: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rec is not None and not alive(rec):
            raise StackError(f"{what} exited while starting; its log:\n{tail(rec['log'])}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {timeout:.0f} s"
                     + (f"; its log:\n{tail(rec['log'])}" if rec else ""))


def tail(path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def port_free(p: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


def free_ports(n: int, avoid: set[int]) -> list[int]:
    """``n`` distinct free ports, none in ``avoid`` (the configured ones: a port picked here
    and released may be handed out again, so every socket stays bound until all are picked)."""
    held, out = [], []
    try:
        while len(out) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            if (p := s.getsockname()[1]) not in avoid:
                out.append(p)
    finally:
        for s in held:
            s.close()
    return out


def http_status(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def base_env() -> dict:
    """This environment without any MLflow, AWS or Ray settings of the caller's, the venv's
    bin first on PATH (jobs run ``python`` and ``arinv`` from there)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AWS_", "RAY_", "PG"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true",
               RAY_USAGE_STATS_ENABLED="0")
    return env


def s3_env(state: Path, sec: dict) -> dict:
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port('s3')}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port('s3')}",
            "AWS_ACCESS_KEY_ID": sec["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": sec["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(state / "aws-config"),  # none: no profile of the user's
            "AWS_SHARED_CREDENTIALS_FILE": str(state / "aws-credentials")}


def client_env(state: Path, sec: dict) -> dict:
    """What a client (``ray job submit``, ``arinv``, ``mlflow``) exports to use the stack."""
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port('dashboard')}",
            "RAY_ADDRESS": f"127.0.0.1:{port('ray')}",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(state / "ray_token"),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port('mlflow')}",
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": sec["mlflow_password"],
            "ARINV_STORAGE": f"s3://{BUCKET}/runs",
            **s3_env(state, sec)}


# ------------------------------------------------------------------------------ services

def start_s3(state: Path, sec: dict) -> dict:
    import boto3

    rec = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port("s3"))],
                base_env(), state / "s3.log")
    url = f"http://127.0.0.1:{port('s3')}"
    wait_for(f"the S3 server on {url}", lambda: http_status(url) < 500, 30, rec)
    boto3.session.Session().client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=sec["s3_access_key"],
        aws_secret_access_key=sec["s3_secret_key"]).create_bucket(Bucket=BUCKET)
    return rec


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    if shutil.which("pg_ctl"):
        return Path(shutil.which("pg_ctl")).parent
    raise StackError("PostgreSQL's binaries (pg_ctl, initdb) are not installed: run "
                     "'bash infra/local/stack.sh up' (it installs Debian's postgresql package) "
                     "or 'apt-get install postgresql'")


def as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--"] + cmd


def start_postgres(state: Path, sec: dict) -> dict:
    import psutil
    import psycopg
    from psycopg import sql

    bindir, data = pg_bin(), state / "postgres"
    log = state / "postgres.log"
    if not data.exists():
        data.mkdir(mode=0o700)
    log.touch()
    if os.geteuid() == 0:
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise StackError("running as root, but there is no 'postgres' user to run "
                             "PostgreSQL as: install Debian's postgresql package") from None
        os.chown(data, pg.pw_uid, pg.pw_gid)
        os.chown(log, pg.pw_uid, pg.pw_gid)
        probe = subprocess.run(as_pg_user(["test", "-w", str(data)]))
        if probe.returncode != 0:
            raise StackError(f"the postgres user cannot reach {data}: a folder above it is "
                             "closed to other users. Set ARINV_STACK_DIR to a folder it can "
                             "reach (e.g. /var/tmp/arinv-stack)")
    if not (data / "PG_VERSION").exists():
        out = subprocess.run(as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U",
                                         "postgres", "-E", "UTF8", "--auth-local=trust",
                                         "--auth-host=scram-sha-256"]),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise StackError(f"initdb {data} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    # the socket sits in the data folder (mode 0700): only its owner connects without password
    opts = f"-p {port('postgres')} -k {data} -c listen_addresses=127.0.0.1"
    out = subprocess.run(as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                     "-o", opts, "-w", "-t", "60", "start"]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"PostgreSQL did not start:\n{out.stdout[-1500:]}{tail(log)}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    rec = {"pid": pid, "pgid": None, "started": psutil.Process(pid).create_time(),
           "log": str(log), "data": str(data)}
    with psycopg.connect(host=str(data), port=port("postgres"), user="postgres",
                         dbname="postgres", autocommit=True) as conn:
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'").fetchone()
        verb = "ALTER" if role else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE mlflow LOGIN PASSWORD {}").format(
            sql.Literal(sec["postgres_password"])))
        for db in ("mlflow", "mlflow_auth"):
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER mlflow").format(sql.Identifier(db)))
    # libpq's passfile: host:port:db:user:password (':' and '\' escaped)
    pw = sec["postgres_password"].replace("\\", "\\\\").replace(":", "\\:")
    _write_private(state / "pgpass", f"127.0.0.1:{port('postgres')}:*:mlflow:{pw}\n")
    return rec


def start_mlflow(state: Path, sec: dict) -> dict:
    db = f"postgresql://mlflow@127.0.0.1:{port('postgres')}"
    (state / "mlflow-auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {db}/mlflow_auth\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = base_env() | s3_env(state, sec) | {
        "PGPASSFILE": str(state / "pgpass"),
        "MLFLOW_AUTH_CONFIG_PATH": str(state / "mlflow-auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": sec["mlflow_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": sec["flask_secret_key"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    exe = Path(sys.executable).with_name("mlflow")
    return spawn([str(exe) if exe.exists() else "mlflow", "server", "--app-name", "basic-auth",
                  "--host", "127.0.0.1", "--port", str(port("mlflow")), "--workers", "1",
                  "--backend-store-uri", f"{db}/mlflow",
                  "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts"],
                 env, state / "mlflow.log")


def default_cpus() -> int:
    """Twice the cores, at least 4 logical CPUs, as a local run's cluster has: the presets'
    training workers take whole cores (tiny-sample-*: 2), and the data stream's read tasks need
    CPUs left over, or they wait for ever."""
    return max(4, 2 * (os.cpu_count() or 1))


def start_ray(state: Path, sec: dict) -> dict:
    env = base_env() | client_env(state, sec)
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(k)
    exe = Path(sys.executable).with_name("ray")
    cmd = [str(exe) if exe.exists() else "ray", "start", "--head", "--block",
           "--port", str(port("ray")),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port("dashboard")),
           "--temp-dir", str(state / "ray"), "--disable-usage-stats"]
    flags = ("--ray-client-server-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--node-manager-port", "--object-manager-port")
    for flag, p in zip(flags, free_ports(len(flags), {port(n) for n in PORTS}), strict=True):
        cmd += [flag, str(p)]
    cmd += ["--num-cpus", os.environ.get("ARINV_STACK_RAY_CPUS") or str(default_cpus())]
    return spawn(cmd, env, state / "ray.log")


def ray_ready(state: Path) -> bool:
    token = (state / "ray_token").read_text().strip()
    url = f"http://127.0.0.1:{port('dashboard')}/api/jobs/"
    return http_status(url, {"Authorization": f"Bearer {token}"}) == 200


# ------------------------------------------------------------------------------ commands

def up(state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o711)  # others may traverse (the postgres user), not list
    stack = read_stack(state)
    running = [n for n in SERVICES if n in stack and alive(stack[n])]
    if running:
        raise StackError(f"the stack in {state} is already up ({', '.join(running)}): "
                         "'stack.sh status' shows it, 'stack.sh down' stops it")
    busy = [f"{p} (ARINV_STACK_{n.upper()}_PORT)" for n in PORTS
            if not port_free(p := port(n))]
    if busy:
        raise StackError(f"port(s) in use on 127.0.0.1: {', '.join(busy)}; set the variable "
                         "named to a free port")
    sec = load_secrets(state)
    stack = {}
    try:
        for name, start in (("s3", start_s3), ("postgres", start_postgres)):
            say(f"starting {name}")
            stack[name] = start(state, sec)
            write_stack(state, stack)
        say("starting mlflow (basic auth, PostgreSQL) and the Ray head (token auth)")
        stack["mlflow"] = start_mlflow(state, sec)
        stack["ray"] = start_ray(state, sec)
        write_stack(state, stack)
        wait_for("the MLflow server", lambda: http_status(
            f"http://127.0.0.1:{port('mlflow')}/health") == 200, 180, stack["mlflow"])
        wait_for("the Ray head's Jobs API", lambda: ray_ready(state), 120, stack["ray"])
    except BaseException:
        say("start failed: stopping what was started")
        down(state, quiet=True)
        raise
    env = client_env(state, sec)
    _write_private(state / "stack.env",
                   "".join(f"export {k}={json.dumps(v)}\n" for k, v in env.items()))
    say("up, on 127.0.0.1:")
    for line in addresses().values():
        print("  " + line)
    print(f"\nTo use it:  source {state / 'stack.env'}   (sets "
          + ", ".join(env) + ")")
    print("Then, e.g.:  ray job submit --working-dir . -- python -m pipelines.train_encoder "
          "--config tiny-sample-standard --storage-path $ARINV_STORAGE")
    print(f"Stop it:    bash infra/local/stack.sh down   (logs in {state})")


def addresses() -> dict:
    """Each service's address, in start order (Ray's two: the head and its Jobs API)."""
    return {"s3": f"S3             http://127.0.0.1:{port('s3')}  (bucket {BUCKET})",
            "postgres": f"PostgreSQL     127.0.0.1:{port('postgres')}  (databases mlflow, "
                        "mlflow_auth)",
            "mlflow": f"MLflow         http://127.0.0.1:{port('mlflow')}  (basic auth, user "
                      f"{MLFLOW_ADMIN})",
            "ray": f"Ray head       127.0.0.1:{port('ray')}  (token auth)\n"
                   f"  Ray Jobs API   http://127.0.0.1:{port('dashboard')}  (dashboard, "
                   "ray job submit)"}


def down(state: Path, quiet: bool = False, purge: bool = False) -> None:
    stack = read_stack(state)
    for name in reversed(SERVICES):
        rec = stack.get(name)
        if rec is None:
            continue
        if alive(rec):
            if not quiet:
                say(f"stopping {name} (pid {rec['pid']})")
            if name == "postgres":
                subprocess.run(as_pg_user([str(pg_bin() / "pg_ctl"), "-D", rec["data"], "-m",
                                           "fast", "-w", "-t", "30", "stop"]),
                               capture_output=True)
                if alive(rec):
                    os.kill(rec["pid"], signal.SIGQUIT)  # the postmaster's immediate shutdown
            else:
                # Ray's head takes 15-50 s to stop gracefully (its reaper ignores SIGTERM);
                # it keeps no state worth a clean stop (runs and checkpoints live elsewhere)
                stop_group(rec, timeout=5.0 if name == "ray" else 15.0)
        stack.pop(name)
        write_stack(state, stack)
    if purge and state.exists():
        shutil.rmtree(state)
        if not quiet:
            say(f"deleted {state}")
    elif not quiet:
        say("down (data and secrets kept; 'down --purge' deletes them)")


def status(state: Path) -> int:
    stack = read_stack(state)
    checks = {"s3": lambda: http_status(f"http://127.0.0.1:{port('s3')}") < 500,
              "postgres": lambda: not port_free(port("postgres")),
              "mlflow": lambda: http_status(f"http://127.0.0.1:{port('mlflow')}/health") == 200,
              "ray": lambda: ray_ready(state)}
    up_count = 0
    for name, line in addresses().items():
        rec = stack.get(name)
        if rec is None or not alive(rec):
            print(f"  stopped  {line.split('  ')[0]}")
            continue
        try:
            healthy = checks[name]()
        except OSError:
            healthy = False
        up_count += healthy
        print(f"  {'up' if healthy else 'NOT RESPONDING'} (pid {rec['pid']})  {line}")
    return 0 if up_count == len(SERVICES) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="stack.sh", description="Bring up / down / inspect, on 127.0.0.1, the services a cluster has: a token-auth "
        "Ray head, an MLflow server with basic auth on PostgreSQL, an S3-protocol server. "
        "State, secrets and logs live in $ARINV_STACK_DIR (default .stack/).")
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--purge", action="store_true",
                    help="with down: also delete the state folder (database, secrets, logs)")
    args = ap.parse_args(argv)
    state = state_dir()
    try:
        if args.command == "up":
            up(state)
        elif args.command == "down":
            down(state, purge=args.purge)
        else:
            return status(state)
    except StackError as e:
        say(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
