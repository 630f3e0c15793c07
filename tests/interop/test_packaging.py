"""The Debian package (scripts/build-deb.sh) built from the test binary:
its contents, control data and maintainer scripts, lintian, and the systemd
unit through `systemd-analyze verify` (issue 19, "Packaging")."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wxtest.subjects import REPO_ROOT, subject_class, waxwing_binary

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing", reason="waxwing's package")


def run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    # gzip: the test checks the package, not xz's ratio (and stays cheap).
    res = run("bash", str(REPO_ROOT / "scripts" / "build-deb.sh"), str(waxwing_binary()), str(out),
              env=dict(os.environ, DEB_COMPRESSION="gzip"))
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip())
    assert path.exists(), res.stdout
    return path


def test_contents_and_control(deb, tmp_path):
    info = run("dpkg-deb", "--info", str(deb))
    assert info.returncode == 0, info.stderr
    for field in ("Package: waxwing", "Architecture:", "Depends:", "adduser", "Maintainer:"):
        assert field in info.stdout, info.stdout
    contents = run("dpkg-deb", "--contents", str(deb)).stdout
    for path in ("./usr/bin/waxwing", "./etc/waxwing/waxwing.toml",
                 "./lib/systemd/system/waxwing.service",
                 "./usr/share/doc/waxwing/copyright", "./usr/share/doc/waxwing/operating.md.gz"):
        assert path in contents, contents
    assert re.search(r"-rwxr-xr-x root/root .* \./usr/bin/waxwing", contents), contents

    x = tmp_path / "x"
    assert run("dpkg-deb", "--extract", str(deb), str(x)).returncode == 0
    control = tmp_path / "control"
    assert run("dpkg-deb", "--control", str(deb), str(control)).returncode == 0
    assert (control / "conffiles").read_text().split() == ["/etc/waxwing/waxwing.toml"]
    # The shipped configuration is valid and keeps state in /var/lib/waxwing.
    conf = x / "etc/waxwing/waxwing.toml"
    assert 'data_dir = "/var/lib/waxwing"' in conf.read_text()
    check = run(str(x / "usr/bin/waxwing"), "config", "check", "--config", str(conf))
    assert check.returncode == 0, check.stderr
    version = run(str(x / "usr/bin/waxwing"), "--version").stdout
    assert re.match(r"waxwing \d+\.\d+\.\d+ \(rev ([0-9a-f]{7,}|unknown), built \d{4}-\d\d-\d\d\)",
                    version), version

    # Maintainer scripts: valid sh, and they do what the package promises.
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert os.access(script, os.X_OK), name
        assert run("sh", "-n", str(script)).returncode == 0, name
    postinst = (control / "postinst").read_text()
    assert "adduser --system" in postinst and "--home /var/lib/waxwing" in postinst
    assert "deb-systemd-helper" in postinst
    assert "rm -rf /var/lib/waxwing" in (control / "postrm").read_text()
    md5 = run("md5sum", "--check", "--quiet", str(control / "md5sums"), cwd=x)
    assert md5.returncode == 0, md5.stdout + md5.stderr


def test_systemd_unit_is_hardened_and_verifies(deb, tmp_path):
    x = tmp_path / "x"
    assert run("dpkg-deb", "--extract", str(deb), str(x)).returncode == 0
    unit = (x / "lib/systemd/system/waxwing.service").read_text()
    for directive in ("User=waxwing", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "ProtectHome=yes",
                      "PrivateTmp=yes", "SystemCallFilter=@system-service", "StateDirectory=waxwing",
                      "ExecReload=", "ExecStart=/usr/bin/waxwing serve --config /etc/waxwing/waxwing.toml"):
        assert directive in unit, directive
    # systemd-analyze checks that ExecStart's binary exists: the same unit,
    # pointed at the extracted binary (the package is not installed here).
    copy = tmp_path / "waxwing.service"
    copy.write_text(unit.replace("/usr/bin/waxwing", str(x / "usr/bin/waxwing")))
    res = run("systemd-analyze", "verify", str(copy))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_lintian_finds_no_errors(deb):
    assert shutil.which("lintian"), "lintian is installed by scripts/packages/ops.list"
    res = run("lintian", "--tag-display-limit", "0", str(deb))
    errors = [l for l in res.stdout.splitlines() if l.startswith("E:")]
    assert not errors, res.stdout
