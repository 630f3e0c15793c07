"""The container file (contrib/container/Containerfile) and its context
(.dockerignore), checked statically: this machine has no container
registry, so the image itself cannot be built or run here. What can be
checked is: a multi-stage build whose final stage is a slim base, runs as
an unprivileged user, exposes exactly the ports its configuration listens
on, keeps data_dir on a volume, copies the binary to the path it runs, has
a health check, carries no secrets; the configuration it ships passes
`waxwing config check`; and the build context leaves out build output,
local state and VCS data."""

import json
import re
import subprocess
import tomllib

import pytest

from wxtest.subjects import REPO_ROOT, waxwing_binary

CONTAINERFILE = REPO_ROOT / "contrib" / "container" / "Containerfile"
CONFIG = REPO_ROOT / "contrib" / "container" / "waxwing.toml"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, f"unterminated instruction: {current!r}"
    return out


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (the ARGs before the first FROM dropped)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(CONTAINERFILE.read_text()):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def args_of(stage, word):
    return [a for w, a in stage if w == word]


def exec_form(arg: str) -> list[str]:
    assert arg.startswith("["), f"not the exec (JSON) form: {arg}"
    return json.loads(arg)


def test_multi_stage_build_on_a_slim_base(stages):
    assert len(stages) >= 2, "a build stage and a run stage"
    build, run = stages[0], stages[-1]
    build_from = args_of(build, "FROM")[0]
    assert re.search(r"rust:.*\bAS build$", build_from, re.I), build_from
    assert any("cargo build --release --locked -p waxwing" in a for a in args_of(build, "RUN"))
    run_from = args_of(run, "FROM")[0]
    assert re.fullmatch(r"\S*(debian:\S+-slim|distroless\S*)", run_from), run_from
    # Only the binary (and the shipped config) come from the build stage or context.
    copies = args_of(run, "COPY")
    assert copies == ["--from=build /out/waxwing /usr/bin/waxwing",
                      "contrib/container/waxwing.toml /etc/waxwing/waxwing.toml"], copies


def test_runs_as_an_unprivileged_user(stages):
    users = args_of(stages[-1], "USER")
    assert users, "no USER in the final stage: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert user.isdigit() and int(user) >= 1000, f"numeric uid (Kubernetes runAsNonRoot): {users}"
    # The user is created with that uid and owns the data directory.
    script = " ".join(args_of(stages[-1], "RUN"))
    assert f"--uid {user}" in script and "-o waxwing -g waxwing" in script, script


def test_ports_volume_and_command_match_the_shipped_config(stages):
    run = stages[-1]
    config = tomllib.loads(CONFIG.read_text())
    listen = config["listen"]
    wanted = {int(addr.rsplit(":", 1)[1])
              for key in ("c2s", "c2s_direct_tls", "s2s", "s2s_direct_tls", "http", "https")
              for addr in listen[key]}
    exposed = {int(p.split("/")[0]) for a in args_of(run, "EXPOSE") for p in a.split()}
    assert exposed == wanted == {5222, 5223, 5269, 5270, 5280, 5443}, (exposed, wanted)
    # Inside a container, listening on loopback would be unreachable.
    for key in ("c2s", "c2s_direct_tls", "s2s", "s2s_direct_tls", "http", "https"):
        for addr in listen[key]:
            assert not addr.startswith(("127.", "[::1]")), (key, addr)
    volumes = [v for a in args_of(run, "VOLUME") for v in exec_form(a)]
    assert config["data_dir"] in volumes, (config["data_dir"], volumes)
    assert args_of(run, "WORKDIR")[-1] == config["data_dir"]
    env = " ".join(args_of(run, "ENV"))
    assert "WAXWING_CONFIG=/etc/waxwing/waxwing.toml" in env, env
    entry = exec_form(args_of(run, "ENTRYPOINT")[-1])
    assert entry == ["/usr/bin/waxwing"], entry
    assert exec_form(args_of(run, "CMD")[-1]) == ["serve"]
    health = args_of(run, "HEALTHCHECK")
    assert health and "5222" in health[-1], health


def test_no_secrets_in_the_image(stages):
    for stage in stages:
        for word, arg in stage:
            if word in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"(?i)(password|secret|token|private.?key)\s*=\s*\S",
                                     arg.replace("WAXWING_GIT_REVISION", "")), (word, arg)
    text = CONFIG.read_text()
    assert not re.search(r"(?im)^\s*(bind_password|password|secret|key)\s*=", text), text


def test_shipped_config_passes_config_check(tmp_path):
    res = subprocess.run([str(waxwing_binary()), "config", "check", "--config", str(CONFIG)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"


def test_build_context_leaves_out_state_and_build_output():
    patterns = {l.strip() for l in DOCKERIGNORE.read_text().splitlines()
                if l.strip() and not l.startswith("#")}
    for needed in (".git", "target", "data", ".venv", "tests/interop/node/node_modules"):
        assert needed in patterns, (needed, patterns)
    # Nothing the build needs is excluded.
    for kept in ("Cargo.toml", "Cargo.lock", "crates", "contrib"):
        assert kept not in patterns and f"{kept}/" not in patterns, kept
