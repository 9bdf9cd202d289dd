"""Issue 15, "commands that are what they say": the classification table behind ``jit policy lint``
and every sudo apply (``integrations.sudo.command_error``), one row per reproduction."""
from __future__ import annotations

import pytest

from integrations.sudo import command_error, edit_error, role_errors, role_warnings

SHELL = "is a shell"
INTERPRETER = "is an interpreter"
EDITOR = "is an editor"
PAGER = "is a pager"
RUNNER = "runs another command"
FIND = "runs commands through -exec"
SED = "edits files in place"
WRITE = "writes any file it is given"
CONTAINER = "is a container runtime"
SUDO = "is sudo itself"
PACKAGES = "installs packages"
SYSTEMCTL = "systemctl needs a fixed sub-command and unit"
JOURNALCTL = "journalctl needs a fixed unit"
NO_ARGS = "has no arguments, which sudo reads as any arguments"
USER_DIR = "is under a directory users can write"
FILE_READ = "reads any file it is given"
PERMS = "changes the mode or owner"


@pytest.mark.parametrize("command, why", [
    # the reproductions
    ("/usr/bin/env", RUNNER), ("/usr/bin/env /bin/sh", RUNNER),
    ("/usr/bin/python3", INTERPRETER), ("/usr/bin/python3 -c x", INTERPRETER),
    ("/usr/bin/find /etc -name x", FIND), ("/usr/bin/vim", EDITOR), ("/usr/bin/vim /etc/hosts", EDITOR),
    ("/usr/bin/less /var/log/syslog", PAGER), ("/usr/bin/tee /etc/sudoers.d/x", WRITE), ("/bin/cp a b", WRITE),
    ("/usr/bin/dd if=/dev/zero of=/etc/x", WRITE), ("/usr/bin/awk -f x", INTERPRETER),
    ("/usr/bin/docker run", CONTAINER), ("/usr/bin/systemctl", SYSTEMCTL), ("/bin/bash", SHELL),
    ("/tmp/fix.sh --now", USER_DIR), ("/home/alice/bin/tool -x", USER_DIR), ("/var/tmp/x --y", USER_DIR),
    # basename variants: versions and Debian's alternatives
    ("/usr/local/bin/python3.11 -m http.server", INTERPRETER), ("/usr/bin/vim.basic /etc/x", EDITOR),
    ("/usr/bin/vim.tiny -u x", EDITOR), ("/usr/bin/perl5.36 -e x", INTERPRETER), ("/usr/bin/perl -e x", INTERPRETER),
    ("/usr/bin/ruby3.1 -e x", INTERPRETER), ("/usr/bin/node -e x", INTERPRETER), ("/usr/bin/php8.2 -r x", INTERPRETER),
    ("/usr/bin/lua5.4 -e x", INTERPRETER), ("/usr/bin/gawk -f x", INTERPRETER), ("/usr/bin/mawk -f x", INTERPRETER),
    ("/bin/sh -c id", SHELL), ("/bin/dash -c id", SHELL), ("/usr/bin/zsh -c id", SHELL), ("/bin/busybox sh", SHELL),
    ("/usr/bin/nano /etc/x", EDITOR), ("/usr/bin/ed /etc/x", EDITOR), ("/usr/bin/emacs /etc/x", EDITOR),
    ("/usr/bin/nvim /etc/x", EDITOR), ("/usr/bin/more /etc/x", PAGER), ("/usr/bin/man ls", PAGER),
    ("/bin/mv a b", WRITE), ("/usr/bin/install a b", WRITE), ("/usr/bin/rsync a b", WRITE),
    ("/usr/bin/curl -o /etc/x http://h", WRITE), ("/bin/sed -i s/a/b/ /etc/x", SED),
    ("/usr/bin/xargs -a x", RUNNER), ("/usr/bin/nice -n 5 x", RUNNER), ("/usr/bin/timeout 5 x", RUNNER),
    ("/usr/bin/strace -o x", RUNNER), ("/usr/bin/podman run", CONTAINER), ("/usr/bin/kubectl exec", CONTAINER),
    ("/usr/bin/sudo -u root", SUDO), ("/usr/bin/sudoedit /etc/x", SUDO), ("/bin/su -", SUDO),
    ("/usr/sbin/visudo -f x", SUDO), ("/usr/bin/pkexec x", SUDO), ("/usr/sbin/usermod -aG sudo bob", SUDO),
    ("/usr/bin/apt-get install x", PACKAGES), ("/usr/bin/pip3 install x", PACKAGES),
    # systemd: a fixed verb and unit, and no editor
    ('/usr/bin/systemctl ""', SYSTEMCTL), ("/usr/bin/systemctl restart", SYSTEMCTL),
    ("/usr/bin/systemctl edit nginx", SYSTEMCTL), ("/usr/bin/systemctl link /tmp/x.service", SYSTEMCTL),
    ("/usr/bin/systemctl set-environment A=b", SYSTEMCTL), ("/usr/bin/systemctl --user restart x", SYSTEMCTL),
    ("/usr/bin/systemctl nginx", SYSTEMCTL), ("/usr/bin/journalctl", JOURNALCTL),
    ('/usr/bin/journalctl ""', JOURNALCTL), ("/usr/bin/journalctl -f", JOURNALCTL),
    ("/usr/bin/journalctl -u nginx --file=/etc/shadow", JOURNALCTL),
    ("/usr/bin/journalctl -u nginx -D /tmp/j", JOURNALCTL), ("/usr/bin/journalctl -u nginx --vacuum-size=1", JOURNALCTL),
    # no arguments means any arguments
    ("/usr/bin/id", NO_ARGS), ("/usr/sbin/nginx", NO_ARGS),
    # chmod/chown: never relative or user-writable paths
    ("/bin/chmod 644 x", PERMS), ("/bin/chown root /tmp/x", USER_DIR), ("/bin/chmod 4755 /home/a/sh", USER_DIR),
])
def test_refused_with_its_reason(command: str, why: str) -> None:
    error = command_error(command)
    assert error is not None and why in error, error


@pytest.mark.parametrize("command, why", [
    ("/bin/chmod", PERMS), ("/bin/chown", PERMS), ("/usr/bin/cat", FILE_READ), ("/usr/bin/tail", FILE_READ),
    ("/usr/bin/env", RUNNER), ("/usr/bin/systemctl", SYSTEMCTL), ("/usr/bin/journalctl", JOURNALCTL),
    ("/tmp/x", USER_DIR),
])
def test_refused_even_with_any_arguments_allowed(command: str, why: str) -> None:
    error = command_error(command, any_arguments=True)
    assert error is not None and why in error, error


@pytest.mark.parametrize("command", [
    "/usr/bin/systemctl restart nginx", "/usr/bin/systemctl status nginx", "/usr/bin/systemctl reload nginx.service",
    "/usr/bin/systemctl --no-pager status nginx", "/usr/bin/systemctl restart php8.2-fpm",
    "/usr/bin/journalctl -u nginx", "/usr/bin/journalctl --no-pager -u nginx -n 100", "/usr/bin/journalctl --unit=nginx",
    '/usr/bin/id ""', "/usr/bin/id -u", "/usr/sbin/nginx -t", "/usr/bin/cat /var/log/nginx/error.log",
    "/bin/chmod 644 /etc/nginx/nginx.conf", "/bin/chown www-data:www-data /var/www/html",
])
def test_safe_commands_are_accepted(command: str) -> None:
    assert command_error(command) is None


def test_any_arguments_accepts_a_bare_harmless_command() -> None:
    assert command_error("/usr/bin/id", any_arguments=True) is None


@pytest.mark.parametrize("path, ok", [
    ("/etc/nginx/nginx.conf", True), ("/etc/hosts", True), ("/tmp/x", False), ("/home/a/.profile", False),
    ("/etc/sudoers", False), ("/etc/sudoers.d/jit_g1", False), ("/etc/shadow", False), ("/etc/pam.d/sudo", False),
    ("relative.conf", False), ("/etc/../etc/shadow", False), ("/etc/a*", False), ("/etc/a b", False), ("", False),
])
def test_sudoedit_files(path: str, ok: bool) -> None:
    assert (edit_error(path) is None) is ok, edit_error(path)


@pytest.mark.parametrize("params, errors", [
    ({"commands": ["/usr/bin/systemctl restart nginx"]}, []),
    ({"edit": ["/etc/nginx/nginx.conf"]}, []),
    ({}, ["commands: required (a non-empty list of command strings), or edit (files for sudoedit)"]),
    ({"edit": []}, ["edit: must be a non-empty list of absolute file paths"]),
    ({"commands": ['/usr/bin/id ""'], "allow_exec": True},
     ["allow_exec_reason: required with allow_exec = true (why this role's commands must run other programs, "
      "at least 10 characters)"]),
    ({"commands": ['/usr/bin/id ""'], "allow_exec_reason": "because it must"},
     ["allow_exec_reason: only valid with allow_exec = true"]),
    ({"commands": ['/usr/bin/id ""'], "allow_any_arguments": "yes"}, ["allow_any_arguments: must be true or false"]),
    ({"edit": ["/etc/x"], "allow_any_arguments": True}, ["allow_any_arguments: only valid with commands"]),
])
def test_role_errors(params: dict, errors: list[str]) -> None:
    assert role_errors(params) == errors


def test_role_warnings_name_the_opt_outs() -> None:
    assert role_warnings({"commands": ['/usr/bin/id ""']}) == []
    warned = role_warnings({"commands": ["/usr/bin/id"], "allow_any_arguments": True, "allow_exec": True,
                            "allow_exec_reason": "the hook runs helpers"})
    assert [w.split(":")[0] for w in warned] == ["allow_any_arguments", "allow_exec"]
    assert "the hook runs helpers" in warned[1]
