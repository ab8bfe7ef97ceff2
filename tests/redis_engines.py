"""Real Redis engines for the tests, on free loopback ports: a 3-master Redis Cluster, a master with a
replica and a Sentinel, a server with a password or TLS. Each is stopped by its fixture."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (run_tests.sh installs it)")
    return path


def command(port: int, *args: str, password: str | None = None, timeout: float = 5,
            ca: Path | None = None) -> str:
    """One redis-cli command against 127.0.0.1:port (over TLS trusting `ca` if given); its output."""
    auth = ["-a", password, "--no-auth-warning"] if password else []
    tls = ["--tls", "--cacert", str(ca)] if ca else []
    out = subprocess.run([binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *tls, *auth, *args],
                         capture_output=True, timeout=timeout, check=False)
    return out.stdout.decode(errors="replace").strip()


class Server:
    """One redis-server process with extra arguments (a Sentinel with `--sentinel`); with `tls`
    (ca, cert, key) it speaks only TLS on its port, and so does its cluster bus."""

    def __init__(self, directory: Path, *args: str, port: int | None = None, config: str = "",
                 password: str | None = None, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.port = port or free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.ca: Path | None = None
        if tls is not None:
            self.ca, cert, key = tls
            self.args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                          str(self.ca), "--tls-auth-clients", "no", "--tls-cluster", "yes",
                          "--tls-replication", "yes"]
        self.config = config
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        cmd = [binary("redis-server")]
        if self.config:
            conf = self.dir / f"redis-{self.port}.conf"
            conf.write_text(self.config)
            cmd.append(str(conf))
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.ca else ["--port", str(self.port)]
        cmd += [*ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.listening, 10, what=f"redis-server on {self.port}")
        return self

    def listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server on {self.port} exited with {self.proc.returncode}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def cli(self, *args: str) -> str:
        return command(self.port, *args, password=self.password, ca=self.ca)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process does not die of SIGKILL at once
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Cluster:
    """Three masters, all 16384 slots assigned (`redis-cli --cluster create`), each with `replicas`
    replicas; a master whose node is unreachable for `node_timeout_ms` is replaced by its replica."""

    def __init__(self, directory: Path, replicas: int = 0, node_timeout_ms: int = 5000,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.replicas = replicas
        self.ca = tls[0] if tls else None
        self.nodes = [Server(directory / f"node{i}", "--cluster-enabled", "yes",
                             "--cluster-config-file", f"nodes-{i}.conf",
                             "--cluster-node-timeout", str(node_timeout_ms), tls=tls)
                      for i in range(3 * (1 + replicas))]
        for node in self.nodes:
            node.args += ["--cluster-port", str(free_port())]

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"rediss+cluster://{nodes}?ssl_ca_certs={self.ca}" if self.ca else f"redis+cluster://{nodes}"

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        tls = ["--tls", "--cacert", str(self.ca)] if self.ca else []
        out = subprocess.run([binary("redis-cli"), *tls, "--cluster", "create",
                              *(f"127.0.0.1:{n.port}" for n in self.nodes),
                              "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                             capture_output=True, timeout=30, check=False)
        assert out.returncode == 0, out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
        for node in self.nodes:
            wait_until(lambda node=node: "cluster_state:ok" in node.cli("CLUSTER", "INFO"), 20,
                       what=f"cluster state ok on {node.port}")
        if self.replicas:
            wait_until(lambda: all("master_link_status:up" in n.cli("INFO", "replication")
                                   for n in self.nodes if n.port not in self.masters()), 20,
                       what="every replica in sync")
        return self

    def masters(self) -> set[int]:
        """The ports of the nodes that are masters now, as the running nodes see it."""
        for node in self.nodes:
            if node.proc is None:
                continue
            lines = node.cli("CLUSTER", "NODES").splitlines()
            return {int(line.split()[1].split(":")[1].split("@")[0]) for line in lines
                    if "master" in line.split()[2] and "fail" not in line.split()[2]}
        return set()

    def node(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    def keys(self, pattern: str) -> dict[int, list[str]]:
        """The keys matching `pattern` on each master (by port)."""
        masters = self.masters()
        return {n.port: [k for k in n.cli("--scan", "--pattern", pattern).splitlines() if k]
                for n in self.nodes if n.port in masters}

    def flush(self) -> None:
        masters = self.masters()
        for node in self.nodes:
            if node.port in masters:
                node.cli("FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """A master, its replica and one Sentinel watching them (quorum 1, quick failover)."""

    MASTER = "gwmaster"

    def __init__(self, directory: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.ca = tls[0] if tls else None
        self.master = Server(directory / "master", tls=tls)
        self.replica = Server(directory / "replica", tls=tls)
        self.replica.args += ["--replicaof", "127.0.0.1", str(self.master.port)]
        config = (f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1\n"
                  f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                  f"sentinel failover-timeout {self.MASTER} 10000\n")
        self.sentinel = Server(directory / "sentinel", "--sentinel", config=config, tls=tls)

    @property
    def url(self) -> str:
        where = f"127.0.0.1:{self.sentinel.port}/{self.MASTER}"
        return f"rediss+sentinel://{where}?ssl_ca_certs={self.ca}" if self.ca else f"redis+sentinel://{where}"

    def master_port(self) -> int:
        out = self.sentinel.cli("SENTINEL", "get-master-addr-by-name", self.MASTER).splitlines()
        return int(out[1])

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        wait_until(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"), 20,
                   what="replica in sync")
        self.sentinel.start()
        wait_until(lambda: "slaves=1" in self.sentinel.cli("INFO", "sentinel"), 20,
                   what="sentinel sees the replica")
        return self

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test redis CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
