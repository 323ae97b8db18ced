"""`runner build` scenarios that must behave identically natively and through the VM (the context goes up as a
tar, the build runs in the guest's engine, the image lands in the guest's store). Offline: FROM localhost/busybox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

IMG = "localhost/busybox"


def text(proc) -> str:
    return proc.stdout.decode()


@pytest.fixture
def ctx():
    """A fresh context directory; the test writes its Dockerfile and files."""
    path = tempfile.mkdtemp(prefix="runner-build-ctx-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(ctx: str, name: str, content: str, mode: int | None = None) -> None:
    path = os.path.join(ctx, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    if mode is not None:
        os.chmod(path, mode)


@pytest.fixture
def images(rn):
    """Names to remove after the test (and the build cache with them)."""
    names: list[str] = []
    yield names
    for name in names:
        rn("rmi", "-f", name)
    rn("builder", "prune", "-f")


def build(rn, ctx: str, *args: str, input: bytes | None = None):
    return rn("build", *args, ctx, input=input, timeout=300)


def inspect(rn, ref: str) -> dict:
    p = rn("inspect", ref)
    assert p.returncode == 0, p.stderr
    return json.loads(text(p))[0]


def test_every_instruction_and_the_image_runs(rn, ctx, images):
    write(ctx, "Dockerfile", """# syntax=docker/dockerfile:1
ARG BASE=localhost/busybox
FROM ${BASE} AS base
ARG WHO=world
ENV GREETING="hello ${WHO}" \\
    MODE=test
LABEL org.example.name="contract build" version=1
WORKDIR /app
COPY --chown=1000:1000 --chmod=750 bin/tool.sh ./tool
COPY data/ /data/
COPY data/*.txt data/sub/t?o.txt /globbed/
ADD archive.tar /unpacked/
RUN echo "$GREETING" > greeting && rm /bin/vi && mkdir -p /var/x && touch /var/x/y
RUN ["sh", "-c", "echo exec form >> /app/greeting"]
RUN <<EOF
echo heredoc >> /app/greeting
EOF
COPY <<EOF /app/inline.txt
inline ${WHO}
EOF
SHELL ["/bin/sh", "-c"]
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo child
USER 1000:1000
ENTRYPOINT ["/app/tool"]
CMD ["default-arg"]
""")
    write(ctx, "bin/tool.sh", "#!/bin/sh\ncat /app/greeting /app/inline.txt; echo \"args: $*\"; id -u\n")
    write(ctx, "data/one.txt", "1\n")
    write(ctx, "data/sub/two.txt", "2\n")
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("from-tar/file")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"tar\n"))
    with open(os.path.join(ctx, "archive.tar"), "wb") as f:
        f.write(buf.getvalue())
    images.append("contract-build:all")
    p = build(rn, ctx, "-t", "contract-build:all", "--build-arg", "WHO=runner")
    assert p.returncode == 0, p.stderr
    out = text(p)
    assert "Step 1/22 : FROM ${BASE} AS base" in out and "Step 22/22 : CMD" in out
    assert "Successfully tagged contract-build:all" in out and "[Note] ignoring the syntax directive" in out
    p = rn("run", "--rm", "contract-build:all")
    assert p.returncode == 0, p.stderr
    assert text(p) == "hello runner\nexec form\nheredoc\ninline runner\nargs: default-arg\n1000\n"
    p = rn("run", "--rm", "--entrypoint", "sh", "contract-build:all", "-c",
           "stat -c '%a %u %g' /app/tool; ls /data /data/sub /unpacked/from-tar /globbed; ls /bin/vi; ls /var/x")
    assert text(p).split() == ["750", "1000", "1000", "/data:", "one.txt", "sub", "/data/sub:", "two.txt",
                               "/globbed:", "one.txt", "two.txt", "/unpacked/from-tar:", "file", "y"]
    assert "No such file" in p.stderr.decode()  # RUN's rm became a whiteout
    config = inspect(rn, "contract-build:all")["Config"]
    assert config["Env"][-2:] == ["GREETING=hello runner", "MODE=test"]
    assert config["Labels"] == {"org.example.name": "contract build", "version": "1"}
    assert config["WorkingDir"] == "/app" and config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/app/tool"] and config["Cmd"] == ["default-arg"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "53/udp"} and set(config["Volumes"]) == {"/data"}
    assert config["StopSignal"] == "SIGINT" and config["OnBuild"] == ["RUN echo child"]
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}


def test_onbuild_triggers_run_in_the_child_build_and_only_there(rn, ctx, images):
    """A base image's ONBUILD triggers run right after the child's FROM (in the child's context), then leave the
    config: the grandchild does not run them again (the classic builder's processOnBuild)."""
    write(ctx, "Dockerfile", f"""FROM {IMG}
ONBUILD COPY marker.txt /from-child-context.txt
ONBUILD RUN echo trigger ran >> /triggers.log
""")
    write(ctx, "marker.txt", "parent context\n")
    images.extend(["contract-onbuild:parent", "contract-onbuild:child", "contract-onbuild:grandchild"])
    p = build(rn, ctx, "-t", "contract-onbuild:parent")
    assert p.returncode == 0, p.stderr
    assert "# Executing" not in text(p)  # recording a trigger runs nothing
    write(ctx, "Dockerfile", "FROM contract-onbuild:parent\nRUN echo own step\n")
    write(ctx, "marker.txt", "child context\n")
    p = build(rn, ctx, "-t", "contract-onbuild:child")
    assert p.returncode == 0, p.stderr
    assert "# Executing 2 build triggers..." in text(p) and "own step" in text(p)
    p = rn("run", "--rm", "contract-onbuild:child", "cat", "/from-child-context.txt", "/triggers.log")
    assert text(p) == "child context\ntrigger ran\n", p.stderr
    assert not inspect(rn, "contract-onbuild:child")["Config"]["OnBuild"]
    write(ctx, "Dockerfile", "FROM contract-onbuild:child\n")
    p = build(rn, ctx, "-t", "contract-onbuild:grandchild")
    assert p.returncode == 0 and "# Executing" not in text(p), p.stderr
    assert text(rn("run", "--rm", "contract-onbuild:grandchild", "cat", "/triggers.log")) == "trigger ran\n"


def test_a_failing_onbuild_trigger_fails_the_child_at_its_from_line(rn, ctx, images):
    write(ctx, "Dockerfile", f"FROM {IMG}\nONBUILD RUN echo trigger says no; exit 3\n")
    images.extend(["contract-onbuild:bad", "contract-onbuild:badchild"])
    assert build(rn, ctx, "-t", "contract-onbuild:bad").returncode == 0
    write(ctx, "Dockerfile", "ARG X=1\nFROM contract-onbuild:bad\nRUN echo never\n")
    p = build(rn, ctx, "-t", "contract-onbuild:badchild")
    err = p.stderr.decode()
    assert p.returncode == 1 and "(RUN echo trigger says no; exit 3)" in err, err
    assert "returned a non-zero code: 3" in err and "trigger says no" in err and "never" not in text(p)
    assert rn("inspect", "contract-onbuild:badchild").returncode != 0  # no image


def test_multi_stage_copy_from_and_target_build_only_what_is_needed(rn, ctx, images):
    write(ctx, "Dockerfile", f"""FROM {IMG} AS builder
RUN echo built > /artifact
FROM {IMG} AS never
RUN echo this stage must not run; exit 9
FROM {IMG}
COPY --from=builder /artifact /artifact
COPY --from=0 /artifact /copy-by-index
COPY --from={IMG} /etc/passwd /passwd-from-image
CMD ["cat", "/artifact", "/copy-by-index"]
""")
    images.append("contract-build:multi")
    p = build(rn, ctx, "-t", "contract-build:multi")
    assert p.returncode == 0, p.stderr
    assert "must not run" not in text(p)
    assert text(rn("run", "--rm", "contract-build:multi")) == "built\nbuilt\n"
    assert rn("run", "--rm", "contract-build:multi", "grep", "-c", "root", "/passwd-from-image").returncode == 0
    images.append("contract-build:stage")
    p = build(rn, ctx, "--target", "builder", "-t", "contract-build:stage")
    assert p.returncode == 0, p.stderr
    assert text(rn("run", "--rm", "contract-build:stage", "cat", "/artifact")) == "built\n"


def test_cache_hits_and_invalidation_by_file_content(rn, ctx, images):
    write(ctx, "Dockerfile", f"""FROM {IMG}
RUN echo first > /first
COPY a.txt /a.txt
RUN cat /a.txt > /derived
COPY b.txt /b.txt
""")
    write(ctx, "a.txt", "A1\n")
    write(ctx, "b.txt", "B1\n")
    images.append("contract-build:cache")
    first = build(rn, ctx, "-t", "contract-build:cache")
    assert first.returncode == 0, first.stderr
    second = build(rn, ctx, "-t", "contract-build:cache")
    assert second.returncode == 0, second.stderr
    assert "Running in" not in text(second) and text(second).count("Using cache") == 4
    assert text(first).splitlines()[-2] == text(second).splitlines()[-2]  # "Successfully built <same id>"
    os.utime(os.path.join(ctx, "a.txt"), (1, 1))  # a new time alone is no change
    assert "Running in" not in text(build(rn, ctx, "-t", "contract-build:cache"))
    write(ctx, "a.txt", "A2\n")
    third = build(rn, ctx, "-t", "contract-build:cache")
    assert third.returncode == 0, third.stderr
    steps = text(third).split("Step ")
    assert "Using cache" in steps[2] and "Using cache" not in steps[3] and "Running in" in steps[4]
    assert text(rn("run", "--rm", "contract-build:cache", "cat", "/derived")) == "A2\n"
    nocache = build(rn, ctx, "--no-cache", "-t", "contract-build:cache")
    assert "Using cache" not in text(nocache) and text(nocache).count("Running in") == 2


def test_dockerignore_and_plain_progress(rn, ctx, images):
    write(ctx, "Dockerfile", f"FROM {IMG}\nCOPY . /ctx\nRUN find /ctx -type f | sort\n")
    write(ctx, ".dockerignore", "*.secret\nbuild/\n!build/keep.txt\nDockerfile\n")
    write(ctx, "app.txt", "app")
    write(ctx, "token.secret", "secret")
    write(ctx, "build/out.o", "obj")
    write(ctx, "build/keep.txt", "keep")
    images.append("contract-build:ignore")
    p = build(rn, ctx, "--progress", "plain", "-t", "contract-build:ignore")
    assert p.returncode == 0, p.stderr
    files = [line.split()[-1] for line in text(p).splitlines() if line.startswith("#3 ") and "/ctx/" in line]
    assert files == ["/ctx/.dockerignore", "/ctx/app.txt", "/ctx/build/keep.txt"]
    assert "#1 [1/3] FROM" in text(p) and "#3 DONE" in text(p)
    assert "#2 CACHED" in text(build(rn, ctx, "--progress", "plain", "-t", "contract-build:ignore"))


def test_a_failing_run_leaves_no_container_and_no_image(rn, ctx, images):
    write(ctx, "Dockerfile", f"FROM {IMG}\nRUN echo before\nRUN echo doomed; echo to-stderr >&2; exit 3\nRUN echo after\n")
    assert rn("run", "--rm", IMG, "true").returncode == 0  # the default image exists before the count
    before = text(rn("images", "-q"))
    p = build(rn, ctx, "-t", "contract-build:fail")
    assert p.returncode == 1
    err = p.stderr.decode()
    assert err.startswith("Error: step 3/4 (RUN echo doomed; echo to-stderr >&2; exit 3): The command ")
    assert "returned a non-zero code: 3" in err and "    doomed\n    to-stderr" in err
    assert "after" not in text(p)
    assert text(rn("ps", "-a", "-q")) == ""
    assert text(rn("images", "-q")) == before
    assert rn("inspect", "contract-build:fail").returncode != 0


def test_bad_input_is_refused_with_its_line(rn, ctx):
    cases = [
        ("FROM %s\nCOPY ../outside /x\n" % IMG, "line 2: forbidden path outside the build context: ../outside"),
        ("FROM %s\nCOPY escape /x\n" % IMG, "line 2: forbidden path outside the build context: escape"),
        ("FROM %s\n\nFROBNICATE x\n" % IMG, "line 3: FROBNICATE x: unknown instruction: FROBNICATE"),
        ("FROM %s\nCOPY missing.txt /x\n" % IMG, "file not found in build context"),
        ("FROM %s\nADD https://example.invalid/f /f\n" % IMG, "ADD from a URL is not supported"),
        ("FROM %s\nENV A=\"open\n" % IMG, "line 2: ENV A=\"open: unmatched double quote"),
    ]
    os.symlink("/etc/hostname", os.path.join(ctx, "escape"))
    for dockerfile, message in cases:
        write(ctx, "Dockerfile", dockerfile)
        p = build(rn, ctx)
        assert p.returncode == 1, (dockerfile, p.stderr)
        assert message in p.stderr.decode(), (dockerfile, p.stderr)
    write(ctx, "Dockerfile", f"FROM {IMG}\nARG USED\n")
    p = build(rn, ctx, "--build-arg", "UNUSED=1", "--build-arg", "USED=2")
    assert p.returncode == 0, p.stderr
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in text(p)


def test_dockerfile_on_stdin_and_save_is_a_valid_oci_archive(rn, images, tmp_path):
    images.append("contract-build:stdin")
    iidfile = tmp_path / "iid"
    p = rn("build", "-q", "-t", "contract-build:stdin", "--label", "from=stdin", "--iidfile", str(iidfile), "-",
           input=f"FROM {IMG}\nRUN echo from-stdin > /f\nCMD [\"cat\", \"/f\"]\n".encode())
    assert p.returncode == 0, p.stderr
    image_id = text(p).strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71 and iidfile.read_text() == image_id
    assert inspect(rn, "contract-build:stdin")["Config"]["Labels"] == {"from": "stdin"}
    assert text(rn("run", "--rm", "contract-build:stdin")) == "from-stdin\n"
    archive = tmp_path / "built.tar"
    assert rn("save", "-o", str(archive), "contract-build:stdin").returncode == 0
    info = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, timeout=60)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert len(data["Layers"]) == 2 and data["Os"] == "linux"
    config = subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"], capture_output=True,
                            timeout=60)
    assert json.loads(config.stdout)["config"]["Cmd"] == ["cat", "/f"]
    assert "sha256:" + json.loads(config.stdout)["rootfs"]["diff_ids"][-1].split(":")[1]


@pytest.mark.registry
def test_a_missing_base_image_is_pulled(rn, registry, ctx):
    """A FROM image not in the store is pulled, also from a registry on the host's loopback through the VM
    (the guest's build reaches it at the host's address, as pull and push do)."""
    ref = f"{registry.host}/build/base:v1"
    assert rn("run", "--rm", IMG, "true").returncode == 0  # the default image is made on first use
    assert rn("tag", IMG, ref).returncode == 0
    try:
        assert rn("push", ref).returncode == 0
        assert rn("rmi", ref).returncode == 0
        write(ctx, "Dockerfile", f"FROM {ref}\nRUN echo on-pulled > /f\n")
        p = build(rn, ctx, "-t", "contract-build:pulled")
        assert p.returncode == 0, p.stderr
        assert f"Pulling {ref}" in text(p)
        assert text(rn("run", "--rm", "contract-build:pulled", "cat", "/f")) == "on-pulled\n"
    finally:
        rn("rmi", "-f", ref)
        rn("rmi", "-f", "contract-build:pulled")


def test_dockerfile_from_elsewhere_and_from_stdin_with_a_context(rn, ctx, images, tmp_path):
    write(ctx, "data.txt", "ctx data\n")
    write(ctx, "sub/Custom.dockerfile", f"FROM {IMG}\nCOPY data.txt /in-sub\n")
    outside = tmp_path / "Outside.dockerfile"
    outside.write_text(f"FROM {IMG}\nCOPY data.txt /outside\n")
    images.extend(["contract-build:sub", "contract-build:outside", "contract-build:stdin-f"])
    for args, path in ((["-f", os.path.join(ctx, "sub/Custom.dockerfile"), "-t", "contract-build:sub"], "/in-sub"),
                       (["-f", str(outside), "-t", "contract-build:outside"], "/outside")):
        p = build(rn, ctx, *args)
        assert p.returncode == 0, p.stderr
        assert text(rn("run", "--rm", args[-1], "cat", path)) == "ctx data\n"
    p = build(rn, ctx, "-f", "-", "-t", "contract-build:stdin-f", input=f"FROM {IMG}\nCOPY data.txt /stdin\n".encode())
    assert p.returncode == 0, p.stderr
    assert text(rn("run", "--rm", "contract-build:stdin-f", "cat", "/stdin")) == "ctx data\n"
    p = build(rn, ctx, "-f", str(tmp_path / "missing"))
    assert p.returncode == 125 and "cannot read the Dockerfile" in p.stderr.decode()
