"""A throwaway MIT Kerberos realm for the GSSAPI tests.

Runs Debian's ``krb5kdc`` (package ``krb5-kdc``, see
scripts/packages/kerberos.list) in the foreground on a free loopback port,
with its own ``krb5.conf``, ``kdc.conf`` and database in a temporary
directory (``KRB5_CONFIG`` / ``KRB5_KDC_PROFILE``); principals and keytabs
are made with ``kadmin.local``, tickets with ``kinit`` into a private
credential cache. Nothing of the packaged instance is used.

The client side is PyPI ``gssapi`` (python-gssapi, over the same MIT
library), driving a minimal RFC 4752 SASL exchange in ``sasl_gssapi``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .federation import free_ports

REALM = "WAXWING.TEST"
KDC = "/usr/sbin/krb5kdc"
KDB5_UTIL = "/usr/sbin/kdb5_util"
KADMIN_LOCAL = "/usr/sbin/kadmin.local"
KINIT = "/usr/bin/kinit"


class Realm:
    """``with Realm(tmp) as r: r.add_user("alice", "pw"); r.keytab("xmpp/localhost")``"""

    def __init__(self, root: Path, realm: str = REALM):
        for tool in (KDC, KDB5_UTIL, KADMIN_LOCAL, KINIT):
            if not Path(tool).exists():
                pytest.fail(f"{tool} missing: install the packages in scripts/packages/kerberos.list")
        self.root = root
        self.realm = realm
        self.port = free_ports(1)[0]
        self.krb5_conf = root / "krb5.conf"
        self.kdc_conf = root / "kdc.conf"
        self.log_path = root / "kdc.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What every Kerberos program of this realm runs with."""
        return dict(os.environ, KRB5_CONFIG=str(self.krb5_conf),
                    KRB5_KDC_PROFILE=str(self.kdc_conf))

    def _run(self, *argv: str, stdin: str | None = None) -> str:
        res = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                             env=self.env, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res.stdout

    def __enter__(self) -> "Realm":
        self.root.mkdir(parents=True, exist_ok=True)
        # No DNS anywhere: `xmpp@localhost` is xmpp/localhost as written.
        self.krb5_conf.write_text(f"""
[libdefaults]
    default_realm = {self.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    {self.realm} = {{
        kdc = 127.0.0.1:{self.port}
    }}
[domain_realm]
    localhost = {self.realm}
""", encoding="utf-8")
        self.kdc_conf.write_text(f"""
[kdcdefaults]
    kdc_ports = {self.port}
    kdc_tcp_ports = {self.port}
[realms]
    {self.realm} = {{
        database_name = {self.root}/principal
        key_stash_file = {self.root}/stash
        acl_file = {self.root}/kadm5.acl
        kdc_listen = 127.0.0.1:{self.port}
        kdc_tcp_listen = 127.0.0.1:{self.port}
    }}
[logging]
    kdc = FILE:{self.log_path}
""", encoding="utf-8")
        (self.root / "kadm5.acl").write_text("", encoding="utf-8")
        self._run(KDB5_UTIL, "create", "-s", "-r", self.realm, "-P", "master-secret")
        self.proc = subprocess.Popen([KDC, "-n", "-r", self.realm], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Ready once it logs that it listens (it does not fork with -n).
        deadline = time.monotonic() + 20
        while "commencing operation" not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"krb5kdc exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"krb5kdc not ready within 20 s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def add_user(self, name: str, password: str) -> None:
        self._run(KADMIN_LOCAL, "-r", self.realm, "-q", f"addprinc -pw {password} {name}")

    def add_service(self, name: str) -> None:
        self._run(KADMIN_LOCAL, "-r", self.realm, "-q", f"addprinc -randkey {name}")

    def keytab(self, principal: str, path: Path) -> Path:
        """Exports `principal`'s keys (a new key version each time) into `path`."""
        self._run(KADMIN_LOCAL, "-r", self.realm, "-q", f"ktadd -k {path} {principal}")
        return path

    def kinit(self, principal: str, password: str, ccache: Path) -> Path:
        """A TGT for `principal` in its own credential cache (password on stdin)."""
        self._run(KINIT, "-c", f"FILE:{ccache}", principal, stdin=password + "\n")
        return ccache

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in self.root.glob("principal*"):
            f.unlink(missing_ok=True)
        shutil.rmtree(self.root / "unused", ignore_errors=True)


class GssapiClient:
    """The client side of RFC 4752 over python-gssapi, from a credential cache."""

    def __init__(self, ccache: Path, service: str = "xmpp@localhost"):
        import gssapi
        creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
        target = gssapi.Name(service, gssapi.NameType.hostbased_service)
        self.ctx = gssapi.SecurityContext(
            name=target, creds=creds, usage="initiate",
            mech=gssapi.MechType.kerberos,
            flags=gssapi.RequirementFlag.mutual_authentication
            | gssapi.RequirementFlag.integrity)

    def first(self) -> bytes:
        return self.ctx.step()

    def answer(self, challenge: bytes, authzid: str = "") -> bytes:
        """The answer to one server challenge: context tokens until the
        context is complete, then the RFC 4752 security-layer reply."""
        if not self.ctx.complete:
            out = self.ctx.step(challenge)
            return out or b""
        if not challenge:
            return b""
        offer = self.ctx.unwrap(challenge).message
        assert len(offer) == 4 and offer[0] & 1, f"server offers no 'no security layer': {offer!r}"
        assert offer[1:] == b"\0\0\0", f"no layer, yet a buffer size: {offer!r}"
        reply = bytes([1, 0, 0, 0]) + authzid.encode()
        return self.ctx.wrap(reply, False).message
