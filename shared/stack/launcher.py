"""`modelreg stack up | down [--purge] | status`: Kafka, PostgreSQL and S3 on 127.0.0.1.

State lives in the stack directory (`MODELREG_STACK_DIR`, default `.modelreg/` in the
current directory): data, logs and `stack.json` with the ports and pids. Kafka's jars are
cached outside it (`MODELREG_CACHE_DIR`, default `~/.cache/modelreg`), so `down --purge`
forgets the data but not the download.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from shared import keys
from shared.settings import DEFAULT_KAFKA_PORT, DEFAULT_POSTGRES_PORT, DEFAULT_S3_PORT
from shared.stack import kafka, postgres, s3
from shared.stack.kafka_auth import ADMIN, KafkaAuth
from shared.stack.proc import StackError, alive, port_open, spawn, tail, terminate, wait_for

S3_ACCESS_KEY = "modelreg"
S3_SECRET_KEY = "modelreg-secret"  # moto accepts any credentials; these only match the defaults
S3_BUCKET = "modelreg"

Log = Callable[[str], None]


def default_stack_dir() -> Path:
    return Path(os.environ.get("MODELREG_STACK_DIR") or Path.cwd() / ".modelreg").resolve()


def default_cache_dir() -> Path:
    base = os.environ.get("MODELREG_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelreg"
    return Path(base).resolve()


@dataclass
class Ports:
    kafka: int = DEFAULT_KAFKA_PORT
    postgres: int = DEFAULT_POSTGRES_PORT
    s3: int = DEFAULT_S3_PORT

    @property
    def kafka_controller(self) -> int:
        return self.kafka + 1


@dataclass
class StackState:
    ports: Ports = field(default_factory=Ports)
    kafka_pid: int | None = None  # node 1 (the only one by default)
    kafka_brokers: int = 1
    kafka_peer_pids: list[int | None] = field(default_factory=list)  # nodes 2.. of --brokers N
    s3_pid: int | None = None
    postgres_dir: str | None = None
    postgres_user: str | None = None
    services: dict[str, int] = field(default_factory=dict)  # name -> pid of a background service
    s3_server: str | None = None
    # The running S3 server confines the publisher account to uploads/ (versitygw started with
    # its internal IAM); False for moto, and for a versitygw started before publishers existed.
    s3_publisher: bool = False


class LocalStack:
    def __init__(self, stack_dir: Path | None = None, cache_dir: Path | None = None) -> None:
        self.dir = (stack_dir or default_stack_dir()).resolve()
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.state_file = self.dir / "stack.json"
        self.state = self._load()

    # -- state --------------------------------------------------------------------------

    def _load(self) -> StackState:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return StackState()
        # Keys this version does not know (a newer one wrote the file) are left out, not fatal.
        known = {f.name for f in fields(StackState)}
        return StackState(ports=Ports(**raw.pop("ports", {})), **{k: v for k, v in raw.items() if k in known})

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))

    @property
    def ports(self) -> Ports:
        return self.state.ports

    # Per-service signing keys (shared/keys.py): private files 0600, and the public keyring.
    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    @property
    def keyring_file(self) -> Path:
        return self.keys_dir / keys.KEYRING_FILE_NAME

    def signing_key_file(self, service: str) -> Path:
        return keys.key_file(self.keys_dir, service)

    # Kafka's identities (shared/stack/kafka_auth.py): a CA, the broker's certificate, SCRAM users.
    @property
    def kafka_home(self) -> Path:
        return self.dir / "kafka"

    @property
    def kafka_auth(self) -> KafkaAuth:
        return KafkaAuth(self.dir / "kafka-auth")

    @property
    def kafka_nodes(self) -> list[kafka.Node]:
        return kafka.cluster_nodes(self.kafka_home, self.ports.kafka, self.state.kafka_brokers)

    def kafka_node_pid(self, node_id: int) -> int | None:
        if node_id == 1:
            return self.state.kafka_pid
        peers = self.state.kafka_peer_pids
        return peers[node_id - 2] if len(peers) >= node_id - 1 else None

    def _set_kafka_node_pid(self, node_id: int, pid: int | None) -> None:
        if node_id == 1:
            self.state.kafka_pid = pid
            return
        peers = self.state.kafka_peer_pids
        peers.extend([None] * (node_id - 1 - len(peers)))
        peers[node_id - 2] = pid

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.kafka_nodes)

    @property
    def kafka_secured(self) -> bool:
        """SASL_SSL with ACLs; False only for a stack formatted before that existed."""
        return kafka.secured(self.kafka_home)

    def add_new_principals(self) -> list[str]:
        """Principals added to the registry since this stack's Kafka was formatted (a new
        service) get a password and a SCRAM credential on the running broker; returns them."""
        from shared.kafka_users import add_missing_scram_users
        from shared.settings import load_settings
        from shared.stack.kafka_auth import PRINCIPALS

        if (not self.kafka_secured or not self.kafka_auth.exists()
                or set(PRINCIPALS) <= set(self.kafka_auth.passwords())):
            return []
        self.kafka_auth.ensure()
        settings = load_settings(**{k.lower(): v for k, v in self.kafka_env().items()})
        return add_missing_scram_users(settings, self.kafka_auth.passwords())

    def kafka_env(self, principal: str = ADMIN) -> dict[str, str]:
        """The Kafka settings of a client authenticating as `principal` (a service, an
        outside role, or the admin super user the stack itself uses)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if self.kafka_secured and self.kafka_auth.exists():  # made by the first `up`
            env.update(self.kafka_auth.client_env(principal))
        return env

    def env(self, principal: str = ADMIN) -> dict[str, str]:
        """The settings that point modelreg at this stack; Kafka as `principal`."""
        return {
            **self.kafka_env(principal),
            "DATABASE_URL": postgres.dsn(self.ports.postgres),
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{self.ports.s3}",
            "S3_BUCKET": S3_BUCKET,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "MODELREG_KEYRING_FILE": str(self.keyring_file),
        }

    def publisher_s3_env(self) -> dict[str, str]:
        """The S3 credential of outside publishers (`modelreg stack credentials pipeline`): it
        may write under uploads/ and nothing else where the stack runs versitygw."""
        return s3.publisher_account(self.dir).env()

    @property
    def uploads_confined(self) -> bool:
        """Whether the running S3 server holds the publisher credential to uploads/."""
        return self.state.s3_publisher and alive(self.state.s3_pid)

    # -- up -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One `up` or `down` at a time per stack (test sessions may race to start it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self.state = self._load()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def up(self, ports: Ports | None = None, *, log: Log = print, brokers: int | None = None) -> None:
        """Kafka (`brokers` nodes; default: as the stack was made, else 1), PostgreSQL and S3;
        see `start_services` for the registry on top."""
        with self._exclusive():
            self._up(ports, log, brokers)

    def start_services(self, names: tuple[str, ...], env: dict[str, str], *, log: Log = print) -> None:
        """Each service as a background process (`modelreg run NAME`), logging to logs/NAME.log."""
        with self._exclusive():
            for name in names:
                if alive(self.state.services.get(name)):
                    continue
                log(f"starting the {name} service")
                self.state.services[name] = spawn(
                    [sys.executable, "-m", "services.cli.main", "run", name], self.dir / "logs" / f"{name}.log",
                    env={**env, **self.env(name), "PYTHONPATH": _import_root(),
                         "MODELREG_SIGNING_KEY_FILE": str(self.signing_key_file(name))})
            self._save()

    def stop_services(self, *, log: Log = print) -> None:
        with self._exclusive():
            self._stop_services(log)

    def _stop_services(self, log: Log) -> None:
        running = {n: p for n, p in self.state.services.items() if alive(p)}
        if running:
            log(f"stopping {', '.join(running)}")
        for pid in running.values():
            terminate(pid, timeout=40)
        self.state.services = {}
        self._save()

    def _up(self, ports: Ports | None, log: Log, brokers: int | None = None) -> None:
        if ports is not None and self.running_parts():
            if asdict(ports) != asdict(self.ports):
                raise StackError(f"the stack in {self.dir} is running on other ports; "
                                 "run `modelreg stack down` first")
        if brokers is not None and brokers != self.state.kafka_brokers:
            kafka.cluster_nodes(self.kafka_home, self.ports.kafka, brokers)  # checks the number
            if kafka.formatted(self.kafka_home):
                raise StackError(f"the stack in {self.dir} has a Kafka cluster of {self.state.kafka_brokers} "
                                 f"broker(s); `modelreg stack down --purge` first to make one of {brokers} "
                                 "(or use another MODELREG_STACK_DIR)")
            self.state.kafka_brokers = brokers
        if ports is not None:
            self.state.ports = ports
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save()
        keys.write_keyring(self.keys_dir)
        self._up_postgres(log)
        self._up_s3(log)
        self._up_kafka(log)
        self._save()
        asyncio.run(self._bootstrap())
        log("stack is up")

    def _check_port_free(self, port: int, what: str) -> None:
        if port_open(port):
            raise StackError(f"port {port} for {what} is taken by another program (perhaps another modelreg "
                             f"stack, of another MODELREG_STACK_DIR); choose another port with "
                             f"`modelreg stack up --{what}-port N` or stop that program")

    def _up_postgres(self, log: Log) -> None:
        user = self.state.postgres_user if self.state.postgres_dir else postgres.run_as()
        pgdata = Path(self.state.postgres_dir) if self.state.postgres_dir else postgres.data_dir(self.dir, user)
        self.state.postgres_user, self.state.postgres_dir = user, str(pgdata)
        self._save()
        if postgres.running(pgdata, user):
            return
        self._check_port_free(self.ports.postgres, "postgres")
        log(f"starting PostgreSQL on 127.0.0.1:{self.ports.postgres}")
        postgres.init_cluster(pgdata, user)
        postgres.start(pgdata, self.dir / "logs" / "postgres.log", self.ports.postgres, user)

    def _up_s3(self, log: Log) -> None:
        if alive(self.state.s3_pid):
            if self.state.s3_server != "versitygw" or self.state.s3_publisher:
                return
            # Started before publishers had their own account: its IAM needs a restart (the
            # objects are files, nothing is lost; requests in flight fail once).
            log("restarting the S3 server to give publishers their own account (uploads/ only)")
            terminate(self.state.s3_pid, timeout=60)
            self.state.s3_pid = None
        self._check_port_free(self.ports.s3, "s3")
        kind, binary = s3.choose(self.cache_dir, log)
        log(f"starting the S3 server ({kind}) on 127.0.0.1:{self.ports.s3}")
        ready = self.dir / "s3.ready"
        ready.unlink(missing_ok=True)
        self.state.s3_server = kind
        self.state.s3_publisher = False
        self.state.s3_pid = s3.start(kind, binary, self.dir, self.ports.s3, S3_ACCESS_KEY, S3_SECRET_KEY, ready,
                                     _import_root())
        self._save()

        def answering() -> bool:
            if not alive(self.state.s3_pid):
                return True
            return ready.exists() if kind == "moto" else _http_answers(f"http://127.0.0.1:{self.ports.s3}/")

        if not wait_for(answering, 120) or not alive(self.state.s3_pid):
            raise StackError(f"the S3 server did not start:\n{tail(self.dir / 'logs' / 's3.log')}")
        if kind == "moto":
            log(f"warning: {s3.INSECURE_FALLBACK}")
            return
        assert binary is not None
        s3.ensure_account(binary, self.ports.s3, s3.S3Account(S3_ACCESS_KEY, S3_SECRET_KEY),
                          s3.publisher_account(self.dir))
        self.state.s3_publisher = True
        self._save()

    def _up_kafka(self, log: Log) -> None:
        nodes = self.kafka_nodes
        down = [n for n in nodes if not alive(self.kafka_node_pid(n.node_id))]
        if not down:
            return
        for node in down:
            self._check_port_free(node.port, "kafka")
            self._check_port_free(node.controller_port, "kafka")
        if not (self.cache_dir / f"kafka-{kafka.KAFKA_VERSION}" / ".resolved").exists():
            log(f"fetching Apache Kafka {kafka.KAFKA_VERSION} jars with Maven (first run only)")
        where = ", ".join(f"127.0.0.1:{n.port}" for n in down)
        log(f"starting Apache Kafka {kafka.KAFKA_VERSION} (KRaft) on {where}")
        auth = self.kafka_auth if self.kafka_secured else None
        if auth is None:
            log("warning: this stack's Kafka was created before it had security and runs PLAINTEXT: "
                "anyone on this machine can forge events; `modelreg stack down --purge` and `up` "
                "make a secured one (SASL_SSL, ACLs)")
        else:
            auth.ensure()
        for node in down:
            self._set_kafka_node_pid(node.node_id, kafka.start_node(node, nodes, self.cache_dir, auth))
        self._save()
        for node in down:
            pid = self.kafka_node_pid(node.node_id)
            # wait_for calls it before the loop moves on: the loop variables are the right ones
            # A broker killed mid-write recovers its logs before it listens: minutes on a busy machine.
            if not wait_for(lambda: port_open(node.port) or not alive(pid), 300):  # noqa: B023
                raise StackError(f"Kafka did not open its port {node.port}:\n{tail(node.home / 'kafka.log')}")
            if not alive(pid):
                raise StackError(f"Kafka (node {node.node_id}) exited:\n{tail(node.home / 'kafka.log')}")

    def start_kafka(self, *, log: Log = print) -> None:
        """Start every Kafka node that is not running (after a fault test stopped one)."""
        with self._exclusive():
            self._up_kafka(log)

    def start_postgres(self, *, log: Log = print) -> None:
        with self._exclusive():
            self._up_postgres(log)

    def stop_postgres(self) -> None:
        """A fast shutdown: sessions are disconnected, as in a database restart."""
        with self._exclusive():
            if self.state.postgres_dir:
                postgres.stop(Path(self.state.postgres_dir), self.state.postgres_user)

    def start_s3(self, *, log: Log = print) -> None:
        with self._exclusive():
            self._up_s3(log)

    def stop_s3(self) -> None:
        with self._exclusive():
            terminate(self.state.s3_pid, timeout=300)
            self.state.s3_pid = None
            self._save()

    async def _bootstrap(self) -> None:
        """The database, the bucket and the contract topics, so clients can publish at once."""
        import asyncpg

        from shared.broker import ensure_topics_once_up
        from shared.kafka_acls import apply_acls
        from shared.settings import load_settings
        from shared.storage import ObjectStore

        conn = await asyncpg.connect(postgres.dsn(self.ports.postgres, "postgres"))
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", postgres.DATABASE):
                await conn.execute(f'CREATE DATABASE "{postgres.DATABASE}"')
        finally:
            await conn.close()
        settings = load_settings(**{k.lower(): v for k, v in self.env().items()}, topic_prefix="")
        async with ObjectStore(settings) as store:
            await store.ensure_bucket()
            if self.state.s3_publisher:
                await s3.confine_publishers(await store.boto(), S3_BUCKET, [s3.publisher_account(self.dir).access_key])
        await self._wait_for_brokers(settings)
        await ensure_topics_once_up(settings)
        if self.kafka_secured:
            await asyncio.to_thread(self.add_new_principals)
            await apply_acls(settings, "")

    async def _wait_for_brokers(self, settings: object) -> None:
        """Every node registered, so new topics get their full replication factor."""
        from shared.broker import make_admin

        wanted = self.state.kafka_brokers
        for _ in range(120):
            admin = make_admin(settings, "modelreg-stack")  # type: ignore[arg-type]
            try:
                await admin.start()
                if len((await admin.describe_cluster())["brokers"]) >= wanted:
                    return
            except Exception:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(1)
        raise StackError(f"fewer than {wanted} Kafka brokers joined the cluster:\n"
                         f"{tail(self.kafka_home / 'kafka.log')}")

    # -- down and status ----------------------------------------------------------------

    def down(self, *, purge: bool = False, log: Log = print) -> None:
        with self._exclusive():
            self._down(purge, log)

    def _down(self, purge: bool, log: Log) -> None:
        self._stop_services(log)
        pids = [self.kafka_node_pid(n.node_id) for n in self.kafka_nodes]
        if any(alive(pid) for pid in pids):
            log("stopping Kafka")
        for pid in pids:
            terminate(pid, timeout=60)
        self.state.kafka_peer_pids = []
        if alive(self.state.s3_pid):
            log("stopping the S3 server (saving its objects)")
        terminate(self.state.s3_pid, timeout=300)
        if self.state.postgres_dir:
            pgdata = Path(self.state.postgres_dir)
            if pgdata.exists() and postgres.running(pgdata, self.state.postgres_user):
                log("stopping PostgreSQL")
            if pgdata.exists():
                postgres.stop(pgdata, self.state.postgres_user)
        self.state.kafka_pid = self.state.s3_pid = None
        if purge:
            if self.state.postgres_dir:
                shutil.rmtree(self.state.postgres_dir, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.state = StackState(ports=self.state.ports)
            log(f"purged {self.dir}")
        elif self.dir.exists():
            self._save()

    def running_parts(self) -> dict[str, bool]:
        pg = bool(self.state.postgres_dir) and Path(self.state.postgres_dir or "").exists() and \
            postgres.running(Path(self.state.postgres_dir or ""), self.state.postgres_user)
        kafka_up = any(alive(self.kafka_node_pid(n.node_id)) for n in self.kafka_nodes)
        return {name: up for name, up in (("kafka", kafka_up),
                                          ("s3", alive(self.state.s3_pid)),
                                          ("postgres", pg)) if up}

    def serving(self) -> bool:
        """Whether this stack's own Kafka, PostgreSQL and S3 run and answer. A port that answers
        for another program (another stack's server on the same default port) does not count:
        taken for this stack's, it would be sent this stack's credentials and refuse them all."""
        return set(self.running_parts()) == {"kafka", "postgres", "s3"} and all(self.answers().values())

    def answers(self) -> dict[str, bool]:
        """Whether each part answers on its port, not merely whether its process lives."""
        return {
            "kafka": port_open(self.ports.kafka),
            "postgres": port_open(self.ports.postgres),
            "s3": _http_answers(f"http://127.0.0.1:{self.ports.s3}/"),
        }


def _http_answers(url: str) -> bool:
    """Any HTTP answer at all (an S3 server refuses an unsigned request: it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def _import_root() -> str:
    """The folder holding the `shared` package, for the S3 server's interpreter."""
    return str(Path(__file__).resolve().parents[2])
