"""HTTP client for distribution-spec (OCI / Docker v2) registries: ping, auth, manifests, blobs, uploads.

Standard library only, because the engine runs inside the VM guest with nothing but ``python3``.

The rules that keep a pull safe and compatible live here, once:

* **Transport.** HTTPS by default; plain HTTP only for registries the user marked insecure and for
  loopback hosts (as Docker does), and then only after HTTPS failed. ``HTTPS_PROXY``/``HTTP_PROXY``/
  ``NO_PROXY`` are honoured through urllib, except that loopback is never proxied (like Go's
  ``ProxyFromEnvironment``, which Docker uses).
* **Auth.** The first 401 names the scheme (see :mod:`runner.images.auth`); every request then carries
  a token for its scope, renewed once if the registry refuses it.
* **Redirects** are followed by hand because blob downloads are routinely redirected to storage on
  another host: ``Authorization`` goes only to the origin (scheme, host, port) it was issued for.
* **Manifests** are fetched with all six media types accepted; the type comes from the body's
  ``mediaType`` or, when a producer omitted it (skopeo's OCI pushes), from ``Content-Type``. A manifest
  fetched by digest must hash to that digest, and the digest recorded is always that of the exact bytes.
* **Errors** become one line: ``RegistryError`` (auth, transport, bad replies) or ``NotFound`` (404).

Responses are returned as urllib/http.client response objects so blob bodies stream into the store.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from runner.errors import ImageError, NotFound, RegistryError
from runner.images.auth import Authenticator
from runner.images.digest import sha256_digest, validate_digest
from runner.images.reference import api_host
from runner.images.store import MEDIA_DOCKER_LIST as DOCKER_LIST
from runner.images.store import MEDIA_DOCKER_MANIFEST as DOCKER_MANIFEST
from runner.images.store import MEDIA_OCI_INDEX as OCI_INDEX
from runner.images.store import MEDIA_OCI_MANIFEST as OCI_MANIFEST

DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
V1_TYPES = frozenset({DOCKER_V1, DOCKER_V1_SIGNED})
# Most preferred first; v1 is accepted only so the registry answers and we can refuse it clearly.
ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST,
                              DOCKER_V1_SIGNED, DOCKER_V1])

# Manifests are small; a bigger reply is an attack on memory, not an image (containerd's limit).
MAX_MANIFEST_BYTES = 4 << 20
MAX_REDIRECTS = 10
TIMEOUT = 60
USER_AGENT = "runner/0.1"
_REDIRECTS = (301, 302, 303, 307, 308)
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port) names this machine."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as served: raw bytes, their digest, and the resolved media type."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def json(self) -> dict:
        return parse_manifest_json(self.data)


def parse_manifest_json(data: bytes) -> dict:
    """Parse manifest bytes to a dict or raise ImageError (not a JSON object is not a manifest)."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ImageError("manifest is not a JSON object")
    return parsed


def media_type_of(data: bytes, content_type: str | None) -> str:
    """The manifest's media type: its own ``mediaType``, else ``Content-Type``, else its shape.

    The body wins because it is covered by the digest; the header is the fallback for producers that
    omit ``mediaType`` (allowed for OCI, and done by skopeo); the shape is the last resort for
    registries that answer ``application/json``.
    """
    parsed = parse_manifest_json(data)
    declared = parsed.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = (content_type or "").split(";")[0].strip().lower()
    if header in IMAGE_TYPES | INDEX_TYPES | V1_TYPES:
        return header
    if parsed.get("schemaVersion") == 1:
        return DOCKER_V1
    if isinstance(parsed.get("manifests"), list):
        return OCI_INDEX
    if isinstance(parsed.get("layers"), list) and isinstance(parsed.get("config"), dict):
        return OCI_MANIFEST
    raise ImageError(f"unrecognised manifest type {header or 'unknown'!r}")


@functools.lru_cache(maxsize=None)
def _tls_context(insecure: bool) -> ssl.SSLContext:
    """Shared TLS contexts (loading the CA store costs ~30 ms); ``insecure`` skips verification,
    which is what Docker's insecure-registries setting means for HTTPS."""
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx replies back to the client, which decides what to forward (see module docstring)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _ProxyHandler(urllib.request.ProxyHandler):
    """urllib's environment proxies, but never for loopback, matching Go's ProxyFromEnvironment."""

    def proxy_open(self, req, proxy, type):
        if is_loopback(urllib.parse.urlsplit(req.full_url).hostname or ""):
            return None
        return super().proxy_open(req, proxy, type)


def _error_detail(body: bytes) -> str:
    """The distribution ``errors`` array as ``code: message``; registry replies, never our secrets."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        code = str(first.get("code", "")).lower()
        message = str(first.get("message", ""))
        return f"{code}: {message}" if code else message
    except (ValueError, AttributeError, IndexError, TypeError):
        return body[:200].decode("utf-8", "replace").strip()


class RegistryClient:
    """One registry, one set of credentials. Safe to share between download threads.

    ``registry`` is the name as in references (``docker.io``, ``127.0.0.1:5000``); ``credentials`` is
    ``{"username","password"}``, ``{"identitytoken"}`` or None; ``insecure`` says the user allowed
    plain HTTP and unverified TLS for this registry.

    ``endpoints`` maps ``host[:port]`` as named in URLs to where the connection really goes, e.g.
    ``{"127.0.0.1:5000": "10.0.2.2:5000"}`` when the engine runs in the VM and the registry on the host's
    loopback (QEMU user-net's 10.0.2.2). Names, scopes and auth stay the original ones; a mapped loopback
    registry keeps loopback's rules (plain HTTP allowed, no proxy). A key without a port maps every port.
    """

    def __init__(self, registry: str, *, credentials: Mapping[str, str] | None = None,
                 insecure: bool = False, timeout: float = TIMEOUT,
                 endpoints: Mapping[str, str] | None = None):
        self.registry = registry
        self.host = api_host(registry)
        self._endpoints = {k.lower(): v for k, v in (endpoints or {}).items()}
        hostname = urllib.parse.urlsplit("//" + self.host).hostname or self.host
        self._plain_allowed = insecure or is_loopback(hostname)
        self._timeout = timeout
        self._base: str | None = None
        self.auth = Authenticator(registry, credentials, self._fetch_plain)
        self._opener = urllib.request.build_opener(
            _ProxyHandler(), _NoRedirect(), urllib.request.HTTPSHandler(context=_tls_context(insecure)))

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    # -- transport ------------------------------------------------------------------------------

    def _open(self, method: str, url: str, headers: Mapping[str, str], data=None):
        """One HTTP exchange without redirects; any status comes back as a response object."""
        mapped = self._mapped(url)
        if mapped != url:
            # The registry still sees its own name: the Location URLs it builds from Host stay mappable.
            headers = {**headers, "Host": urllib.parse.urlsplit(url).netloc.rpartition("@")[2]}
        request = urllib.request.Request(mapped, data=data, method=method,
                                         headers={"User-Agent": USER_AGENT, **headers})
        try:
            return self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as reply:  # non-2xx: still a usable response
            return reply
        except urllib.error.URLError as exc:
            raise self._transport_error(exc.reason) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc) from exc

    def _mapped(self, url: str) -> str:
        """``url`` with its host replaced as ``endpoints`` says (exact ``host:port`` first, then host)."""
        if not self._endpoints:
            return url
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2].lower()
        host = (parts.hostname or "").lower()
        host_key = f"[{host}]" if ":" in host else host
        if netloc in self._endpoints:
            target = self._endpoints[netloc]
        elif host_key in self._endpoints:
            target = self._endpoints[host_key] + (f":{parts.port}" if parts.port else "")
        else:
            return url
        return urllib.parse.urlunsplit(parts._replace(netloc=target))

    def _transport_error(self, reason: object) -> RegistryError:
        insecure_hint = (f"if {self.registry} serves plain HTTP or a self-signed certificate, "
                         f"mark it as an insecure registry")
        if isinstance(reason, ssl.SSLCertVerificationError):
            return RegistryError(f"TLS certificate of {self.registry} is not trusted: "
                                 f"{reason.verify_message}", hint=insecure_hint)
        if isinstance(reason, ssl.SSLError):
            return RegistryError(f"TLS handshake with {self.registry} failed: {reason.reason or reason}",
                                 hint=insecure_hint)
        if isinstance(reason, socket.gaierror):
            return RegistryError(f"cannot resolve registry host {self.host}",
                                 hint="check the name and your network/DNS")
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return RegistryError(f"registry {self.registry} did not answer within {self._timeout:g} s")
        if isinstance(reason, ConnectionRefusedError):
            return RegistryError(f"cannot connect to registry {self.registry}: connection refused")
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return RegistryError(f"connection to registry {self.registry} failed: {text}")

    def _fetch_plain(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None):
        """The token-server fetch handed to the authenticator: same transport rules, bounded body."""
        reply = self._send(method, url, dict(headers), data, follow=True)
        with reply:
            return reply.status, reply.read(1 << 20)

    def _send(self, method: str, url: str, headers: dict, data, *, follow: bool,
              authorization: str | None = None):
        """Send, following GET/HEAD redirects; ``authorization`` only ever goes to ``url``'s origin."""
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization and _origin(url) == origin:
                sent["Authorization"] = authorization
            reply = self._open(method, url, sent, data)
            location = reply.headers.get("Location")
            if not (follow and reply.status in _REDIRECTS and location and method in ("GET", "HEAD")):
                return reply
            reply.close()
            url = urllib.parse.urljoin(url, location)
        raise RegistryError(f"registry {self.registry} redirected more than {MAX_REDIRECTS} times")

    def base_url(self) -> str:
        """``https://host`` or, for insecure and loopback registries where HTTPS fails, ``http://host``."""
        if self._base is None:
            self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """``GET /v2/``: choose the scheme, learn the auth challenge, prove this is a v2 registry."""
        candidates = ["https"] + (["http"] if self._plain_allowed else [])
        for position, scheme in enumerate(candidates):
            url = f"{scheme}://{self.host}/v2/"
            try:
                reply = self._send("GET", url, {}, None, follow=True)
            except RegistryError:
                if position + 1 < len(candidates):
                    continue  # HTTPS failed on an insecure/loopback registry: Docker falls back to HTTP
                raise
            with reply:
                reply.read(4096)
            if reply.status == 401:
                self.auth.remember(reply.headers.get("WWW-Authenticate"))
            elif reply.status != 200:
                raise RegistryError(f"{self.registry} is not a v2 registry (GET /v2/ replied HTTP "
                                    f"{reply.status})")
            self._base = f"{scheme}://{self.host}"
            return

    def request(self, method: str, path: str, *, scopes: tuple[str, ...], headers: Mapping[str, str] = (),
                data: "bytes | Callable[[], Iterable[bytes]] | None" = None, follow: bool = True):
        """An authenticated request. ``path`` is under the base URL, or an absolute URL on it.

        ``data`` may be a callable producing the body afresh, so it can be re-sent after a 401. A
        401 is answered once by (re)authenticating; a second 401 is "unauthorized".
        """
        url = path if path.startswith(("http://", "https://")) else self.base_url() + path
        for attempt in range(2):
            authorization = self.auth.header(scopes, refresh=attempt > 0)
            body = data() if callable(data) else data
            reply = self._send(method, url, dict(headers), body, follow=follow,
                               authorization=authorization)
            if reply.status != 401:
                return reply
            with reply:
                reply.read(4096)
            if attempt == 0:
                self.auth.remember(reply.headers.get("WWW-Authenticate"))
        raise self.auth.unauthorized()

    def _fail(self, reply, what: str) -> RegistryError:
        """The error for an unexpected reply (body detail included: registries explain themselves)."""
        with reply:
            detail = _error_detail(reply.read(8192))
        if reply.status == 403:
            return RegistryError(f"access to {what} on {self.registry} denied: {detail or 'forbidden'}",
                                 hint=f"runner login {self.registry}")
        return RegistryError(f"{self.registry} replied HTTP {reply.status} for {what}"
                             + (f": {detail}" if detail else ""))

    # -- API ------------------------------------------------------------------------------------

    def check_login(self) -> None:
        """Prove the credentials work (what ``login`` does before saving them)."""
        self.ping()
        challenge = self.auth.challenge
        if challenge is None:
            return  # an open registry accepts anyone
        if challenge.scheme == "bearer":
            self.auth.token((), refresh=True)
            return
        reply = self.request("GET", "/v2/", scopes=())
        with reply:
            if reply.status != 200:
                raise self._fail(reply, "/v2/")

    def get_manifest(self, repository: str, reference: str, *, display: str | None = None) -> Manifest:
        """Fetch a manifest or index by tag or digest; verified against the digest when given one."""
        by_digest = reference.startswith("sha256:")
        if by_digest:
            validate_digest(reference)
        display = display or f"{self.registry}/{repository}:{reference}"
        reply = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                             scopes=(pull_scope(repository),), headers={"Accept": ACCEPT_MANIFESTS})
        if reply.status == 404:
            reply.close()
            raise NotFound(f"image {display} not found in {self.registry}")
        if reply.status != 200:
            raise self._fail(reply, f"manifest {display}")
        with reply:
            data = _read_bounded(reply, MAX_MANIFEST_BYTES, f"manifest {display}")
            content_type = reply.headers.get("Content-Type")
        digest = sha256_digest(data)
        if by_digest and digest != reference:
            raise ImageError(f"manifest {display} from {self.registry} does not match its digest "
                             f"(got {digest})")
        media_type = media_type_of(data, content_type)
        if media_type in V1_TYPES:
            raise ImageError(f"image {display} uses the obsolete schema 1 manifest format",
                             hint="re-push it with a current client")
        if media_type not in IMAGE_TYPES | INDEX_TYPES:
            raise ImageError(f"image {display} has unsupported manifest type {media_type!r}")
        return Manifest(data, media_type, digest)

    def open_blob(self, repository: str, digest: str, offset: int = 0):
        """Start downloading a blob (from byte ``offset`` if the registry honours Range: then the reply's
        status is 206); the caller streams and verifies the returned response."""
        validate_digest(digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        reply = self.request("GET", f"/v2/{repository}/blobs/{digest}", scopes=(pull_scope(repository),),
                             headers=headers)
        if reply.status == 416 and offset:  # the range is refused: the whole blob then
            reply.close()
            return self.open_blob(repository, digest)
        if reply.status == 404:
            reply.close()
            raise NotFound(f"blob {digest} not found in {self.registry}/{repository}")
        if reply.status not in ((200, 206) if offset else (200,)):
            raise self._fail(reply, f"blob {digest}")
        return reply

    def blob_exists(self, repository: str, digest: str, scopes: tuple[str, ...]) -> bool:
        validate_digest(digest)
        reply = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scopes=scopes)
        with reply:
            if reply.status in (200, 404):
                return reply.status == 200
            raise self._fail(reply, f"blob {digest}")

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Cross-repository mount; None when mounted, else the upload URL the registry opened instead."""
        validate_digest(digest)
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        reply = self.request("POST", f"/v2/{repository}/blobs/uploads/?{query}",
                             scopes=(push_scope(repository), pull_scope(source)), follow=False)
        with reply:
            reply.read(4096)
            if reply.status == 201:
                return None
            if reply.status == 202:
                return self._location(reply)
        raise self._fail(reply, f"blob mount of {digest}")

    def start_upload(self, repository: str) -> str:
        reply = self.request("POST", f"/v2/{repository}/blobs/uploads/", scopes=(push_scope(repository),),
                             headers={"Content-Length": "0"}, data=b"", follow=False)
        with reply:
            reply.read(4096)
            if reply.status == 202:
                return self._location(reply)
        raise self._fail(reply, f"upload to {repository}")

    def upload_blob(self, repository: str, location: str, digest: str, size: int,
                    read_range: Callable[[int, int], Iterable[bytes]], chunk_size: int) -> None:
        """Finish an upload: one monolithic PUT up to ``chunk_size``, else PATCH chunks then a PUT.

        ``read_range(offset, length)`` yields that part of the blob; it is called again if a request
        must be re-sent after re-authentication.
        """
        validate_digest(digest)
        scopes = (push_scope(repository),)
        final_size = size
        if size > chunk_size:
            for offset in range(0, size, chunk_size):
                length = min(chunk_size, size - offset)
                reply = self.request("PATCH", location, scopes=scopes, follow=False, headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}"},
                    data=lambda o=offset, n=length: read_range(o, n))
                with reply:
                    reply.read(4096)
                    if reply.status != 202:
                        raise self._fail(reply, f"upload of {digest}")
                    location = self._location(reply)
            final_size = 0  # everything went in PATCHes; the PUT only closes the upload
        url = location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        reply = self.request("PUT", url, scopes=scopes, follow=False,
                             data=lambda: read_range(0, final_size),
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(final_size)})
        with reply:
            reply.read(4096)
            if reply.status != 201:
                raise self._fail(reply, f"upload of {digest}")

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or digest; returns its digest (checked against the registry's)."""
        reply = self.request("PUT", f"/v2/{repository}/manifests/{reference}", follow=False,
                             scopes=(push_scope(repository),), data=data,
                             headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        with reply:
            reply.read(4096)
            if reply.status != 201:
                raise self._fail(reply, f"manifest {repository}:{reference}")
            digest = sha256_digest(data)
            answered = reply.headers.get("Docker-Content-Digest")
            if answered and answered != digest:
                raise RegistryError(f"{self.registry} stored manifest {repository}:{reference} as "
                                    f"{answered}, expected {digest}")
            return digest

    def _location(self, reply) -> str:
        location = reply.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry} started an upload without a Location header")
        url = urllib.parse.urljoin(reply.url or self.base_url(), location)
        # Upload URLs carry upload state, and our token: they must stay on the registry's origin.
        if _origin(url) != _origin(self.base_url()):
            raise RegistryError(f"{self.registry} sent an upload location on another host")
        return url


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _read_bounded(reply, limit: int, what: str) -> bytes:
    data = reply.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{what} is larger than {limit} bytes; refusing it")
    return data
