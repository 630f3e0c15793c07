"""A throwaway OpenLDAP ``slapd`` for the LDAP account-source tests.

Runs Debian's slapd (package ``slapd``, see scripts/packages/auth.list) in
the foreground on a free loopback port with its own ``slapd.conf`` and mdb
database in a temporary directory, loaded with ``slapadd`` before start.
Nothing of the packaged instance is used.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .federation import free_ports, wait_listening

SUFFIX = "dc=corp,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "admin-secret"
SERVICE_DN = f"cn=waxwing,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret"

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"


def person(uid: str, password: str) -> str:
    return (f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: {uid.title()}\nsn: {uid.title()}\nmail: {uid}@corp.test\n"
            f"userPassword: {password}\n")


class Slapd:
    """``with Slapd(tmp, users={"alice": "pw"}, admins=["alice"]) as d: d.url``"""

    def __init__(self, root: Path, users: dict[str, str], admins: list[str] = ()):
        for tool in (SLAPD, SLAPADD):
            if not Path(tool).exists():
                pytest.fail(f"{tool} missing: install the packages in scripts/packages/auth.list")
        self.root = root
        self.port = free_ports(1)[0]
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.users = users
        self.admins = list(admins)
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "slapd.log"

    def _ldif(self) -> str:
        out = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: Corp\n",
               f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
               f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
               f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
               f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
               f"cn: waxwing\nuserPassword: {SERVICE_PW}\n"]
        out += [person(uid, pw) for uid, pw in self.users.items()]
        members = "".join(f"member: uid={a},ou=people,{SUFFIX}\n" for a in self.admins) or \
            f"member: {SERVICE_DN}\n"
        out.append(f"dn: cn=xmpp-admins,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\n"
                   f"cn: xmpp-admins\n{members}")
        return "\n".join(out)

    def __enter__(self) -> "Slapd":
        db = self.root / "db"
        db.mkdir(parents=True)
        conf = self.root / "slapd.conf"
        # Users may read everything but passwords, which only bind can use;
        # anonymous users may only bind (no anonymous search).
        conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {self.root}/slapd.pid
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PW}
directory {db}
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by anonymous auth
""", encoding="utf-8")
        ldif = self.root / "init.ldif"
        ldif.write_text(self._ldif(), encoding="utf-8")
        subprocess.run([SLAPADD, "-f", str(conf), "-l", str(ldif)], check=True,
                       capture_output=True, timeout=60)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [SLAPD, "-d", "stats", "-f", str(conf), "-h", f"{self.url}/"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.proc, [("127.0.0.1", self.port)], "slapd",
                       lambda: self.log_path.read_text(errors="replace"))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root / "db", ignore_errors=True)
