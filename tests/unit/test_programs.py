"""Every external program runner, its scripts and its tests run is declared in scripts/programs.txt, and
scripts/setup installs its package (issue 11: the network tests called ``nft``, which only the CI machine
had by hand, and a skipped cpio cross-check hid that setup did not install cpio).

The scan reads the sources, not a running system: Python files through their syntax tree (argv literals
given to subprocess, os.exec* or a module's own subprocess wrapper, ``shutil.which("x")``), shell scripts
by the first word of each simple command. Programs that only the VM guest runs (vmimage/init) must be in the
guest image's package list instead.
"""

from __future__ import annotations

import ast
import os
import re

from tests.helpers import REPO

SCANNED_DIRS = ("runner", "tests", "scripts", "vmimage", ".ci")
GUEST_SCRIPTS = {"vmimage/init", "vmimage/poweroff"}  # run by the guest's busybox, not on the host
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
EXEC_CALLS = {"execv", "execve", "execvp", "execvpe", "spawnvp", "create_subprocess_exec"}
SHELL_WORDS = {
    # keywords and builtins of sh/bash (and busybox sh): not programs
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "in",
    "function", "return", "exit", "set", "export", "local", "read", "echo", "printf", "cd", "eval", "exec",
    "trap", "wait", "shift", "source", ".", ":", "true", "false", "test", "[", "[[", "kill", "umask", "mapfile",
    "command", "unset", "break", "continue", "!", "{", "}", "(", ")", "time", "type", "readonly",
}
OWN = {"runner"}  # this project's own command (scripts/setup links it into /usr/local/bin)
PREFIXES = {"exec", "command", "sudo", "env", "nice", "time"}  # the next word is the program too


# ----------------------------------------------------------------------------------------- the list

def declared() -> dict[tuple[str, str], str]:
    """scripts/programs.txt as {(program, "host"|"guest"): debian-package}."""
    table = {}
    with open(os.path.join(REPO, "scripts", "programs.txt")) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words:
                assert len(words) == 3 and words[2] in ("host", "guest"), f"programs.txt: bad line {line!r}"
                table[(words[0], words[2])] = words[1]
    return table


def _package_list(*paths: str) -> set[str]:
    names = set()
    for path in paths:
        with open(os.path.join(REPO, path)) as f:
            names |= {line.split("#", 1)[0].strip() for line in f} - {""}
    return names


# Essential: yes in Debian, so in every guest (mmdebstrap --variant=essential) without being listed.
GUEST_ESSENTIAL = {"bash", "coreutils", "util-linux"}


def guest_packages() -> set[str]:
    """vmimage/build.py's PACKAGES plus Debian's essential set."""
    tree = ast.parse(open(os.path.join(REPO, "vmimage", "build.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PACKAGES":
            return set(ast.literal_eval(node.value)) | GUEST_ESSENTIAL
    raise AssertionError("vmimage/build.py has no PACKAGES")


# ----------------------------------------------------------------------------------------- Python

def _head(node) -> str | None:
    """The program of an argv literal: its first string (``shutil.which("x") or "x"`` counts too)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.BoolOp):
            first = next((v for v in first.values if isinstance(v, ast.Constant)), first)
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _wrappers(tree: ast.Module) -> set[str]:
    """Module-level functions that run their argument as the argv (vmimage/build.py's ``run(*argv)``)."""
    names = set()
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        params = {a.arg for a in fn.args.args[:1]} | ({fn.args.vararg.arg} if fn.args.vararg else set())
        if any(isinstance(n, ast.Call) and _is_exec(n, set()) and n.args and isinstance(n.args[0], ast.Name)
               and n.args[0].id in params for n in ast.walk(fn)):
            names.add(fn.name)
    return names


def _is_exec(call: ast.Call, wrappers: set[str]) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return (f.value.id == "subprocess" and f.attr in SUBPROCESS_CALLS) or \
            (f.value.id in ("os", "asyncio") and f.attr in EXEC_CALLS)
    return isinstance(f, ast.Name) and f.id in wrappers


def python_programs(source: str, path: str = "<src>") -> set[str]:
    tree = ast.parse(source, path)
    wrappers = _wrappers(tree)
    found = set()
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        # argv built first and run later: ``jump = ["iptables", ...]; subprocess.run(jump)``
        lists = {n.targets[0].id: _head(n.value) for n in ast.walk(scope)
                 if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                 and isinstance(n.value, (ast.List, ast.Tuple)) and _head(n.value)}
        for call in (n for n in ast.walk(scope) if isinstance(n, ast.Call) and n.args):
            arg = call.args[0]
            if getattr(call.func, "attr", None) == "which" and _head(arg):
                found.add(_head(arg))
            elif _is_exec(call, wrappers):
                found.add(lists.get(arg.id) if isinstance(arg, ast.Name) else _head(arg))
    return {os.path.basename(p) for p in found if p}


# ----------------------------------------------------------------------------------------- shell

def shell_programs(text: str) -> set[str]:
    """First words of the simple commands of a shell script (functions it defines excluded)."""
    lines = [re.sub(r"(^|\s)#.*$", "", line) for line in text.replace("\\\n", " ").splitlines()]
    body = "\n".join(lines)
    functions = set(re.findall(r"^\s*([A-Za-z_][\w-]*)\s*\(\)", body, re.M))
    body = re.sub(r"'[^'\n]*'", "''", body)  # quoted text is data, not commands ...
    body = re.sub(r'"(?:[^"\\$\n]|\\.|\$(?!\())*"', '""', body)  # ... unless it holds a $( ) substitution
    body = re.sub(r"\$\(\([^()]*\)\)", "0", body)  # arithmetic
    found = set()
    for command in re.split(r"\$\(|`|&&|\|\||[;|&\n(]|\bthen\b|\bdo\b|\belse\b", body):
        words = command.replace("{", " ").split()
        while words and (re.match(r"^\w+=", words[0]) or words[0] in PREFIXES or words[0] == "!"):
            if words[0] in PREFIXES - {"exec", "command", "time"}:
                found.add(words[0])
            words = words[1:]
            while words and words[0].startswith("-"):  # sudo -E, env -i
                words = words[1:]
        if not words:
            continue
        word = words[0].strip('"')
        if word in SHELL_WORDS or word in functions or not re.match(r"^[\w./+-]+$", word) or \
                word.endswith(")") or word.startswith(("-", "$", ".", "<", ">")) or word[0].isdigit():
            continue
        found.add(os.path.basename(word))
    return found


# ----------------------------------------------------------------------------------------- scan

def _scan() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """{program: files} for host code and for guest scripts."""
    host, guest = {}, {}
    for top in SCANNED_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(REPO, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, REPO).replace(os.sep, "/")
                with open(path, errors="replace") as f:
                    text = f.read()
                first = text.split("\n", 1)[0]
                if name.endswith(".py") or ("python" in first and first.startswith("#!")):
                    programs = python_programs(text, rel)
                elif first.startswith("#!") and re.search(r"\b(ba)?sh\b", first):
                    programs = shell_programs(text)
                else:
                    continue
                into = guest if rel in GUEST_SCRIPTS else host
                for program in programs:
                    into.setdefault(program, set()).add(rel)
    return host, guest


def test_the_scanner_sees_programs_in_python_and_shell():
    src = ('import subprocess, shutil, os\n'
           'def f():\n    jump = ["iptables", "-C"]\n    subprocess.run(jump)\n'
           '    subprocess.run([shutil.which("nft") or "nft", "-f", "-"])\n'
           '    os.execvp("unshare", ["unshare", "-m"])\n    h.run(["sh", "-c", "in a container"])\n'
           'def run(*argv):\n    return subprocess.run(argv)\n'
           'def g():\n    run("mkfs.ext4", "-q")\n    shutil.which("cpio")\n')
    assert python_programs(src) == {"iptables", "nft", "unshare", "mkfs.ext4", "cpio"}
    sh = ('#!/bin/sh\nset -e\nhelper() { echo "x"; }\nX=1 apt-get update -qq # comment gcc\n'
          'if [ -x /bin/y ]; then exec sudo -E bash scripts/test; fi\nfoo=$(busybox cut -d" " -f1 | tr a b)\n'
          'helper && mapfile -t p < <(grep -v x f)\n')
    assert shell_programs(sh) == {"apt-get", "sudo", "bash", "busybox", "tr", "grep"}


def test_every_program_invoked_is_declared():
    table = declared()
    host, guest = _scan()
    for where, found in (("host", host), ("guest", guest)):
        missing = {p: sorted(files) for p, files in found.items() if (p, where) not in table and p not in OWN}
        assert not missing, f"{where} programs run but not declared in scripts/programs.txt: {missing}"
    for program in ("gcc", "cpio", "iptables", "nft", "sudo"):  # the ones issue 11 found missing
        assert (program, "host") in table, program


def test_setup_installs_every_declared_package():
    host_apt = _package_list("scripts/apt-packages.txt", "vmimage/requirements-apt.txt")
    guest = guest_packages()
    for (program, where), package in declared().items():
        wanted = host_apt if where == "host" else guest
        assert package in wanted, f"{program} ({where}): package {package} is not installed by " + \
            ("scripts/setup (scripts/apt-packages.txt)" if where == "host" else "vmimage/build.py PACKAGES")
