"""BIMlink credentials: the refresh-token file, the refresh-token `Grant`, the one-time login.

BIMlink has no client-credentials flow: a person logs in once (`connector auth bimlink`, the
OAuth2 authorization-code flow with PKCE and a loopback redirect), and the connector runs on
the refresh token that login returns. BIMlink rotates refresh tokens (each token response
carries a new one and revokes the old one) and their lifetime slides, so the connector keeps
working as long as it polls within that lifetime.

Owns:
- `RefreshTokenFile`: the token on disk, written atomically with mode 0600 (a group- or
  world-readable file is tightened on read, or refused if that is impossible; a symbolic
  link, a file that is not regular, or one another user owns is refused);
- `RefreshTokenGrant`: the `Grant` for `connector.auth.TokenProvider`; every rotated token is
  stored back before the new access token is used, so a crash never leaves only a revoked
  token on disk;
- `login`: this package's `auth` hook (`connector.sources.LOGINS`, run by `connector auth
  bimlink`): the redirect listener, state and PKCE checks, the code exchange, and an
  actionable `LoginFailed` (`connector.sources.base`) for each way the login can go wrong.

Must not: print or log a token or the client secret, or listen anywhere but 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import secrets
import ssl
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlencode

import aiohttp
import anyio
import orjson
from aiohttp import web

from connector.errors import ApiError, CredentialsRejected
from connector.http import send
from connector.logs import get_logger
from connector.sources.base import LoginFailed

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pydantic import SecretStr

    from connector.sources.bimlink.settings import BimlinkSourceSettings

__all__ = [
    "LoginFailed",
    "RefreshTokenFile",
    "RefreshTokenGrant",
    "login",
    "relogin_hint",
    "token_subject",
]

log = get_logger(__name__)

_PRIVATE: Final = 0o600
_MAX_FILE: Final = 64 * 1024  # a token file is a few hundred bytes


def relogin_hint(path: Path) -> str:
    return (
        f"run `building-twin-connector auth bimlink --config FILE` again to log in and store "
        f"a new refresh token in {path}"
    )


class RefreshTokenFile:
    """One refresh token on disk, as JSON {refresh_token, token_url, client_id, saved_at}.

    A file holding only the token (pasted by hand) is read too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"RefreshTokenFile({str(self.path)!r})"

    def read(self) -> str:
        """The stored token. Raises `CredentialsRejected` when there is none, when the path
        is a symbolic link or not a regular file, when another user owns the file, or when
        it is readable by others and cannot be made private.

        The file is opened once without following a link (O_NOFOLLOW) and every check is
        made on that open file (fstat, fchmod), so no link or swap between a check and the
        read can send another file's content to the token endpoint."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise CredentialsRejected(
                f"no BIMlink refresh token at {self.path}: {relogin_hint(self.path)}"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CredentialsRejected(
                    f"{self.path} is a symbolic link; a refresh token is read only from a "
                    "regular file the connector's user owns: set refresh_token_file to the "
                    "file itself, or replace the link with the file"
                ) from None
            raise CredentialsRejected(f"cannot read {self.path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CredentialsRejected(
                    f"{self.path} is not a regular file: set refresh_token_file to the file "
                    f"the login wrote ({relogin_hint(self.path)})"
                )
            if info.st_uid != os.geteuid():
                raise CredentialsRejected(
                    f"{self.path} belongs to another user (uid {info.st_uid}), not to the "
                    f"connector's user (uid {os.geteuid()}): run the connector as the file's "
                    "owner, or log in again as the connector's user; a token file someone "
                    "else can replace is not used"
                )
            if stat.S_IMODE(info.st_mode) & 0o077:
                try:
                    os.fchmod(fd, _PRIVATE)
                except OSError as exc:
                    raise CredentialsRejected(
                        f"{self.path} holds a refresh token but others may read it, and it "
                        f"cannot be made private ({exc.strerror}): chmod 600 {self.path}"
                    ) from exc
                log.warning("tightened %s to mode 0600: it holds a refresh token", self.path)
            try:
                text = handle.read(_MAX_FILE).decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CredentialsRejected(f"cannot read {self.path}: {exc}") from exc
        token = text
        if text.startswith("{"):
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                data = None
            token = data.get("refresh_token", "") if isinstance(data, dict) else ""
        if not isinstance(token, str) or not token:
            raise CredentialsRejected(
                f"{self.path} holds no refresh token: {relogin_hint(self.path)}"
            )
        return token

    def ensure_replaceable(self) -> None:
        """Before a token is used only to test it (`check`): raises `CredentialsRejected` when
        this process could not store the rotated token (the directory is not writable), or
        would store it in a file the connector's own user may not read (another user owns
        it). Using the token revokes it, so either would leave nothing valid on disk."""
        try:
            owner = self.path.stat().st_uid
        except OSError:
            return  # read() says what is wrong with a missing or unreadable file
        if owner != os.geteuid():
            raise CredentialsRejected(
                f"{self.path} belongs to another user (uid {owner}): run the command as that "
                "user, the one the connector runs as; BIMlink rotates the refresh token at "
                "every use, and the new file would belong to whoever stored it"
            )
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise CredentialsRejected(
                f"{self.path.parent} is not writable: make it writable for the connector's "
                "user; BIMlink rotates the refresh token at every use and the new one must be "
                "stored there"
            )

    def save(self, token: str, *, token_url: str, client_id: str) -> None:
        """Replace the file atomically (temp file, fsync, rename) with mode 0600.

        Raises OSError when the directory is not writable."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = orjson.dumps(
            {"refresh_token": token, "token_url": token_url, "client_id": client_id,
             "saved_at": int(time.time())},
            option=orjson.OPT_INDENT_2,
        )  # fmt: skip
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        with contextlib.suppress(OSError):  # the rename itself is durable once the dir is
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class RefreshTokenGrant:
    """OAuth2 `refresh_token` grant with rotation, for `TokenProvider`.

    The token in use is the one in the file, unless this grant stored a newer one it could not
    write; a token written to the file by a new login while the connector runs is picked up at
    the next renewal. File I/O is synchronous: a few hundred bytes once per access-token
    lifetime.
    """

    scheme = "Bearer"
    as_json = False

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr | None,
        store: RefreshTokenFile,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._store = store
        self._on_disk: str | None = None  # what the file held when last read or written
        self._current: str | None = (
            None  # the newest token known (== _on_disk unless a write failed)
        )

    def __repr__(self) -> str:
        return f"RefreshTokenGrant(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def _token(self) -> str:
        on_disk = self._store.read()
        if on_disk != self._on_disk or self._current is None:
            self._on_disk = self._current = on_disk  # first use, or a new login wrote it
        return self._current

    def fields(self) -> dict[str, str]:
        fields = {
            "grant_type": "refresh_token",
            "refresh_token": self._token(),
            "client_id": self.client_id,
        }
        if self._secret is not None:
            fields["client_secret"] = self._secret.get_secret_value()
        return fields

    def secrets(self) -> tuple[str, ...]:
        values = [self._current or ""]
        if self._secret is not None:
            values.append(self._secret.get_secret_value())
        return tuple(v for v in values if v)

    def accepted(self, payload: dict[str, Any]) -> None:
        """Store the rotated refresh token before its access token is used.

        Raises `CredentialsRejected` when it cannot be written: the old token is revoked by
        now, so running on would leave a restart nothing valid to start from."""
        rotated = payload.get("refresh_token")
        if not isinstance(rotated, str) or not rotated or rotated == self._current:
            return  # the server kept the token (no rotation): nothing to store
        self._current = rotated
        try:
            self._store.save(rotated, token_url=self.token_url, client_id=self.client_id)
        except OSError as exc:
            raise CredentialsRejected(
                f"BIMlink rotated the refresh token but {self._store.path} cannot be written "
                f"({exc.strerror}); make its directory writable (the token in memory is used "
                "for the next attempt)"
            ) from exc
        self._on_disk = rotated

    def fix(self, error: str, status: int) -> str | None:
        del status
        path = self._store.path
        if error == "invalid_grant":
            return (
                "the refresh token expired (unused for longer than its sliding lifetime), was "
                f"revoked, or was already used by another process: {relogin_hint(path)}"
            )
        if error in ("invalid_client", "unauthorized_client"):
            return (
                "the client ID or secret was refused: re-copy client_id and client_secret "
                "(or client_secret_file) as BIMlink support issued them"
            )
        if error == "invalid_scope":
            return "the scope was refused: use 'bimlink_publicapi offline_access'"
        return None


# -- the one-time login ---------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class _Pkce:
    verifier: str
    challenge: str
    state: str

    @classmethod
    def new(cls) -> _Pkce:
        verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43-128
        challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        return cls(verifier, challenge, secrets.token_urlsafe(24))


_CALLBACK_ERRORS: Final = {
    "access_denied": (
        "access was denied at the BIMlink login: log in as a user who may use the API and "
        "approve the request, or ask the account administrator for access"
    ),
    "invalid_scope": (
        "BIMlink refused the scope: set scope to 'bimlink_publicapi offline_access' and ask "
        "BIMlink support to enable both scopes for the client"
    ),
    "unauthorized_client": "the client_id is not known to BIMlink or not enabled: check it",
}

_PAGE: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>BIMlink login</title></head>"
    "<body><p>{message}</p></body></html>"
)


async def login(
    settings: BimlinkSourceSettings,
    *,
    out: TextIO,
    browser: Callable[[str], object] | None = None,
    wait_seconds: float | None = None,
) -> Path:
    """The authorization-code flow: listen on 127.0.0.1:`redirect_port`, show (and open, via
    `browser`) the authorize URL, wait for the callback, check `state`, exchange the code with
    the PKCE verifier, store the refresh token. Returns the file written.

    Raises `LoginFailed` with what to do for every failure: the port is taken, the login was
    denied, the state does not match, the code exchange was refused (client secret, redirect
    URI, PKCE), no refresh token came back (offline_access), or nobody answered in time."""
    pkce = _Pkce.new()
    query = {
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": settings.redirect_uri,
        "scope": settings.scope,
        "state": pkce.state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    url = f"{settings.authorize_url}?{urlencode(query)}"
    answer: dict[str, str] = {}
    arrived = anyio.Event()

    async def callback(request: web.Request) -> web.Response:
        if not arrived.is_set():
            answer.update({k: v for k, v in request.query.items() if isinstance(v, str)})
            arrived.set()
        ok = "code" in request.query and request.query.get("state") == pkce.state
        message = (
            "Logged in: you can close this window and return to the terminal."
            if ok
            else "The login did not succeed: see the terminal for what to do."
        )
        return web.Response(text=_PAGE.format(message=message), content_type="text/html")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, "127.0.0.1", settings.redirect_port).start()
        except OSError as exc:
            raise LoginFailed(
                f"cannot listen on 127.0.0.1:{settings.redirect_port} for the login redirect "
                f"({exc.strerror}): stop what uses that port, or set redirect_port to a port "
                "whose http://127.0.0.1:PORT/callback BIMlink has whitelisted"
            ) from exc
        print(
            f"Log in to BIMlink in your browser. If it does not open, visit:\n\n  {url}\n\n"
            f"Waiting for the redirect to {settings.redirect_uri} ...",
            file=out,
            flush=True,
        )
        if browser is not None:
            await anyio.to_thread.run_sync(browser, url)
        wait = settings.login_timeout_seconds if wait_seconds is None else wait_seconds
        with anyio.move_on_after(wait):
            await arrived.wait()
    finally:
        await runner.cleanup()
    if not arrived.is_set():
        raise LoginFailed(
            f"no login arrived within {wait:g} s. If the BIMlink page reported an invalid "
            f"redirect_uri, ask BIMlink support to whitelist {settings.redirect_uri} for "
            f"client {settings.client_id!r} (or set redirect_port to a whitelisted port); "
            "otherwise run the command again and finish the login in time"
        )
    code = _checked_code(answer, pkce.state)
    token, subject = await _exchange(settings, code, pkce.verifier)
    store = RefreshTokenFile(settings.refresh_token_file)
    try:
        store.save(token, token_url=settings.token_url, client_id=settings.client_id)
    except OSError as exc:
        raise LoginFailed(
            f"logged in, but cannot write {settings.refresh_token_file} ({exc.strerror}): "
            "make its directory writable or change refresh_token_file, then log in again"
        ) from exc
    who = f" as {subject}" if subject else ""
    print(f"Logged in{who}; the refresh token is stored in {store.path} (mode 0600).", file=out)
    return store.path


def _checked_code(answer: dict[str, str], state: str) -> str:
    error = answer.get("error")
    if error:
        description = answer.get("error_description", "")
        fix = _CALLBACK_ERRORS.get(error, "see BIMlink's description")
        detail = f" ({description})" if description else ""
        raise LoginFailed(f"the BIMlink login answered {error}{detail}: {fix}")
    if not secrets.compare_digest(answer.get("state", ""), state):
        raise LoginFailed(
            "state mismatch: the redirect did not come from the login this command started "
            "(an old or foreign login link?); run the command again and use the new link"
        )
    code = answer.get("code")
    if not code:
        raise LoginFailed("the redirect carried neither a code nor an error: run the command again")
    return code


async def _exchange(
    settings: BimlinkSourceSettings, code: str, verifier: str
) -> tuple[str, str | None]:
    """The refresh token, and the user it belongs to (from the access token's `sub`)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.redirect_uri,
        "code_verifier": verifier,
        "client_id": settings.client_id,
    }
    if settings.client_secret is not None:
        form["client_secret"] = settings.client_secret.get_secret_value()
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
    tls: ssl.SSLContext | bool = settings.tls_verify
    if settings.tls_verify and settings.ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.ca_file))
    where = f"token endpoint {settings.token_url}"
    try:
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=tls), auto_decompress=False
        ) as session:
            answer = await send(session, "POST", settings.token_url, what=where, data=form)
    except ApiError as exc:
        then = "check authority_url and the network, then" if exc.retriable else "then"
        raise LoginFailed(f"{exc}; {then} log in again") from exc
    status, body = answer.status, answer.body
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    if status != 200:
        raise LoginFailed(_exchange_problem(settings, status, payload))
    refresh = payload.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise LoginFailed(
            "BIMlink returned no refresh token, so the connector could not run unattended: "
            "the login did not grant offline_access. Keep 'offline_access' in scope (it is: "
            f"{settings.scope!r}) and ask BIMlink support to allow offline access (refresh "
            "tokens) for the client"
        )
    return refresh, token_subject(str(payload.get("access_token") or ""))


def _exchange_problem(settings: BimlinkSourceSettings, status: int, payload: dict[str, Any]) -> str:
    error = str(payload.get("error") or "")
    description = str(payload.get("error_description") or "")
    where = f"token endpoint {settings.token_url} answered {status} {error}".rstrip()
    if description:
        where += f" ({description})"
    if error == "invalid_client":
        return (
            f"{where}: the client ID or secret was refused; re-copy client_id and "
            "client_secret (or client_secret_file) exactly as BIMlink support issued them"
        )
    if error == "invalid_grant":
        return (
            f"{where}: the code was refused (expired, already used, or the redirect URI or "
            "PKCE verifier did not match); run the command again"
        )
    if error == "unauthorized_client":
        return f"{where}: the client may not use the authorization-code flow; ask BIMlink support"
    if status >= 500 or error == "temporarily_unavailable":
        return f"{where}: BIMlink's login service is unavailable; try again in a few minutes"
    return f"{where}: check authority_url, client_id and client_secret"


def token_subject(access_token: str) -> str | None:
    """The `sub` claim of a JWT, unverified (for showing who logged in), or None."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None
