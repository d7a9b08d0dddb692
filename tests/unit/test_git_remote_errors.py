"""Why a git push failed, from git's stderr as the hosting providers write it (GitHub, GitLab, a
plain sshd, git over HTTPS): the line kept is the one that says why, the kind decides retrying
and the doctor's wording, and the hint names the setting to fix. The same failures against a real
sshd and a real git HTTP server are in tests/integration/test_git_ssh.py and test_remote_errors.py;
the provider-specific wordings can only be quoted here."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from backupd.config import GitDestinationConfig
from backupd.destinations.gitremote import diagnose, is_ssh_remote, ssh_environment, ssh_target
from backupd.errors import CommandError

GENERIC = "fatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\n" \
          "and the repository exists."
SSH = "git@github.com:acme/db-backups.git"
HTTPS = "https://x-access-token:TOKEN@github.com/acme/db-backups.git"

CASES = [
    # (remote, stderr, kind, words in the reason, words in the hint)
    (SSH, "git@github.com: Permission denied (publickey).\n" + GENERIC, "auth", "Permission denied (publickey)",
     "ssh_key_file"),
    (SSH, "ERROR: The key you are authenticating with has been marked as read only.\n" + GENERIC, "auth",
     "marked as read only", "write access"),
    (SSH, "ERROR: Permission to acme/db-backups.git denied to deploy key\n" + GENERIC, "auth",
     "denied to deploy key", "ssh_key_file"),
    (SSH, "ERROR: Repository not found.\n" + GENERIC, "not-found", "Repository not found", "remote"),
    (SSH, "remote: \nremote: ERROR: The project you were looking for could not be found or you don't have "
          "permission to view it.\nremote: \n" + GENERIC, "not-found", "could not be found", "remote"),
    (SSH, "No ED25519 host key is known for github.com and you have requested strict checking.\n"
          "Host key verification failed.\n" + GENERIC, "host-key",
     "No ED25519 host key is known for github.com and you have requested strict checking. Host key verification "
     "failed.", "no host key is pinned for github.com"),
    (SSH, "ssh: connect to host github.com port 22: Connection refused\n" + GENERIC, "unreachable",
     "Connection refused", None),
    (SSH, "ssh: Could not resolve hostname github.com: Temporary failure in name resolution\n" + GENERIC,
     "unreachable", "Could not resolve hostname", None),
    (SSH, "remote: error: GH006: Protected branch update failed for refs/heads/main.\nTo github.com:acme/x.git\n"
          " ! [remote rejected] main -> main (protected branch hook declined)\n"
          "error: failed to push some refs to 'github.com:acme/x.git'", "rejected",
     "(protected branch hook declined): remote: error: GH006", "branch protection"),
    (SSH, "To github.com:acme/x.git\n ! [rejected]        main -> main (fetch first)\n"
          "error: failed to push some refs to 'github.com:acme/x.git'\nhint: Updates were rejected because the "
          "remote contains work that you do\n", "rejected", "[rejected]", "reconcile it by hand"),
    (HTTPS, "remote: Invalid username or password.\nfatal: Authentication failed for "
            "'https://github.com/acme/db-backups.git/'", "auth", "Authentication failed for", "remote_file"),
    (HTTPS, "fatal: could not read Username for 'https://github.com': terminal prompts disabled", "auth",
     "could not read Username", "remote_file"),
    (HTTPS, "remote: Permission to acme/db-backups.git denied to backup-bot.\nfatal: unable to access "
            "'https://github.com/acme/db-backups.git/': The requested URL returned error: 403", "auth",
     "Permission to acme/db-backups.git denied", "remote_file"),
    (HTTPS, "fatal: unable to access 'https://git.example.org/acme/db-backups.git/': SSL certificate problem: "
            "self-signed certificate", "tls", "SSL certificate problem", "CA bundle"),
    (HTTPS, "fatal: unable to access 'https://github.com/acme/db-backups.git/': Failed to connect to github.com "
            "port 443 after 3 ms: Couldn't connect to server", "unreachable", "Failed to connect", None),
]


@pytest.mark.parametrize(("remote", "stderr", "kind", "reason", "hint"), CASES)
def test_the_line_that_says_why_is_kept(remote, stderr, kind, reason, hint):
    config = GitDestinationConfig(type="git", path=Path("/tmp/x"), remote=remote,
                                  ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----")
    problem = diagnose(CommandError("git", 128, stderr), config, remote, "main")
    assert problem.kind == kind
    assert reason in problem.reason and "Could not read from remote" not in problem.reason
    assert problem.transient == (kind == "unreachable")
    if hint is None:
        assert problem.hint is None
    else:
        assert problem.hint is not None and hint in problem.hint, problem.hint


def test_generic_git_lines_never_hide_the_cause():
    """Whatever the command, CommandError's one line skips git's generic closing lines."""
    error = CommandError("git", 128, "Host key verification failed.\n" + GENERIC)
    assert str(error) == "git exited with code 128: Host key verification failed."


@pytest.mark.parametrize(("remote", "ssh", "target"), [
    ("git@github.com:acme/x.git", True, ("github.com", None)),
    ("ssh://git@backup.example.org:2222/srv/git/x.git", True, ("backup.example.org", 2222)),
    ("git+ssh://git@host/x.git", True, ("host", None)),
    ("host:x.git", True, ("host", None)),
    ("https://github.com/acme/x.git", False, None),
    ("/srv/git/x.git", False, None),
    ("./relative:name/x.git", False, None),
])
def test_ssh_remotes_are_recognised(remote, ssh, target):
    assert is_ssh_remote(remote) == ssh
    if target:
        assert ssh_target(remote) == target


def test_the_ssh_command_quotes_paths_for_sh_and_ssh(tmp_path):
    """A known_hosts path with a space, a quote for sh and a % for ssh's token expansion reaches
    ssh intact; the key's content is in the temp file, not in the command."""
    known_hosts = tmp_path / "it's 100% pinned" / "known_hosts"
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0\n-----END OPENSSH PRIVATE KEY-----"
    config = GitDestinationConfig(type="git", path=tmp_path, remote="git@h:x.git", known_hosts_file=known_hosts,
                                  ssh_key=key, ssh_command="ssh -p 2222")
    with ssh_environment(config, "git@h:x.git") as env:
        command = env["GIT_SSH_COMMAND"]
        assert "c2VjcmV0" not in command and command.startswith("ssh -p 2222 -i ")
        words = shlex.split(command)
        key_file = Path(words[words.index("-i") + 1])
        assert key_file.read_text() == key + "\n" and key_file.stat().st_mode & 0o777 == 0o600
        assert f'UserKnownHostsFile="{str(known_hosts).replace("%", "%%")}"' in words
        assert "StrictHostKeyChecking=yes" in words and "BatchMode=yes" in words
    assert not key_file.exists() and not key_file.parent.exists()
    with ssh_environment(config, "https://github.com/acme/x.git") as env:
        assert env == {}
