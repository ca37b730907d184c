"""The guarded opener: every request img2dataset makes for the URL source goes through it (installed in
img2dataset's download threads by :class:`facecaption.collect.download.GuardedDownloader`).

Only http/https (redirects included), opt-out checked on every redirect target, bodies over ``max_bytes``
dropped, a total time limit per download (``total_timeout``: every socket operation gets the time left as its
timeout, so it holds whatever the server does). The errors it raises start with :data:`MARK`, so that
:func:`facecaption.collect.urls.classify` can tell them from the network's own.
"""

from __future__ import annotations

import functools
import http.client
import io
import math
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from facecaption.core.optout import OptOut

ALLOWED_SCHEMES = ("http", "https")
MARK = "facecaption:"  # prefix of the errors our guarded opener raises


class GuardError(urllib.error.URLError):
    def __str__(self) -> str:
        return f"{MARK} {self.reason}"


_DEADLINE_ATTR = "_facecaption_deadline"  # on each Request: (monotonic time its download must end by, total_timeout)


def _deadline_error(total: float | None = None) -> GuardError:
    limit = f" ({total:g} s)" if total else ""
    return GuardError(f"deadline: download took longer than total_timeout{limit} (timed out)")


def _budget(deadline: float, stall: float | None, total: float | None = None) -> float | None:
    """The socket timeout for the next operation: the time left before ``deadline``, at most ``stall`` (the
    per-operation ``timeout``); raises the deadline error once no time is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _deadline_error(total)
    if left == math.inf:  # no deadline (an opener without the guard)
        return stall
    return left if stall is None else min(stall, left)


class _DeadlineReader(io.RawIOBase):
    """The socket stream of one response, read in pieces of at most one ``recv`` each; before each piece the
    socket timeout is set to the time left before the deadline, so no read can outlast it (a server trickling
    its headers or body one byte at a time is stopped at the deadline, not after the whole body)."""

    def __init__(self, fp, sock, deadline: float, stall: float | None, total: float | None = None):
        super().__init__()
        self._fp, self._sock, self._deadline, self._stall, self._total = fp, sock, deadline, stall, total

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._sock.settimeout(_budget(self._deadline, self._stall, self._total))
        try:
            return self._fp.readinto1(b)
        except (TimeoutError, socket.timeout):
            if time.monotonic() >= self._deadline:
                raise _deadline_error(self._total) from None
            raise

    def close(self) -> None:
        if not self.closed:
            self._fp.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response whose status line, headers and body are all read through :class:`_DeadlineReader`."""

    def __init__(self, sock, *args, deadline: float, stall: float | None, total: float | None = None, **kw):
        super().__init__(sock, *args, **kw)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp, sock, deadline, stall, total))


class _DeadlineConnection:
    """Mixin for http.client connections: connect, TLS handshake, sending and every read end by the
    request's deadline (the per-operation ``timeout`` still applies within it)."""

    def __init__(self, *args, deadline: tuple[float, float | None] = (math.inf, None), **kw):
        super().__init__(*args, **kw)
        self._deadline, self._total = deadline
        self._stall = self.timeout if isinstance(self.timeout, (int, float)) else socket.getdefaulttimeout()
        self.response_class = functools.partial(_DeadlineResponse, deadline=self._deadline, stall=self._stall,
                                                total=self._total)

    def _left(self) -> float | None:
        return _budget(self._deadline, self._stall, self._total)

    def send(self, data):
        if self.sock is not None:
            self.sock.settimeout(self._left())
        return super().send(data)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    def connect(self):
        self.timeout = self._left()
        super().connect()


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    def connect(self):  # http.client.HTTPSConnection.connect, with the handshake bounded by the deadline
        self.timeout = self._left()
        http.client.HTTPConnection.connect(self)
        self.sock.settimeout(self._left())  # the whole handshake (CPython's ssl applies it as one deadline)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host)


def _deadline_of(req) -> tuple[float, float | None]:
    """(deadline, total_timeout) of a request; no deadline for one that did not pass the guard."""
    return getattr(req, _DEADLINE_ATTR, None) or (math.inf, None)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=_deadline_of(req)), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        kw = {"context": self._context}
        if getattr(self, "_check_hostname", None) is not None:  # Python < 3.12
            kw["check_hostname"] = self._check_hostname
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=_deadline_of(req)), req, **kw)


class _Capped:
    """A response whose ``read()`` stops past ``max_bytes`` or ``deadline`` and notices a short body."""

    def __init__(self, resp, max_bytes: int, deadline: float, total: float | None = None):
        self._resp, self._max, self._deadline, self._total = resp, max_bytes, deadline, total

    def __getattr__(self, name):
        return getattr(self._resp, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._resp.close()

    def __iter__(self):
        return iter(self._resp)

    def read(self, amt=None):
        if amt is not None:
            return self._resp.read(amt)
        chunks, total = [], 0
        while True:
            if time.monotonic() > self._deadline:
                raise _deadline_error(self._total)
            b = self._resp.read(65536)  # each socket read inside is bounded by the deadline (_DeadlineReader)
            if not b:
                break
            total += len(b)
            if total > self._max:
                raise GuardError(f"too large: body over max_bytes ({self._max})")
            chunks.append(b)
        left = getattr(self._resp, "length", None)
        if left:  # the server closed before Content-Length bytes arrived
            raise GuardError(f"IncompleteRead: truncated body, {total} bytes read, {left} more expected")
        return b"".join(chunks)


class _Guard(urllib.request.BaseHandler):
    handler_order = 1001  # after HTTPErrorProcessor: sees only responses that are kept

    def __init__(self, max_bytes: int, total_timeout: float, optout: OptOut):
        self.max_bytes, self.total_timeout, self.optout = max_bytes, total_timeout, optout

    def _check(self, req):
        url = req.full_url
        if urlsplit(url).scheme.lower() not in ALLOWED_SCHEMES:
            raise GuardError(f"unsafe scheme: {url[:100]}")
        if self.optout.blocks(url):
            raise GuardError(f"opted out: {url[:100]}")
        if getattr(req, _DEADLINE_ATTR, None) is None:  # a new download (a redirect carries its deadline on)
            setattr(req, _DEADLINE_ATTR, (time.monotonic() + self.total_timeout, self.total_timeout))
        return req

    http_request = https_request = _check

    def http_response(self, req, resp):
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            resp.close()
            raise GuardError(f"too large: Content-Length {length} over max_bytes ({self.max_bytes})")
        if isinstance(resp, _Capped):
            return resp
        return _Capped(resp, self.max_bytes, *_deadline_of(req))

    https_response = http_response


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def __init__(self, optout: OptOut):
        self.optout = optout

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from urllib.parse import urljoin  # noqa: PLC0415

        target = urljoin(req.full_url, newurl)
        if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
            raise GuardError(f"unsafe redirect to {target[:100]}")
        if self.optout.blocks(target):
            raise GuardError(f"opted out: redirect to {target[:100]}")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:  # the redirect is part of the same download: same deadline
            setattr(new, _DEADLINE_ATTR, _deadline_of(req))
        return new


def guarded_opener(max_bytes: int, total_timeout: float, optout: OptOut) -> urllib.request.OpenerDirector:
    """An opener that speaks only http/https (no ftp, file or data handlers) and applies the limits.

    ``total_timeout`` bounds each ``open`` + ``read`` as a whole, redirects included, whatever the server
    does: the deadline is set when the request is opened, and the connect, the TLS handshake, sending the
    request and every socket read (status line, headers, body) get the time left as their socket timeout
    (at most the per-operation ``timeout`` given to ``open``). Name resolution (DNS) is not bounded by it.
    """
    op = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _DeadlineHTTPHandler(),
              _DeadlineHTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _SafeRedirect(optout),
              urllib.request.HTTPErrorProcessor(), _Guard(max_bytes, total_timeout, optout)):
        op.add_handler(h)
    return op
