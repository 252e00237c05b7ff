"""What a client may make the server read: URL schemes, hosts after DNS resolution, local files, upload formats."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from .config import ServeConfig

URL_SCHEMES = ("http", "https", "rtsp", "rtmp", "hls")
"""Schemes a client's URL may use (FFmpeg pseudo-protocols such as file:, concat:, subfile: are refused)."""
LIVE_SCHEMES = ("rtsp", "rtmp", "hls")
"""Schemes read as live sources (paced, frames dropped when the model is slower); http(s) URLs ending in .m3u8
are live too unless the client says ``"live": false``."""

# leading bytes of the containers an upload may be (others, e.g. HLS playlists or ffconcat lists that name
# further files, are refused before FFmpeg opens them)
_MAGIC = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # MP4 / MOV
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI, WAV
    (0, b"OggS"), (0, b"FLV"), (0, b"fLaC"), (0, b"ID3"), (0, b"\x00\x00\x01\xba"),  # Ogg, FLV, FLAC, MP3, MPEG-PS
)


class PolicyError(ValueError):
    """A source the server's policy refuses (HTTP 403); the message says which rule and the flag that allows it."""


def is_live_url(url: str) -> bool:
    """Whether a URL is read as a live stream by default."""
    parts = urlsplit(url)
    return parts.scheme.lower() in LIVE_SCHEMES or parts.path.lower().endswith(".m3u8")


def _allowed(host: str, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address], config: ServeConfig) -> bool:
    """Whether ``--allow-hosts`` names the host, or covers all of its addresses."""
    names = {h.lower() for h in config.allow_hosts}
    if host.lower() in names:
        return True
    nets = []
    for h in config.allow_hosts:
        try:
            nets.append(ipaddress.ip_network(h, strict=False))
        except ValueError:
            continue
    return bool(addresses) and all(any(a in n for n in nets) for a in addresses)


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve_host(host: str, port: int | None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to (an address literal: itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise PolicyError(f"{host}: cannot resolve the host ({exc})") from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_url(url: str, config: ServeConfig) -> str:
    """The URL if the policy lets the server read it.

    Rules: the scheme is one of :data:`URL_SCHEMES`; the URL has a host; every address the host resolves to is
    public (not loopback, private, link-local, shared, reserved or multicast) unless ``allow_hosts`` names the
    host or covers its addresses. http(s) and HLS sources are then read through the egress proxy
    (:mod:`avmem.serve.egress`), which checks every connection again, redirects and playlist segments included,
    and connects to the address it checked (see docs/serving.md).

    Raises:
        PolicyError: the rule broken, in one line.
    """
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise PolicyError("source must be a URL string of at most 4096 characters")
    if any(ord(c) < 0x20 or c.isspace() for c in url):
        raise PolicyError("source URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PolicyError(f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise PolicyError(f"URL scheme {scheme + ':' if scheme else '(none)'} is not allowed (allowed: "
                          f"{', '.join(URL_SCHEMES)})")
    host = parts.hostname
    if not host:
        raise PolicyError("URL has no host")
    check_host(host, port, config)
    return url


def check_host(host: str, port: int | None,
               config: ServeConfig) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Resolve ``host`` once and return its addresses if the policy lets the server reach every one of them (the
    egress proxy connects to these very addresses, so the name is not resolved again).

    Raises:
        PolicyError: a non-public address that ``allow_hosts`` does not cover, or the name does not resolve.
    """
    addresses = resolve_host(host, port)
    if _allowed(host, addresses, config):
        return addresses
    bad = [a for a in addresses if not _public(a)]
    if bad or not addresses:
        raise PolicyError(f"{host} resolves to a non-public address ({bad[0] if bad else 'none'}); allow it with "
                          f"--allow-hosts {host}")
    return addresses


def check_source(source: str, config: ServeConfig) -> tuple[str, bool]:
    """(source, is_url) for a client's ``source``: a URL checked by :func:`check_url`, or a local path when
    ``allow_local_files`` is on (it must be a regular file).

    Raises:
        PolicyError: refused by the policy.
    """
    if not isinstance(source, str) or not source:
        raise PolicyError("source must be a non-empty string")
    if "://" in source or ":" in source.split("/", 1)[0]:
        return check_url(source, config), True
    if not config.allow_local_files:
        raise PolicyError("local files are not served (start the server with --allow-local-files to allow them)")
    from pathlib import Path

    path = Path(source)
    if not path.is_file():
        raise PolicyError(f"{source}: no such file")
    return str(path), False


def check_container(head: bytes) -> None:
    """Refuse uploaded bytes that do not start like a known media container (MP4/MOV, Matroska/WebM, MPEG-TS,
    AVI/WAV, Ogg, FLV, FLAC, MP3, MPEG-PS, ADTS AAC): playlists and concat lists would make FFmpeg open more
    files.

    Raises:
        PolicyError: unknown format.
    """
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS
        return
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio / ADTS frame sync
        return
    for offset, magic in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return
    raise PolicyError("the upload is not a known media container (MP4/MOV, Matroska/WebM, MPEG-TS, AVI, WAV, Ogg, "
                      "FLV, FLAC, MP3)")
