"""Owner-only files and folders, the per-user data folder, and the one way privmed reads a secret key file.

What privmed writes about patients — run results and models, checkpoints,
the budget ledger, audits, crash logs — and the keys it makes are readable by
their owner only: files 0600, the folders privmed creates 0700, whatever the
umask. A key file is read only if it is a regular file of this user's that
no group or other user can read (as ``ssh`` treats a private key).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from privmed.errors import PrivmedError

FILE_MODE, DIR_MODE = 0o600, 0o700


def data_home() -> Path:
    """privmed's per-user data folder: ``$PRIVMED_HOME``, else ``$XDG_DATA_HOME/privmed`` or ``~/.local/share/privmed``.

    Absolute whatever the working directory, so every run of one user finds the same ledger there.
    """
    if os.environ.get("PRIVMED_HOME"):
        return Path(os.environ["PRIVMED_HOME"]).expanduser().absolute()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser().absolute() / "privmed"


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder; the folders created here (parents too) are 0700. An existing folder keeps its mode."""
    p = Path(path)
    missing = []
    for q in (p, *p.parents):
        if q.exists():
            break
        missing.append(q)
    for q in reversed(missing):
        try:
            q.mkdir(mode=DIR_MODE)
            os.chmod(q, DIR_MODE)  # mkdir's mode is filtered by the umask
        except FileExistsError:  # another process made it meanwhile
            pass
        except OSError as exc:  # a file where a folder should be, no permission
            raise PrivmedError(f"cannot make the folder {q}: {exc.strerror}") from None
    if not p.is_dir():
        raise PrivmedError(f"{p} is not a folder")
    return p


@contextlib.contextmanager
def private_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` atomically (a temporary file, then a rename), owner-only (0600)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a temporary file left by a crash keeps its old mode otherwise
    with os.fdopen(fd, mode) as fh:
        yield fh
    os.replace(tmp, p)


def create_private(path: str | Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (before a library opens it with its own mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def read_private(path: str | Path, *, what: str, max_bytes: int, make: str) -> bytes:
    """The bytes of a secret file: a regular file of this user's, not a link, that no group or other can access.

    The file is opened once and every check is made on that open file, so it
    cannot be swapped between check and read. ``what`` names it in errors,
    ``make`` says how to make one. More than ``max_bytes`` is refused.
    """
    p = Path(path)
    try:  # O_NONBLOCK: a FIFO put in the key's place must not hang the open; no effect on a regular file
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PrivmedError(f"{what} {p} not found; {make}") from None
    except OSError as exc:
        why = "is a symbolic link; give the path of the file itself" if exc.errno == errno.ELOOP else exc.strerror
        raise PrivmedError(f"{what} {p} cannot be opened: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PrivmedError(f"{what} {p} is not a regular file; {make}")
        if st.st_uid != os.geteuid():
            raise PrivmedError(
                f"{what} {p} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
                "use a copy of your own (copy it, then chmod 600)"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise PrivmedError(f"{what} {p} is accessible by group or others (mode {mode:o}); run: chmod 600 {p}")
        raw = b""
        while len(raw) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(raw))):
            raw += chunk
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise PrivmedError(f"{what} {p} holds more than {max_bytes} bytes: not a key file; {make}")
    return raw
