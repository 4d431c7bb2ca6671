"""Starting Lattice and Synapse for the benchmarks, and a few client calls.

Shared by federation_join.py and side_by_side.py. Both servers get the same
treatment: rate limits out of the way, cheap password hashing (registration is
never timed), a client listener on loopback, and with `tls` a federation
listener using the certificates of `lattice generate-tls-cert`.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


ORDER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build",
                          "startup-order.txt")


def startup_order_report(binary):
    """How many names of build/startup-order.txt the binary holds: idle RSS
    depends on it (docs/performance.md), and the names go stale as the code
    changes. Printed with each benchmark so a stale order is seen, not guessed."""
    try:
        with open(ORDER_FILE) as f:
            wanted = {line.strip() for line in f if line.strip()}
        out = subprocess.run(["nm", "--defined-only", binary], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return f"startup order: not checked ({e})"
    held = {line.split()[-1] for line in out.splitlines() if line.strip()}
    found = len(wanted & held)
    note = "" if found >= 0.95 * len(wanted) else \
        " (stale: run scripts/startup-order, then rebuild; idle RSS reads high)"
    return f"startup order: {found} of {len(wanted)} names in {binary}{note}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, token=None, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_up(base, proc, what):
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            status, _ = call(base, "GET", "/_matrix/client/versions", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not start")


def register(base, user, password="bench-password"):
    status, body = call(base, "POST", "/_matrix/client/v3/register", body={
        "username": user, "password": password})
    assert status == 401, body
    status, body = call(base, "POST", "/_matrix/client/v3/register", body={
        "username": user, "password": password,
        "auth": {"type": "m.login.dummy", "session": body["session"]}})
    assert status == 200, body
    return body["access_token"], body["user_id"]


def q(s):
    return urllib.parse.quote(s, safe="")


def peak_rss_mib(proc):
    """The process's peak resident set (VmHWM), in MiB; None once it is gone."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop_all(servers):
    for s in servers:
        s.proc.terminate()
    for s in servers:
        try:
            s.proc.wait(30)
        except subprocess.TimeoutExpired:
            s.proc.kill()


class Synapse:
    """A Synapse monolith. `postgres` is a libpq URL of an empty database with
    the C locale (SQLite in the server's directory without it)."""

    def __init__(self, python, work, name, tls=None, postgres=None, pool=16, appservices=()):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.port, self.client_port = free_port(), free_port()
        self.name = f"localhost:{self.port}"
        self.base = f"http://127.0.0.1:{self.client_port}"
        lots = "{per_second: 100000, burst_count: 100000}"
        if postgres:
            url = urllib.parse.urlparse(postgres)
            database = (f"{{name: psycopg2, args: {{user: {url.username or 'postgres'}, "
                        f"host: '{url.hostname or '127.0.0.1'}', port: {url.port or 5432}, "
                        f"database: {url.path.lstrip('/')}, cp_min: 5, cp_max: {pool}}}}}")
        else:
            database = f"{{name: sqlite3, args: {{database: {self.dir}/homeserver.db}}}}"
        listeners = (f"  - {{port: {self.client_port}, bind_addresses: ['127.0.0.1'], "
                     "type: http, tls: false, resources: [{names: [client], compress: false}]}\n")
        federation = ""
        if tls:
            listeners += (f"  - {{port: {self.port}, bind_addresses: ['127.0.0.1'], type: http, "
                          "tls: true, resources: [{names: [federation], compress: false}]}\n")
            federation = f"""tls_certificate_path: {tls}/lattice.crt
tls_private_key_path: {tls}/lattice.key
federation_custom_ca_list: [{tls}/ca.pem]
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
"""
        config = f"""server_name: "{self.name}"
pid_file: {self.dir}/homeserver.pid
report_stats: false
listeners:
{listeners}{federation}database: {database}
media_store_path: {self.dir}/media
signing_key_path: {self.dir}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
macaroon_secret_key: "bench"
form_secret: "bench"
log_config: {self.dir}/log.yaml
rc_message: {lots}
rc_registration: {lots}
rc_room_creation: {lots}
rc_login: {{address: {lots}, account: {lots}, failed_attempts: {lots}}}
rc_joins: {{local: {lots}, remote: {lots}}}
rc_joins_per_room: {lots}
rc_invites: {{per_room: {lots}, per_user: {lots}, per_issuer: {lots}}}
rc_federation: {{window_size: 1000, sleep_limit: 100000, sleep_delay: 1, reject_limit: 100000, concurrent: 1000}}
federation_rr_transactions_per_room_per_second: 100000
app_service_config_files: [{", ".join(appservices)}]
"""
        with open(f"{self.dir}/homeserver.yaml", "w") as f:
            f.write(config)
        with open(f"{self.dir}/log.yaml", "w") as f:
            f.write(f"""version: 1
formatters: {{precise: {{format: '%(asctime)s %(name)s %(levelname)s %(message)s'}}}}
handlers: {{file: {{class: logging.FileHandler, formatter: precise, filename: {self.dir}/synapse.log}}}}
root: {{level: WARNING, handlers: [file]}}
disable_existing_loggers: false
""")
        subprocess.run([python, "-m", "synapse.app.homeserver", "-c",
                        f"{self.dir}/homeserver.yaml", "--generate-keys"],
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [python, "-m", "synapse.app.homeserver", "-c", f"{self.dir}/homeserver.yaml"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/stderr.log", "w"))
        wait_up(self.base, self.proc, name)


class Lattice:
    """Lattice on the PostgreSQL database `database_url` (empty or Lattice's),
    with the appservice registration files `appservices`."""

    def __init__(self, binary, work, database_url, tls=None, pool=16, appservices=(),
                 faster_joins=False, name="lattice"):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.port, self.client_port = free_port(), free_port()
        self.name = f"localhost:{self.port}"
        self.base = f"http://127.0.0.1:{self.client_port}"
        config = f"""server_name = "{self.name}"
data_dir = "{self.dir}"
log = "warn"
{f'appservices = [{", ".join(json.dumps(a) for a in appservices)}]' if appservices else ""}
[[listeners]]
bind = "127.0.0.1:{self.client_port}"
resources = ["client"]
"""
        if tls:
            config += f"""[[listeners]]
bind = "127.0.0.1:{self.port}"
resources = ["federation"]
tls_certificate = "{tls}/lattice.crt"
tls_private_key = "{tls}/lattice.key"
"""
        config += f"""[database]
url = "{database_url}"
max_connections = {pool}
[registration]
open = true
[auth]
argon2_memory_kib = 64
argon2_iterations = 1
[rate_limits]
enabled = false
[federation]
trusted_key_servers = []
ip_range_allowlist = ["127.0.0.0/8", "::1/128"]
"""
        if faster_joins:
            config += "faster_joins = true\n"
        if tls:
            config += f'extra_ca_files = ["{tls}/ca.pem"]\n'
        with open(f"{self.dir}/lattice.toml", "w") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            [binary, "--config", f"{self.dir}/lattice.toml"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/lattice.log", "w"))
        wait_up(self.base, self.proc, name)
