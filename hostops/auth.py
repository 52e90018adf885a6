"""SSH authentication: ssh-agent, identity files and default keys (read once per worker
process, through the context's cache), then the --ask-pass password; never a prompt.

Must not import :mod:`hostops.ssh`, :mod:`hostops.handshake` or :mod:`hostops.workerctx`
at run time (the context is only a type here), nor paramiko at import time.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from hostops.errors import ConnectError
from hostops.settings import Target

if TYPE_CHECKING:
    from hostops.workerctx import WorkerContext

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def read_key(path: str) -> Tuple[Optional[object], Optional[str]]:
    import paramiko

    try:
        return paramiko.PKey.from_path(path), None
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except paramiko.PasswordRequiredException:
        return None, f"{path} is passphrase-protected (load it into ssh-agent)"
    except TypeError as exc:  # cryptography's words for an encrypted OpenSSH-format key
        if "password" in str(exc).lower():
            return None, f"{path} is passphrase-protected (load it into ssh-agent)"
        return None, f"{path}: {exc}"
    except (paramiko.SSHException, OSError, ValueError) as exc:
        return None, f"{path}: {exc}"


# One piece (~75 lines): the order of the tries (agent, identity files, default keys, then
# the password, each within what the connect timeout left) is the contract, read top to bottom.
def _authenticate(transport, target: Target, ctx: WorkerContext, remaining: Callable[[], float],  # noqa: C901
                  password_withheld: Optional[str] = None) -> None:
    """Public keys, then the --ask-pass password, never a prompt: ssh-agent, then identity
    files, then default keys. ``password_withheld``: why the password must not be sent
    (the host key changed and was accepted under --host-key-policy off)."""
    import paramiko

    tried: List[str] = []
    notes: List[str] = []
    agent = None
    candidates: List[Tuple[str, object]] = []
    if os.environ.get("SSH_AUTH_SOCK") and not target.identities_only:
        try:
            agent = paramiko.Agent()
            candidates += [(f"agent key {k.get_name()}", k) for k in agent.get_keys()]
        except paramiko.SSHException as exc:
            notes.append(f"ssh-agent: {exc}")
    explicit = list(target.identity_files)
    defaults = [] if target.identities_only else [os.path.expanduser(f"~/.ssh/{n}") for n in DEFAULT_KEYS]
    for path in explicit + [p for p in defaults if p not in explicit]:
        if path not in explicit and not os.path.exists(path):
            continue
        key, why = ctx.load_key(path)
        if key is None:
            notes.append(why or path)
        else:
            candidates.append((path, key))
    try:
        for label, key in candidates:
            transport.auth_timeout = remaining()
            tried.append(label)
            try:
                transport.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as exc:
                if "password" in exc.allowed_types and ctx.options.secrets.ssh_password:
                    if password_withheld:
                        raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: the "
                                           f"server accepts only {', '.join(exc.allowed_types)}, and the password "
                                           f"was not sent: {password_withheld}", "auth") from None
                    break  # the password is tried below
                raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: the server "
                                   f"accepts only {', '.join(exc.allowed_types)}, hostops uses SSH keys "
                                   "(or a password with --ask-pass)", "auth") from None
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as exc:
                raise ConnectError(f"authentication with {target.hostname} failed: {exc}", "auth") from None
            if transport.is_authenticated():
                return
    finally:
        if agent is not None:
            agent.close()
    password = ctx.options.secrets.ssh_password
    if password and password_withheld:  # as OpenSSH: no password to a host that may be a man in the middle
        notes.append(f"the --ask-pass password ({password_withheld}: password authentication is disabled to "
                     "avoid man-in-the-middle attacks)")
        password = None
    if password:  # --ask-pass: after every key, as OpenSSH does
        transport.auth_timeout = remaining()
        tried.append("password")
        try:
            transport.auth_password(target.user, password)
        except paramiko.AuthenticationException:
            pass
        except paramiko.SSHException as exc:
            raise ConnectError(f"authentication with {target.hostname} failed: {exc}", "auth") from None
        if transport.is_authenticated():
            return
    if not candidates and not password:
        detail = "no SSH key to offer (no ssh-agent, no -k/identity_file, no ~/.ssh/id_*)"
    else:
        detail = f"the server refused {len(tried)} key(s): {', '.join(tried)}"
    if notes:
        detail += "; skipped " + "; ".join(notes)
    raise ConnectError(f"authentication failed for {target.user}@{target.hostname}: {detail}. "
                       f"Check the user (-u) and that the public key is in its authorized_keys", "auth")
